"""Manifests applied through the node's API, kept in the node database.

A node reconciles one desired state. Manifests can come from the watched file or directory
*and* from API calls; the API ones live here, in SQLite next to the revision history, so they
survive restarts and are reconciled by exactly the same code as files. Every change bumps a
generation number, which the sync loop folds into its change stamp.

A name is owned by one side: a manifest the files define cannot be changed through the API
(the file would put it back on its next edit), which `Node.sync` reports as a problem and the
API refuses up front.
"""

from __future__ import annotations

import json
import time

from .manifests import Deployment, Route, parse_documents
from .state import NodeState

SCHEMA = """
CREATE TABLE IF NOT EXISTS applied_manifests (
    kind TEXT NOT NULL, name TEXT NOT NULL, namespace TEXT NOT NULL, manifest TEXT NOT NULL,
    applied REAL NOT NULL, actor TEXT NOT NULL DEFAULT '', PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS applied_generation (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT OR IGNORE INTO applied_generation VALUES (1, 0);
"""


class AppliedManifests:
    def __init__(self, state: NodeState):
        self._state = state
        with state._lock:
            state._db.executescript(SCHEMA)

    def _bump(self) -> None:
        self._state._x("UPDATE applied_generation SET value = value + 1 WHERE id = 1")

    @property
    def generation(self) -> int:
        return self._state._x("SELECT value FROM applied_generation WHERE id = 1")[0][0]

    def put(self, manifest: Deployment | Route, actor: str = "") -> None:
        doc = manifest.model_dump(mode="json", by_alias=True, exclude_unset=False)
        self._state._x("INSERT OR REPLACE INTO applied_manifests VALUES (?,?,?,?,?,?)",
                       (manifest.kind, manifest.name, manifest.metadata.namespace, json.dumps(doc),
                        time.time(), actor))
        self._bump()

    def delete(self, kind: str, name: str) -> bool:
        found = bool(self._state._x("SELECT 1 FROM applied_manifests WHERE kind = ? AND name = ?",
                                    (kind, name)))
        if found:
            self._state._x("DELETE FROM applied_manifests WHERE kind = ? AND name = ?", (kind, name))
            self._bump()
        return found

    def get(self, kind: str, name: str) -> Deployment | Route | None:
        rows = self._state._x("SELECT manifest FROM applied_manifests WHERE kind = ? AND name = ?",
                              (kind, name))
        return parse_documents(rows[0][0], f"api:{kind}/{name}")[0] if rows else None

    def all(self) -> list[Deployment | Route]:
        rows = self._state._x("SELECT kind, name, manifest FROM applied_manifests ORDER BY kind, name")
        out: list[Deployment | Route] = []
        for kind, name, text in rows:
            # JSON is YAML: the same validation as files, so a stored manifest that a newer
            # schema refuses is reported like a bad file instead of crashing the sync
            out += parse_documents(text, f"api:{kind}/{name}")
        return out
