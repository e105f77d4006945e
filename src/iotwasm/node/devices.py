"""The device registry: each device's twin — reported state, desired state and the delta
between them — and the history of the commands sent to it, in the node database.

A device is named by its namespace (the tenant that owns it) and its id; it gets an identity
(a uid) when it is first named, and its command history is kept under that identity. It comes
into being the first time either side speaks of it: its first message reaching a route's
``twin`` sink, or an operator setting desired state for a device that has not connected yet
(offline devices are the normal case at the edge, so configuration may come first).

Both documents are JSON objects changed by JSON merge patches (RFC 7396: a key set to null is
removed, objects merge key by key, anything else replaces). Each has a version that every
change increments. Desired state is changed with compare-and-set: a writer that read version
``v`` sends it back, and the change is refused with `VersionConflict` when another writer got
there first, so two operators never silently overwrite each other. Reported state comes from
the device itself, in order per device (the route's lanes keep per-device order), and merges
unconditionally.

The delta is what desired asks that reported does not show yet: every desired key whose value
differs from the reported one (objects compared key by key). It is empty once the device has
reported what it was asked for. A device that sends nothing for `silent_after_s` is flagged
silent by `sweep`; its next message clears the flag and tells the caller it came back, so the
desired state can be delivered again (node/device_link.py).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, IotwasmError
from .state import NodeState

#: a device id: a single topic level, so it can stand in `devices/{id}/…` topics
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
#: a namespace, as in manifests' metadata
NAMESPACE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: the largest reported or desired document, as JSON text
MAX_DOCUMENT = 64 * 1024
#: the deepest nesting of objects in a document (merges and deltas recurse)
MAX_DEPTH = 16
#: the longest command name (a topic level) and its largest payload
COMMAND_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_COMMAND_PAYLOAD = 16 * 1024
#: the most devices one namespace may have on a node, and commands kept per device (the oldest
#: go first): what API callers and devices' messages can make the registry hold is bounded
MAX_DEVICES = 100_000
MAX_COMMANDS_KEPT = 1000


class VersionConflict(IotwasmError):
    """A compare-and-set found another version than the writer read."""

    kind = "version-conflict"
    status_code = 409
    title = "Conflict"

    def __init__(self, what: str, expected: int, current: int):
        self.expected, self.current = expected, current
        super().__init__(f"{what} is at version {current}, not {expected}: read it again and retry")


def check_device(namespace: str, device: str) -> None:
    """Refuse names that could not stand in a topic level or a namespace, naming which."""
    if not NAMESPACE.match(namespace):
        raise ConfigError(f"namespace {namespace[:80]!r}: must be lowercase letters, digits and '-', "
                          f"at most 63 characters")
    if not DEVICE_ID.match(device):
        raise ConfigError(f"device id {device[:80]!r}: must be 1-128 letters, digits or '_.:-', "
                          f"starting with a letter or digit")


def _depth(v: Any, d: int = 0) -> int:
    if isinstance(v, dict):
        return max([_depth(x, d + 1) for x in v.values()] or [d + 1])
    if isinstance(v, list):
        return max([_depth(x, d + 1) for x in v] or [d + 1])
    return d


def check_document(doc: Any, what: str, *, measure: bool = True) -> dict:
    """`doc` when it is a JSON object within the size and depth bounds, else `ConfigError`.
    Without `measure` the size is left to the caller (a report's size is checked once merged)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{what}: must be a JSON object, not {type(doc).__name__}")
    if _depth(doc) > MAX_DEPTH:
        raise ConfigError(f"{what}: nested deeper than {MAX_DEPTH} levels")
    if measure and len(json.dumps(doc, separators=(",", ":"))) > MAX_DOCUMENT:
        raise ConfigError(f"{what}: larger than {MAX_DOCUMENT} bytes as JSON")
    return doc


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: `patch` applied to `target` (neither is changed)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


_MISSING = object()


def delta(desired: dict, reported: dict) -> dict:
    """What `desired` asks that `reported` does not show: desired keys whose values differ."""
    out = {}
    for k, v in desired.items():
        r = reported.get(k, _MISSING)
        if isinstance(v, dict) and isinstance(r, dict):
            d = delta(v, r)
            if d:
                out[k] = d
        elif r is _MISSING or v != r:
            out[k] = v
    return out


@dataclass
class Twin:
    uid: str
    namespace: str
    device: str
    reported: dict
    reported_version: int
    desired: dict
    desired_version: int
    created: float
    last_seen: float | None
    silent: bool

    @property
    def delta(self) -> dict:
        return delta(self.desired, self.reported)

    def to_dict(self) -> dict:
        return {"namespace": self.namespace, "device": self.device,
                "reported": self.reported, "reported_version": self.reported_version,
                "desired": self.desired, "desired_version": self.desired_version, "delta": self.delta,
                "created": self.created, "last_seen": self.last_seen, "silent": self.silent}


_COLUMNS = "uid, namespace, device, reported, reported_version, desired, desired_version, created, last_seen, silent"


def _twin(r: tuple) -> Twin:
    return Twin(r[0], r[1], r[2], json.loads(r[3]), r[4], json.loads(r[5]), r[6], r[7], r[8], bool(r[9]))


@dataclass
class Report:
    """What one reported-state update did."""

    twin: Twin
    returned: bool   # the device was flagged silent (or never seen) and speaks again
    changed: bool    # the reported document changed
    first: bool = False   # never seen before


class DeviceRegistry:
    """Twins and command history in the node database (`NodeState`'s connection and lock).

    `clock` gives the time of last-seen and silence (tests inject one they advance)."""

    def __init__(self, state: NodeState, *, silent_after_s: float = 600.0,
                 clock: Callable[[], float] = time.time, max_devices: int = MAX_DEVICES):
        if silent_after_s <= 0:
            raise ConfigError(f"device silence {silent_after_s}s must be positive")
        self._state = state
        self.silent_after_s = silent_after_s
        self.clock = clock
        self.max_devices = max_devices

    def _tx(self):
        return self._state._transaction()

    # -- twins ------------------------------------------------------------------------------
    def get(self, namespace: str, device: str) -> Twin | None:
        rows = self._state._x(f"SELECT {_COLUMNS} FROM devices WHERE namespace = ? AND device = ?",
                              (namespace, device))
        return _twin(rows[0]) if rows else None

    def twins(self, namespaces: Iterable[str] | None = None, *, silent: bool | None = None,
             after: tuple[str, str] | None = None, limit: int = 100) -> list[Twin]:
        """Twins ordered by (namespace, device); only those of `namespaces` when given, only
        silent (or only not silent) ones with `silent`, those after `after` (paging)."""
        where: list[str] = []
        args: list[Any] = []
        if namespaces is not None:
            ns = list(namespaces)
            if not ns:
                return []
            where.append(f"namespace IN ({','.join('?' * len(ns))})")
            args += ns
        if silent is not None:
            where.append("silent = ?")
            args.append(int(silent))
        if after is not None:
            where.append("(namespace, device) > (?, ?)")
            args += list(after)
        sql = f"SELECT {_COLUMNS} FROM devices"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_twin(r) for r in self._state._x(sql + " ORDER BY namespace, device LIMIT ?", [*args, limit])]

    def _row(self, db, namespace: str, device: str) -> Twin:
        """The device's twin, created (empty) when it is not known yet."""
        r = db.execute(f"SELECT {_COLUMNS} FROM devices WHERE namespace = ? AND device = ?",
                       (namespace, device)).fetchone()
        if r is not None:
            return _twin(r)
        (n,) = db.execute("SELECT count(*) FROM devices WHERE namespace = ?", (namespace,)).fetchone()
        if n >= self.max_devices:
            raise ConfigError(f"device {device[:80]!r}: namespace {namespace} has {n} devices, the most one "
                              f"namespace may have on this node")
        uid = uuid.uuid4().hex
        now = self.clock()
        db.execute("INSERT INTO devices(uid, namespace, device, created) VALUES (?,?,?,?)",
                   (uid, namespace, device, now))
        return Twin(uid, namespace, device, {}, 0, {}, 0, now, None, False)

    def set_desired(self, namespace: str, device: str, patch: dict, expect_version: int | None = None) -> Twin:
        """Merge `patch` into the desired state; with `expect_version`, only when the desired
        state is still at that version (0: the device has no desired state yet), else
        `VersionConflict`. A device not known yet is created."""
        check_device(namespace, device)
        check_document(patch, f"desired state patch for {namespace}/{device}")
        with self._tx() as db:
            t = self._row(db, namespace, device)
            if expect_version is not None and expect_version != t.desired_version:
                raise VersionConflict(f"desired state of {namespace}/{device}", expect_version,
                                      t.desired_version)
            desired = check_document(merge_patch(t.desired, patch), f"desired state of {namespace}/{device}")
            t.desired, t.desired_version = desired, t.desired_version + 1
            db.execute("UPDATE devices SET desired = ?, desired_version = ? WHERE uid = ?",
                       (json.dumps(desired), t.desired_version, t.uid))
        return t

    def report(self, namespace: str, updates: list[tuple[str, dict]], *, checked: bool = False) -> list[Report]:
        """Merge each (device, patch) into that device's reported state, in order, in one
        transaction; each device is seen now (its silence ends). Devices not known yet are
        created. A patch that is not a bounded object fails the whole call with `ConfigError`
        before anything is written; a caller that checked each with `check_device` and
        `check_document` already (to fail messages one by one) says so with `checked`."""
        if not checked:
            for device, patch in updates:
                check_device(namespace, device)
                check_document(patch, f"reported state of {namespace}/{device}")
        now = self.clock()
        out: list[Report] = []
        with self._tx() as db:
            # one read of every device of the batch, one write each at the end: a route's
            # batch is one transaction whatever its size
            names = list(dict.fromkeys(d for d, _ in updates))
            twins: dict[str, Twin] = {}
            for i in range(0, len(names), 500):
                part = names[i:i + 500]
                for r in db.execute(f"SELECT {_COLUMNS} FROM devices WHERE namespace = ? AND device IN "
                                    f"({','.join('?' * len(part))})", (namespace, *part)):
                    twins[r[2]] = _twin(r)
            for device in names:
                if device not in twins:
                    twins[device] = self._row(db, namespace, device)
            touched: set[str] = set()
            for device, patch in updates:
                t = twins[device]
                first = t.last_seen is None
                returned = t.silent or first
                reported = merge_patch(t.reported, patch)
                changed = reported != t.reported
                if changed:
                    t.reported, t.reported_version = reported, t.reported_version + 1
                t.last_seen, t.silent = now, False
                touched.add(device)
                out.append(Report(t, returned, changed, first))
            rows = []
            for device in touched:
                # merging objects nests no deeper than the deepest of them: only the size to check
                t = twins[device]
                text = json.dumps(t.reported, separators=(",", ":"))
                if len(text) > MAX_DOCUMENT:
                    raise ConfigError(f"reported state of {namespace}/{device}: larger than {MAX_DOCUMENT} "
                                      f"bytes as JSON")
                rows.append((text, t.reported_version, now, t.uid))
            db.executemany("UPDATE devices SET reported = ?, reported_version = ?, last_seen = ?, silent = 0 "
                           "WHERE uid = ?", rows)
        return out

    def sweep(self) -> list[Twin]:
        """Flag the devices that sent nothing for `silent_after_s`; returns those flagged now."""
        cutoff = self.clock() - self.silent_after_s
        with self._tx() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM devices WHERE silent = 0 AND last_seen IS NOT NULL "
                              "AND last_seen < ?", (cutoff,)).fetchall()
            if rows:
                db.execute(f"UPDATE devices SET silent = 1 WHERE uid IN ({','.join('?' * len(rows))})",
                           [r[0] for r in rows])
        found = [_twin(r) for r in rows]
        for t in found:
            t.silent = True
        return found

    # -- commands ---------------------------------------------------------------------------
    def add_command(self, twin: Twin, name: str, payload: Any, by: str) -> dict:
        cid = uuid.uuid4().hex
        now = self.clock()
        with self._tx() as db:
            db.execute("INSERT INTO device_commands(id, uid, name, payload, status, created, updated, by) "
                       "VALUES (?,?,?,?,?,?,?,?)", (cid, twin.uid, name, json.dumps(payload), "pending", now, now, by))
            db.execute("DELETE FROM device_commands WHERE uid = ? AND rowid NOT IN (SELECT rowid FROM "
                       "device_commands WHERE uid = ? ORDER BY created DESC, rowid DESC LIMIT ?)",
                       (twin.uid, twin.uid, MAX_COMMANDS_KEPT))
        rec = self.command(cid)
        assert rec is not None   # written just above
        return rec

    def update_command(self, cid: str, *, status: str, attempts: int | None = None, result: Any = None,
                       error: str = "", note: str | None = None) -> None:
        """Record a command's new status; `note` appends a line to its attempt log."""
        with self._tx() as db:
            row = db.execute("SELECT attempts, log FROM device_commands WHERE id = ?", (cid,)).fetchone()
            if row is None:
                return
            log = json.loads(row[1])
            if note is not None:
                log.append({"at": self.clock(), "note": note})
            db.execute("UPDATE device_commands SET status = ?, attempts = ?, result = ?, error = ?, updated = ?, "
                       "log = ? WHERE id = ?",
                       (status, row[0] if attempts is None else attempts,
                        None if result is None else json.dumps(result), error, self.clock(), json.dumps(log), cid))

    def command(self, cid: str) -> dict | None:
        rows = self._state._x(
            "SELECT c.id, d.namespace, d.device, c.name, c.payload, c.status, c.attempts, c.created, c.updated, "
            "c.result, c.error, c.by, c.log FROM device_commands c JOIN devices d ON d.uid = c.uid WHERE c.id = ?",
            (cid,))
        return _command(rows[0]) if rows else None

    def commands(self, twin: Twin, limit: int = 50) -> list[dict]:
        """The device's commands, newest first."""
        rows = self._state._x(
            "SELECT c.id, d.namespace, d.device, c.name, c.payload, c.status, c.attempts, c.created, c.updated, "
            "c.result, c.error, c.by, c.log FROM device_commands c JOIN devices d ON d.uid = c.uid "
            "WHERE c.uid = ? ORDER BY c.created DESC, c.rowid DESC LIMIT ?", (twin.uid, limit))
        return [_command(r) for r in rows]

    def unfinished_commands(self) -> list[str]:
        """Ids of commands no outcome was recorded for (the node stopped while they ran)."""
        return [r[0] for r in self._state._x(
            "SELECT id FROM device_commands WHERE status IN ('pending', 'sent')")]


def _command(r: tuple) -> dict:
    return {"id": r[0], "namespace": r[1], "device": r[2], "name": r[3], "payload": json.loads(r[4]),
            "status": r[5], "attempts": r[6], "created": r[7], "updated": r[8],
            "result": None if r[9] is None else json.loads(r[9]), "error": r[10], "by": r[11],
            "log": json.loads(r[12])}
