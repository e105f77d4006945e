"""The node's durable state: one SQLite database (WAL) under the data directory.

It keeps what must survive a restart or a kill -9: the identity of every deployment, route and
rule, deployments' revision history (for rollback) and the module digest each is bound to,
events (what changed and why), dead letters, and the containers' key-value data.

State is keyed by identity, not by name. An object gets a uid when it first appears (a name in
a namespace); everything it accumulates is stored under that uid. When the object is deleted
its identity is retired and its state archived: kept, but reachable by no live object, and
purged after a retention (`purge_retired`). Whoever creates the name again — in any namespace —
gets a new uid and starts empty. Views ask by name and get the live object's state.

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
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import StorageError
from ..sqlite import open_db, write_transaction
from ..supervise import Repeats
from .state_schema import OWNED_TABLES, legacy_uid, migrate

log = logging.getLogger("iotwasm.node.state")

#: events kept in memory while the node database cannot take them
MAX_UNSAVED = 1000


class NodeState:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self._db = open_db(self.path, synchronous="NORMAL", what="node state")
        self._lock = threading.Lock()
        self._clock = clock
        with self._lock:
            migrate(self._db, str(self.path))
            row = self._db.execute("SELECT value FROM meta WHERE key = 'legacy_adoption'").fetchone()
            self._adopting = row is not None and row[0] == "pending"
        #: called with each event dict after it is stored (from any thread); for live views
        self.listeners: list = []
        #: the last write that failed on storage, until a write succeeds again
        self.write_error: StorageError | None = None
        self._unsaved: collections.deque[tuple] = collections.deque(maxlen=MAX_UNSAVED)
        self._repeats = Repeats(log, "recording an event")

    def _x(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock, write_transaction(self._db) as db:
            yield db

    # -- identities ------------------------------------------------------------------------
    def reconcile(self, wanted: list[tuple[str, str, str]]
                  ) -> tuple[dict[tuple[str, str], str], list[tuple[str, str, str, str]]]:
        """Make exactly `wanted` — (kind, namespace, name) — the live objects: retire every other
        live one, and give each wanted one its uid (a new one when it is new, or when its name
        moved to another namespace). Returns ({(kind, name): uid}, the retired objects as
        (kind, namespace, name, uid))."""
        keep = {(kind, name): ns for kind, ns, name in wanted}
        uids = {}
        with self._transaction() as db:
            live = db.execute("SELECT uid, kind, namespace, name FROM objects WHERE retired IS NULL").fetchall()
            retired = [(kind, ns, name, uid) for uid, kind, ns, name in live if keep.get((kind, name)) != ns]
            for *_, uid in retired:
                self._retire(db, uid)
            for (kind, name), ns in keep.items():
                uids[(kind, name)] = self._identify(db, kind, ns, name)
        return uids, retired

    def identify(self, kind: str, namespace: str, name: str) -> str:
        """The uid of the live `kind` `name` of `namespace`, created when there is none (a live
        one of another namespace is retired: a name that moves is another object)."""
        with self._transaction() as db:
            return self._identify(db, kind, namespace, name)

    def _identify(self, db, kind: str, namespace: str, name: str) -> str:
        row = db.execute("SELECT uid, namespace FROM objects WHERE kind = ? AND name = ? AND retired IS NULL",
                         (kind, name)).fetchone()
        if row is not None and row[1] == namespace:
            return row[0]
        if row is not None:
            self._retire(db, row[0])
        uid = uuid.uuid4().hex
        db.execute("INSERT INTO objects(uid, kind, namespace, name, created) VALUES (?,?,?,?,?)",
                   (uid, kind, namespace, name, self._clock()))
        if self._adopting:
            self._adopt(db, kind, namespace, name, uid)
        return uid

    def _adopt(self, db, kind: str, namespace: str, name: str, uid: str) -> None:
        """The first object of a name after an upgrade takes over what the name held before."""
        old = legacy_uid(kind, name)
        for table in ("kv", "revisions", "dead_letters"):
            db.execute(f"UPDATE {table} SET uid = ? WHERE uid = ?", (uid, old))
        until = db.execute("SELECT value FROM meta WHERE key = 'legacy_events_until'").fetchone()
        db.execute("UPDATE events SET uid = ?, namespace = ? WHERE uid IS NULL AND object = ? AND id <= ?",
                   (uid, namespace, name, int(until[0]) if until else 0))

    def finish_adoption(self) -> None:
        """After the first complete reconcile since an upgrade: what no object adopted is
        archived (retired identities), never handed to a later object of the same name."""
        if not self._adopting:
            return
        with self._transaction() as db:
            now = self._clock()
            left: set[str] = set()
            for table in ("kv", "revisions", "dead_letters"):
                left |= {r[0] for r in db.execute(f"SELECT DISTINCT uid FROM {table} WHERE uid LIKE 'legacy:%'")}
            for uid in left:
                _, kind, name = uid.split(":", 2)
                db.execute("INSERT OR IGNORE INTO objects(uid, kind, namespace, name, created, retired) "
                           "VALUES (?,?,?,?,?,?)", (uid, kind, "", name, now, now))
            db.execute("UPDATE meta SET value = 'done' WHERE key = 'legacy_adoption'")
            self._adopting = False

    def _retire(self, db, uid: str) -> None:
        db.execute("UPDATE objects SET retired = ? WHERE uid = ?", (self._clock(), uid))

    def retire(self, uid: str) -> None:
        """The object is gone: its state is archived under its uid (see `purge_retired`)."""
        with self._transaction() as db:
            self._retire(db, uid)

    def uid_of(self, kind: str, name: str) -> str | None:
        rows = self._x("SELECT uid FROM objects WHERE kind = ? AND name = ? AND retired IS NULL", (kind, name))
        return rows[0][0] if rows else None

    def purge_retired(self, keep_s: float) -> int:
        """Delete the state of objects retired more than `keep_s` seconds ago; returns how many."""
        cutoff = self._clock() - keep_s
        with self._transaction() as db:
            uids = [r[0] for r in db.execute("SELECT uid FROM objects WHERE retired IS NOT NULL AND retired <= ?",
                                             (cutoff,))]
            for uid in uids:
                for table in OWNED_TABLES:
                    db.execute(f"DELETE FROM {table} WHERE uid = ?", (uid,))
                db.execute("DELETE FROM objects WHERE uid = ?", (uid,))
        return len(uids)

    # -- digest binding --------------------------------------------------------------------
    def binding(self, uid: str) -> tuple[str | None, str | None]:
        """(manifest digest, module digest) the deployment was last bound with."""
        rows = self._x("SELECT spec_digest, module_digest FROM objects WHERE uid = ?", (uid,))
        return rows[0] if rows else (None, None)

    def bind(self, uid: str, spec_digest: str, module_digest: str) -> None:
        self._x("UPDATE objects SET spec_digest = ?, module_digest = ? WHERE uid = ?",
                (spec_digest, module_digest, uid))

    # -- events ----------------------------------------------------------------------------
    def event(self, kind: str, obj: str, message: str, uid: str | None = None,
              namespace: str | None = None) -> None:
        """Record an event about object `obj` (its `uid` and `namespace`; neither for node-wide
        events, which only node-wide tokens see)."""
        ts = self._clock()
        self._unsaved.append((ts, kind, obj, message, uid, namespace))
        self.flush()
        for listener in list(self.listeners):
            try:
                listener({"ts": ts, "kind": kind, "object": obj, "message": message, "namespace": namespace})
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
                with write_transaction(self._db) as db:
                    db.executemany("INSERT INTO events(ts, kind, object, message, uid, namespace) "
                                   "VALUES (?,?,?,?,?,?)", rows)
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
        """Newest first; with `obj`, those of the live objects of that name (or node-wide events
        about it when no object has that name)."""
        sql = "SELECT ts, kind, object, message, namespace FROM events"
        args: list = []
        if obj:
            uids = [r[0] for r in self._x("SELECT uid FROM objects WHERE name = ? AND retired IS NULL", (obj,))]
            if uids:
                sql += f" WHERE uid IN ({','.join('?' * len(uids))})"
                args += uids
            else:
                sql += " WHERE object = ? AND uid IS NULL"
                args.append(obj)
        rows = self._x(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
        return [{"ts": r[0], "kind": r[1], "object": r[2], "message": r[3], "namespace": r[4]} for r in rows]

    # -- revisions -------------------------------------------------------------------------
    def add_revision(self, uid: str, name: str, module_digest: str, manifest: dict, status: str,
                     reason: str = "") -> int:
        with self._transaction() as db:
            (last,) = db.execute("SELECT coalesce(max(revision), 0) FROM revisions WHERE uid = ?", (uid,)).fetchone()
            db.execute("INSERT INTO revisions(uid, revision, name, module_digest, manifest, created, status, reason) "
                       "VALUES (?,?,?,?,?,?,?,?)",
                       (uid, last + 1, name, module_digest, json.dumps(manifest), self._clock(), status, reason))
            return last + 1

    def serving_revision(self, uid: str, module_digest: str, manifest: dict) -> int | None:
        """The serving revision of `uid` when it ran exactly this module and manifest (a node
        started again with an unchanged deployment), else None."""
        rows = self._x("SELECT revision, module_digest, manifest FROM revisions WHERE uid = ? "
                       "AND status = 'serving' ORDER BY revision DESC LIMIT 1", (uid,))
        if rows and rows[0][1] == module_digest and json.loads(rows[0][2]) == json.loads(json.dumps(manifest)):
            return rows[0][0]
        return None

    def set_revision_status(self, uid: str, revision: int, status: str, reason: str = "") -> None:
        self._x("UPDATE revisions SET status = ?, reason = ? WHERE uid = ? AND revision = ?",
                (status, reason, uid, revision))

    def promote_revision(self, uid: str, revision: int, reason: str = "") -> None:
        """`revision` now serves alone: whichever revision served or was gating before is replaced."""
        with self._transaction() as db:
            db.execute("UPDATE revisions SET status = 'replaced', reason = ? WHERE uid = ? "
                       "AND revision != ? AND status IN ('serving', 'gating')",
                       (f"replaced by revision {revision}", uid, revision))
            db.execute("UPDATE revisions SET status = 'serving', reason = ? WHERE uid = ? AND revision = ?",
                       (reason, uid, revision))

    def history(self, name: str) -> list[dict]:
        """Revisions of the live deployment `name`."""
        rows = self._x("SELECT revision, module_digest, created, status, reason FROM revisions "
                       "WHERE uid = ? ORDER BY revision", (self.uid_of("Deployment", name),))
        return [{"revision": r[0], "module_digest": r[1], "created": r[2], "status": r[3], "reason": r[4]}
                for r in rows]

    def revision(self, name: str, revision: int) -> tuple[str, str] | None:
        """(manifest JSON, module digest) of a revision of the live deployment `name`, for
        rolling back to exactly what it ran."""
        rows = self._x("SELECT manifest, module_digest FROM revisions WHERE uid = ? AND revision = ?",
                       (self.uid_of("Deployment", name), revision))
        return (rows[0][0], rows[0][1]) if rows else None

    def revision_manifest(self, name: str, revision: int) -> str | None:
        """The manifest (JSON text) a revision was created from."""
        found = self.revision(name, revision)
        return found[0] if found else None

    # -- dead letters ----------------------------------------------------------------------
    def dead_letter(self, uid: str, route: str, step: str, kind: str, error: str, topic: str,
                    payload: bytes) -> None:
        self._x("INSERT INTO dead_letters(ts, route, step, kind, error, topic, payload, uid) "
                "VALUES (?,?,?,?,?,?,?,?)", (self._clock(), route, step, kind, error, topic, payload, uid))

    def dead_letters(self, route: str | None = None, limit: int = 100, *, step: str | None = None,
                     before: int | None = None, ids: list[int] | None = None) -> list[dict[str, Any]]:
        """Newest first; with `route`, those of the live route of that name; optionally only
        those of one `step`, older than id `before`, or with one of `ids` (the browser and
        replay of the API)."""
        if ids is not None and not ids:
            return []
        sql = "SELECT ts, route, step, kind, error, topic, payload, id FROM dead_letters"
        where: list[str] = []
        args: list = []
        if route:
            where.append("uid = ?")
            args.append(self.uid_of("Route", route))
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
    """A container's `kv` capability backed by the node database: survives restarts, and is
    the deployment's own (keyed by its uid), never its name's."""

    def __init__(self, state: NodeState, uid: str, quota: int):
        self._state = state
        self.uid = uid
        self.quota = quota
        rows = state._x("SELECT coalesce(sum(length(key) + length(value)), 0) FROM kv WHERE uid = ?", (uid,))
        self._used = rows[0][0]
        self._repeats = Repeats(log, f"a kv write of {uid}")

    def get(self, key: bytes) -> bytes | None:
        rows = self._state._x("SELECT value FROM kv WHERE uid = ? AND key = ?", (self.uid, key))
        return rows[0][0] if rows else None

    def set(self, key: bytes, value: bytes) -> bool:
        old = self.get(key)
        delta = len(value) - (len(old) if old is not None else -len(key))
        if self._used + delta > self.quota:
            return False
        try:
            self._state._x("INSERT OR REPLACE INTO kv(uid, key, value) VALUES (?,?,?)", (self.uid, key, value))
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
            self._state._x("DELETE FROM kv WHERE uid = ? AND key = ?", (self.uid, key))
        except StorageError as e:
            self._repeats.failed(e)
            return False
        self._used -= len(key) + len(old)
        return True
