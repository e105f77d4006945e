"""A fleet of nodes on NATS JetStream: joining, desired state, scheduling, artifacts.

Everything shared lives in JetStream (KV buckets and an object store), nothing home-made:
nodes heartbeat into a KV bucket whose entries age out, fleet deployments are KV entries
written with compare-and-set, a controller binds them to nodes by writing one assignment per
node, and modules travel through the object store by digest; controllers elect a leader through
a lease key that ages out. See docs/fleet.md.
"""

from .agent import FleetAgent
from .controller import Controller
from .lease import Lease
from .model import FleetDeployment, NodeInfo, Placement, Taint, Toleration
from .scheduler import schedule
from .status import FleetUnavailable, FleetView
from .store import ArtifactError, ConflictError, FleetStore

__all__ = ["ArtifactError", "ConflictError", "Controller", "FleetAgent", "FleetDeployment", "FleetStore",
           "FleetUnavailable", "FleetView", "Lease", "NodeInfo", "Placement", "Taint", "Toleration",
           "schedule"]
