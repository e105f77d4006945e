"""Which module digest each deployment runs: bound when the deployment is applied.

A registry reference (`filter`, `filter:1.2`, `acme/filter:latest`) names whatever its tag
points at *now*; a tag moves when someone publishes a version or re-points it. If the node
resolved references at every start or update, a moved tag would silently change what a running
deployment executes — after a restart, or at the next scale. So a deployment is bound to a
digest when it is applied:

* applied through the API: the digest its reference resolved to when applied, stored with the
  applied manifest (node/applied.py); applying it again resolves again;
* from the node's manifest files: a registry reference is resolved when the manifest is new or
  changed, and the binding (with the manifest's digest) is kept with the deployment's identity
  across restarts; a path is read again whenever the node applies the manifest — it is a file of
  the node's own, which no tenant can move;
* rolled back: the digest the earlier revision ran.
"""

from __future__ import annotations

from pathlib import Path

from ..registry import ModuleStore
from .applied import AppliedManifests
from .manifests import Deployment, parse_documents
from .state import NodeState


class ModuleBinding:
    def __init__(self, state: NodeState, registry: ModuleStore, applied: AppliedManifests):
        self.state, self.registry, self.applied = state, registry, applied

    def bind(self, d: Deployment, uid: str, spec_digest: str, base: Path,
             running: tuple[str, str] | None) -> tuple[str, Path]:
        """(module digest, blob path) deployment `d` (identity `uid`, manifest digest
        `spec_digest`) runs; `running` is (manifest digest, module digest) of the version that
        runs now, if any. Raises ModuleNotFound for a reference that resolves to nothing."""
        digest = d.bound_module
        if digest is None:
            bound_spec, bound = self.state.binding(uid)
            path = module_file(d.spec.module, base)
            if path is not None:
                digest = running[1] if running is not None and running[0] == spec_digest \
                    else self.registry.add(path).digest
            elif bound is not None and bound_spec == spec_digest:
                digest = bound
            else:
                digest = self.registry.resolve(d.spec.module)
            self.applied.bind(d.name, digest)   # an API manifest stored before binding existed
        if self.state.binding(uid) != (spec_digest, digest):
            self.state.bind(uid, spec_digest, digest)
        return digest, self.registry.path(digest)

    def revision(self, name: str, revision: int) -> Deployment | None:
        """The manifest of a revision of deployment `name`, bound to the digest that revision
        ran: rolling back returns to those bytes, whatever the tag says now."""
        found = self.state.revision(name, revision)
        if found is None:
            return None
        m = parse_documents(found[0], f"revision {revision}")[0]
        return m.bind_module(found[1]) if isinstance(m, Deployment) else None


def module_file(ref: str, base: Path) -> Path | None:
    """The file `ref` names when it is a path (the node tries paths before registry names)."""
    path = Path(ref)
    if not path.is_absolute():
        path = base / path
    return path if ref.endswith((".wasm", ".wat")) or path.exists() else None
