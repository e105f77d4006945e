"""Manifests applied through the node's API, kept in the node database.

A node reconciles one desired state. Manifests can come from the watched file or directory
*and* from API calls; the API ones live here, in SQLite next to the revision history, so they
survive restarts and are reconciled by exactly the same code as files. Every change bumps a
generation number, which the sync loop folds into its change stamp.

A name is owned by one side: a manifest the files define cannot be changed through the API
(the file would put it back on its next edit), which `Node.sync` reports as a problem and the
API refuses up front.

A deployment is bound to a module digest when it is applied: the digest its `spec.module`
resolved to then is stored beside the manifest (`module_digest`), so a tag that moves later —
or a restart — never changes what runs; applying again resolves again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from ..errors import IotwasmError
from .manifests import Deployment, Route, Rule, parse_documents, to_document
from .state import NodeState

SCHEMA = """
CREATE TABLE IF NOT EXISTS applied_manifests (
    kind TEXT NOT NULL, name TEXT NOT NULL, namespace TEXT NOT NULL, manifest TEXT NOT NULL,
    applied REAL NOT NULL, actor TEXT NOT NULL DEFAULT '', PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS applied_generation (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT OR IGNORE INTO applied_generation VALUES (1, 0);
"""


class AppliedManifests:
    def __init__(self, state: NodeState, resolve: Callable[[str], str] | None = None):
        """`resolve` turns a module reference into a digest, for deployments put without one."""
        self._state = state
        self._resolve = resolve
        with state._lock:
            state._db.executescript(SCHEMA)
            columns = {r[1] for r in state._db.execute("PRAGMA table_info(applied_manifests)")}
            if "module_digest" not in columns:  # a database from before digest binding
                state._db.execute("ALTER TABLE applied_manifests ADD COLUMN module_digest TEXT")

    def _bump(self) -> None:
        self._state._x("UPDATE applied_generation SET value = value + 1 WHERE id = 1")

    @property
    def generation(self) -> int:
        return self._state._x("SELECT value FROM applied_generation WHERE id = 1")[0][0]

    def put(self, manifest: Deployment | Route | Rule, actor: str = "") -> None:
        """Store `manifest` (secret values included); a deployment with its bound module digest,
        resolved now when it has none yet."""
        digest = None
        if isinstance(manifest, Deployment):
            digest = manifest.bound_module or self._resolved(manifest.spec.module)
        self._state._x("INSERT OR REPLACE INTO applied_manifests(kind, name, namespace, manifest, applied, actor, "
                       "module_digest) VALUES (?,?,?,?,?,?,?)",
                       (manifest.kind, manifest.name, manifest.metadata.namespace,
                        json.dumps(to_document(manifest)), time.time(), actor, digest))
        self._bump()

    def _resolved(self, ref: str) -> str | None:
        if self._resolve is None:
            return None
        try:
            return self._resolve(ref)
        except IotwasmError:
            return None  # the node reports the reference when it reconciles

    def bind(self, name: str, digest: str) -> None:
        """Record the digest a deployment stored without one was bound to (at its first reconcile)."""
        self._state._x("UPDATE applied_manifests SET module_digest = ? WHERE kind = 'Deployment' AND name = ? "
                       "AND module_digest IS NULL", (digest, name))

    def delete(self, kind: str, name: str) -> bool:
        found = bool(self._state._x("SELECT 1 FROM applied_manifests WHERE kind = ? AND name = ?",
                                    (kind, name)))
        if found:
            self._state._x("DELETE FROM applied_manifests WHERE kind = ? AND name = ?", (kind, name))
            self._bump()
        return found

    def get(self, kind: str, name: str) -> Deployment | Route | Rule | None:
        rows = self._state._x("SELECT kind, name, manifest, module_digest FROM applied_manifests "
                              "WHERE kind = ? AND name = ?", (kind, name))
        return _parsed(*rows[0]) if rows else None

    def deployment(self, name: str) -> Deployment | None:
        m = self.get("Deployment", name)
        return m if isinstance(m, Deployment) else None

    def route(self, name: str) -> Route | None:
        m = self.get("Route", name)
        return m if isinstance(m, Route) else None

    def rule(self, name: str) -> Rule | None:
        m = self.get("Rule", name)
        return m if isinstance(m, Rule) else None

    def all(self) -> list[Deployment | Route | Rule]:
        rows = self._state._x("SELECT kind, name, manifest, module_digest FROM applied_manifests "
                              "ORDER BY kind, name")
        return [_parsed(*row) for row in rows]


def _parsed(kind: str, name: str, text: str, module_digest: str | None) -> Deployment | Route | Rule:
    # JSON is YAML: the same validation as files, so a stored manifest that a newer schema
    # refuses is reported like a bad file instead of crashing the sync
    m = parse_documents(text, f"api:{kind}/{name}")[0]
    if isinstance(m, Deployment):
        m.bind_module(module_digest)
    return m
