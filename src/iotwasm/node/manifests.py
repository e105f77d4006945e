"""Manifests: Kubernetes-style YAML documents that describe what a node should run.

    apiVersion: iotwasm.io/v1
    kind: Deployment | Route | Rule
    metadata: {name: ..., labels: {...}}
    spec: ...

Validated with pydantic. A bad manifest is reported with the file, the document index, the
field path and the reason, and every error of a file is reported at once, e.g.::

    greenhouse.yaml#2 (Route greenhouse) spec.sinks[0].mqtt.qos: Input should be 0 or 1

The JSON Schema is published in docs/manifest.schema.json (`iotwasm schema` prints it).

Each kind has a module of its own (`manifest_deployment`, `manifest_route`, `manifest_rule`,
with the metadata they share in `manifest_metadata`); this one reads documents into them,
reports their problems, and re-exports the names callers use.

Manifests come from API callers too, so reading them is bounded (node/bounded_yaml.py: nesting
and alias expansion) and a problem quotes at most a short excerpt of what it found.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Union

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from ..engine.capabilities import HOST_CAPABILITIES, WASI
from ..errors import ConfigError
from ..pipeline.connectors.config import Strict
from .bounded_yaml import DocumentTooLarge, excerpt, load_all
from .manifest_deployment import REPLICA_TAGS, REVEAL_SECRETS, Deployment, ReplicaRange, SecretValue
from .manifest_metadata import API_VERSION, NAME
from .manifest_route import Route, RouteSpec, Sink, TwinSink
from .manifest_rule import Rule

#: the most problems one error reports (the rest are counted)
MAX_PROBLEMS = 20


class ManifestError(ConfigError):
    """One or more manifests are invalid; `problems` lists one line per error."""

    kind = "manifest"

    def __init__(self, problems: list[str]):
        if len(problems) > MAX_PROBLEMS:
            problems = [*problems[:MAX_PROBLEMS], f"… and {len(problems) - MAX_PROBLEMS} more problem(s)"]
        self.problems = problems
        super().__init__("; ".join(problems) if len(problems) == 1 else
                         f"{len(problems)} problems:\n  " + "\n  ".join(problems))


Manifest = Annotated[Union[Deployment, Route, Rule], Field(discriminator="kind")]
_adapter: TypeAdapter = TypeAdapter(Manifest)
KINDS = ("Deployment", "Route", "Rule")


def to_document(m: Deployment | Route | Rule) -> dict:
    """The manifest as a JSON document *with* its secret values: for the node's database, the
    fleet's store and comparing two versions, never for showing (a plain ``model_dump`` hides
    them, so every view is safe by default)."""
    return m.model_dump(mode="json", by_alias=True, context=REVEAL_SECRETS)


def digest_of_manifest(m: Deployment | Route | Rule) -> str:
    # secret values count: changing only a secret is a change to apply
    text = json.dumps(to_document(m), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in KINDS or part in REPLICA_TAGS:
            continue  # the discriminator tag adds nothing for people
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def parse_documents(text: str, origin: str = "<text>") -> list[Deployment | Route | Rule]:
    """Parse and validate every document of a YAML text; raise ManifestError with all problems."""
    try:
        docs = [d for d in load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        what = "refused" if isinstance(e, DocumentTooLarge) else "not valid YAML"
        raise ManifestError([f"{origin}{where}: {what}: {excerpt(getattr(e, 'problem', None) or e, 200)}"]) from None
    problems: list[str] = []
    out: list[Deployment | Route | Rule] = []
    for i, doc in enumerate(docs, 1):
        label = f"{origin}#{i}"
        if isinstance(doc, dict):
            md = doc.get("metadata")
            if isinstance(md, dict) and "name" in md:
                label += f" ({excerpt(doc.get('kind', '?'))} {excerpt(md['name'])})"
        if not isinstance(doc, dict):
            problems.append(f"{label}: a manifest must be a mapping")
            continue
        if doc.get("kind") not in KINDS:
            problems.append(f"{label} kind: must be one of {', '.join(KINDS)} (got {excerpt(doc.get('kind'), quote=True)})")
            continue
        try:
            out.append(_adapter.validate_python(doc))
        except ValidationError as e:
            for err in e.errors():
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{label} {excerpt(_loc(err['loc']), 200)}: {excerpt(msg, 300)}")
    if problems:
        raise ManifestError(problems)
    return out


def load_path(path: str | Path) -> list[Deployment | Route | Rule]:
    """Load a manifest file, or every *.yaml / *.yml file of a directory (sorted).

    All problems of all files are collected before raising, so one run shows everything.
    """
    path = Path(path)
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    problems: list[str] = []
    out: list[Deployment | Route | Rule] = []
    for f in files:
        try:
            out += parse_documents(f.read_text(), str(f))
        except ManifestError as e:
            problems += e.problems
        except OSError as e:
            problems.append(f"{f}: cannot read: {e.strerror}")
    names: dict[tuple[str, str], str] = {}
    for m in out:
        key = (m.kind, m.name)
        if key in names:
            problems.append(f"{m.kind} {m.name} is defined twice")
        names[key] = m.name
    if problems:
        raise ManifestError(problems)
    return out


def json_schema() -> dict:
    schema = _adapter.json_schema(by_alias=True)
    schema["$id"] = "https://iotwasm.io/schemas/manifest-v1.json"
    schema["title"] = "iotwasm manifest (Deployment, Route or Rule)"
    return schema


__all__ = ["API_VERSION", "Deployment", "ManifestError", "NAME", "REVEAL_SECRETS", "ReplicaRange", "Route",
           "RouteSpec", "Rule", "SecretValue", "Sink", "Strict", "TwinSink", "digest_of_manifest", "json_schema",
           "load_path", "parse_documents", "to_document", "HOST_CAPABILITIES", "WASI"]
