"""Node layer: one edge node that turns manifests into running deployments and routes."""

from .manifests import Deployment, ManifestError, Route, json_schema, load_path, parse_documents
from .node import Node, NodeConfig

__all__ = ["Deployment", "ManifestError", "Node", "NodeConfig", "Route", "json_schema", "load_path",
           "parse_documents"]
