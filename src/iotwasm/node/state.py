"""The node's durable state: one SQLite database (WAL) under the data directory.

It keeps what must survive a restart or a kill -9: applied deployments and their revision
history (for rollback), events (what changed and why), dead letters, and the containers'
key-value data.

When the disk is full: a dead letter that cannot be written raises `StorageError` (the route
holds its batch and retries); an event is kept in memory (up to `MAX_UNSAVED`) and written
with the next one, so the node's work never fails for its history; a key-value write fails
towards the guest as a full quota does.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import StorageError
from ..sqlite import open_db
from ..supervise import Repeats

log = logging.getLogger("iotwasm.node.state")

#: events kept in memory while the node database cannot take them
MAX_UNSAVED = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    name TEXT NOT NULL, revision INTEGER NOT NULL, module_digest TEXT NOT NULL,
    manifest TEXT NOT NULL, created REAL NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (name, revision));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
    object TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, route TEXT NOT NULL, step TEXT NOT NULL,
    kind TEXT NOT NULL, error TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    container TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (container, key));
"""


class NodeState:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = open_db(self.path, synchronous="NORMAL", schema=SCHEMA, what="node state")
        self._lock = threading.Lock()
        #: called with each event dict after it is stored (from any thread); for live views
        self.listeners: list = []
        #: the last write that failed on storage, until a write succeeds again
        self.write_error: StorageError | None = None
        self._unsaved: collections.deque[tuple] = collections.deque(maxlen=MAX_UNSAVED)
        self._repeats = Repeats(log, "recording an event")

    def _x(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- events ----------------------------------------------------------------------------
    def event(self, kind: str, obj: str, message: str) -> None:
        ts = time.time()
        self._unsaved.append((ts, kind, obj, message))
        self.flush()
        for listener in list(self.listeners):
            try:
                listener({"ts": ts, "kind": kind, "object": obj, "message": message})
            except Exception:
                pass  # a live view never breaks the node

    def flush(self) -> bool:
        """Write the events kept in memory; True when none is left (the node calls this
        periodically, so they are saved once the disk has room again)."""
        with self._lock:
            if not self._unsaved:
                return True
            rows = list(self._unsaved)
            try:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO events(ts, kind, object, message) VALUES (?,?,?,?)", rows)
                self._db.execute("COMMIT")
            except StorageError as e:
                if self.write_error is None:
                    self._repeats.failed(e)
                self.write_error = e
                return False
            for _ in rows:
                self._unsaved.popleft()
            self.write_error = None
            return True

    def events(self, obj: str | None = None, limit: int = 100) -> list[dict]:
        sql = "SELECT ts, kind, object, message FROM events"
        args: list = []
        if obj:
            sql += " WHERE object = ?"
            args.append(obj)
        rows = self._x(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
        return [{"ts": r[0], "kind": r[1], "object": r[2], "message": r[3]} for r in rows]

    # -- revisions -------------------------------------------------------------------------
    def add_revision(self, name: str, module_digest: str, manifest: dict, status: str,
                     reason: str = "") -> int:
        with self._lock:
            (last,) = self._db.execute("SELECT coalesce(max(revision), 0) FROM revisions WHERE name = ?",
                                       (name,)).fetchone()
            self._db.execute("INSERT INTO revisions VALUES (?,?,?,?,?,?,?)",
                             (name, last + 1, module_digest, json.dumps(manifest), time.time(), status, reason))
            return last + 1

    def set_revision_status(self, name: str, revision: int, status: str, reason: str = "") -> None:
        self._x("UPDATE revisions SET status = ?, reason = ? WHERE name = ? AND revision = ?",
                (status, reason, name, revision))

    def promote_revision(self, name: str, revision: int, reason: str = "") -> None:
        """`revision` now serves alone: whichever revision served or was gating before is replaced."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("UPDATE revisions SET status = 'replaced', reason = ? WHERE name = ? "
                                 "AND revision != ? AND status IN ('serving', 'gating')",
                                 (f"replaced by revision {revision}", name, revision))
                self._db.execute("UPDATE revisions SET status = 'serving', reason = ? WHERE name = ? "
                                 "AND revision = ?", (reason, name, revision))
            except BaseException:
                if self._db.in_transaction:   # a storage error rolled it back already
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def history(self, name: str) -> list[dict]:
        rows = self._x("SELECT revision, module_digest, created, status, reason FROM revisions "
                       "WHERE name = ? ORDER BY revision", (name,))
        return [{"revision": r[0], "module_digest": r[1], "created": r[2], "status": r[3], "reason": r[4]}
                for r in rows]

    def revision_manifest(self, name: str, revision: int) -> str | None:
        """The manifest (JSON text) a revision was created from, for rolling back to it."""
        rows = self._x("SELECT manifest FROM revisions WHERE name = ? AND revision = ?", (name, revision))
        return rows[0][0] if rows else None

    # -- dead letters ----------------------------------------------------------------------
    def dead_letter(self, route: str, step: str, kind: str, error: str, topic: str, payload: bytes) -> None:
        self._x("INSERT INTO dead_letters(ts, route, step, kind, error, topic, payload) VALUES (?,?,?,?,?,?,?)",
                (time.time(), route, step, kind, error, topic, payload))

    def dead_letters(self, route: str | None = None, limit: int = 100, *, step: str | None = None,
                     before: int | None = None, ids: list[int] | None = None) -> list[dict[str, Any]]:
        """Newest first; optionally only those of one `step`, older than id `before`, or with
        one of `ids` (the browser and replay of the API)."""
        if ids is not None and not ids:
            return []
        sql = "SELECT ts, route, step, kind, error, topic, payload, id FROM dead_letters"
        where: list[str] = []
        args: list = []
        if route:
            where.append("route = ?")
            args.append(route)
        if step is not None:
            where.append("step = ?")
            args.append(step)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        if ids is not None:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            args.extend(ids)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._x(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
        return [{"ts": r[0], "route": r[1], "step": r[2], "kind": r[3], "error": r[4], "topic": r[5],
                 "payload": r[6], "id": r[7]} for r in rows]

    def dead_letter_count(self) -> int:
        return self._x("SELECT count(*) FROM dead_letters")[0][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SqliteKeyValue:
    """A container's `kv` capability backed by the node database: survives restarts."""

    def __init__(self, state: NodeState, container: str, quota: int):
        self._state = state
        self.container = container
        self.quota = quota
        rows = state._x("SELECT coalesce(sum(length(key) + length(value)), 0) FROM kv WHERE container = ?",
                        (container,))
        self._used = rows[0][0]
        self._repeats = Repeats(log, f"a kv write of {container}")

    def get(self, key: bytes) -> bytes | None:
        rows = self._state._x("SELECT value FROM kv WHERE container = ? AND key = ?", (self.container, key))
        return rows[0][0] if rows else None

    def set(self, key: bytes, value: bytes) -> bool:
        old = self.get(key)
        delta = len(value) - (len(old) if old is not None else -len(key))
        if self._used + delta > self.quota:
            return False
        try:
            self._state._x("INSERT OR REPLACE INTO kv VALUES (?,?,?)", (self.container, key, value))
        except StorageError as e:   # the guest sees a failed write, as when over quota
            self._repeats.failed(e)
            return False
        self._used += delta
        return True

    def delete(self, key: bytes) -> bool:
        old = self.get(key)
        if old is None:
            return False
        try:
            self._state._x("DELETE FROM kv WHERE container = ? AND key = ?", (self.container, key))
        except StorageError as e:
            self._repeats.failed(e)
            return False
        self._used -= len(key) + len(old)
        return True
