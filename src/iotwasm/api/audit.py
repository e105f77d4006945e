"""The audit log: every mutating API call and every security event, hash-chained in SQLite.

Each row stores the sha256 of the previous row's hash and its own fields (canonical JSON), so
changing, deleting or reordering any row breaks the chain from that row on; `verify()` walks
the chain and names the first row that does not match. The chain detects tampering by anyone
who cannot also recompute every later hash. It cannot see rows cut from its end, or a log
emptied: for that, `anchor()` makes a small record of the head (row number, hash, row count),
hashed so a damaged copy is noticed, to be kept elsewhere (a file the operator stores, the
fleet's JetStream); `verify(anchors)` then also checks the log still holds each anchored row
with the anchored hash.

Denials of requests that carry no valid token go through a `DenialThrottle`: anyone who can
reach the port can send them, so writing each one would let a flood grow the log without
bound.

Every commit syncs the file (a row acknowledged must outlive a power cut), which must not
happen on the node's event loop: the API and the node hand their writes (and the reads that
must see them) to the log's own thread in order (`run`, `submit`); an API answer still waits
for its row to be on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..sqlite import open_db
from .security import utc

log = logging.getLogger("iotwasm.api.audit")
T = TypeVar("T")

GENESIS = "0" * 64
ANCHOR_FORMAT = "iotwasm-audit-anchor/1"
ANCHOR_FIELDS = ("format", "node", "seq", "rows", "head", "ts")
FIELDS = ("id", "ts", "actor", "tenant", "action", "target", "outcome", "detail")

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, actor TEXT NOT NULL, tenant TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL,
    prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts);
"""


def row_hash(prev: str, row: dict) -> str:
    body = json.dumps([row[f] for f in FIELDS], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev + body).encode()).hexdigest()


class AuditLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # FULL: an acknowledged audit row must outlive a power cut, or the chain loses its tail
        self._db = open_db(self.path, synchronous="FULL", schema=SCHEMA, what="audit log")
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="audit")

    def submit(self, fn: Callable[..., T], *args: Any, **kw: Any) -> Future[T]:
        """Run `fn` on the log's own thread after everything submitted before it; for callers
        that cannot wait (node events, sweeps). A failure is logged."""
        future = self._thread.submit(fn, *args, **kw)
        future.add_done_callback(_log_failure)
        return future

    async def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """`fn` on the log's own thread, in order with every write before it, awaited."""
        return await asyncio.wrap_future(self._thread.submit(fn, *args, **kw))

    async def record(self, actor: str, action: str, target: str = "", outcome: str = "ok", detail: str = "",
                     tenant: str | None = None) -> dict:
        """`append` off the event loop; returns once the row is on disk."""
        return await self.run(self.append, actor, action, target, outcome, detail, tenant)

    def append(self, actor: str, action: str, target: str = "", outcome: str = "ok", detail: str = "",
               tenant: str | None = None) -> dict:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
                prev = last[1] if last else GENESIS
                row = {"id": (last[0] + 1) if last else 1, "ts": round(time.time(), 6), "actor": actor,
                       "tenant": tenant or "", "action": action, "target": target, "outcome": outcome,
                       "detail": detail[:2000]}
                h = row_hash(prev, row)
                self._db.execute("INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?)",
                                 (*[row[f] for f in FIELDS], prev, h))
            except BaseException:
                if self._db.in_transaction:   # a storage error rolled it back already
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return {**row, "hash": h}

    def query(self, since: float | None = None, until: float | None = None, actor: str | None = None,
              tenant: str | None = None, action: str | None = None, limit: int = 100) -> list[dict]:
        where, args = [], []
        for col, op, val in (("ts", ">=", since), ("ts", "<=", until), ("tenant", "=", tenant),
                             ("action", "=", action)):
            if val is not None:
                where.append(f"{col} {op} ?")
                args.append(val)
        if actor is not None:
            where.append("actor LIKE ?")
            args.append(f"%{actor}%")
        sql = "SELECT id, ts, actor, tenant, action, target, outcome, detail, hash FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", [*args, max(1, min(limit, 10_000))]).fetchall()
        return [dict(zip((*FIELDS, "hash"), r)) for r in rows]

    def verify(self, anchors: list[dict] | tuple = ()) -> dict:
        """Walk the chain and check it against `anchors` (records from `anchor`, checked with
        `check_anchor`); ``{"ok", "rows", "head", "problem", "anchors"}``."""
        prev, n = GENESIS, 0
        pinned = {int(a["seq"]) for a in anchors}
        found: dict[int, str] = {}
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(FIELDS)}, prev, hash FROM audit ORDER BY id").fetchall()
        expected_id = None

        def broken(problem: str) -> dict:
            return {"ok": False, "rows": n, "head": prev, "problem": problem, "anchors": len(anchors)}
        for r in rows:
            row = dict(zip(FIELDS, r[:len(FIELDS)]))
            stored_prev, stored_hash = r[-2], r[-1]
            if expected_id is not None and row["id"] != expected_id:
                return broken(f"row {expected_id} is missing (next row is {row['id']})")
            if stored_prev != prev:
                return broken(f"row {row['id']}: does not link to the row before it")
            if row_hash(prev, row) != stored_hash:
                return broken(f"row {row['id']}: contents do not match its hash (edited)")
            if row["id"] in pinned:
                found[row["id"]] = stored_hash
            prev, n, expected_id = stored_hash, n + 1, row["id"] + 1
        for a in sorted(anchors, key=lambda a: int(a["seq"])):   # each one: two may pin one row
            seq = int(a["seq"])
            taken = f"the anchor of {utc(a['ts'])}" if a.get("ts") else "the anchor"
            if seq == 0:
                continue  # anchored while empty: any log extends it
            if seq not in found:
                last = expected_id - 1 if expected_id is not None else 0
                return broken(f"row {seq} of {taken} is gone: the log ends at row {last} "
                              + ("(every row was deleted)" if not n else "(rows were cut from its end)"))
            if found[seq] != a["head"]:
                return broken(f"row {seq} does not match {taken}: the log was rewritten up to there")
        return {"ok": True, "rows": n, "head": prev, "problem": None, "anchors": len(anchors)}

    def anchor(self, node: str = "") -> dict:
        """The chain's head now, as a record to keep elsewhere: `seq` (the last row), `head`
        (its hash), `rows`, `ts`, the `node` and a `digest` over all of them."""
        with self._lock:
            last = self._db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            count = self._db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
        record = {"format": ANCHOR_FORMAT, "node": node, "seq": last[0] if last else 0, "rows": count,
                  "head": last[1] if last else GENESIS, "ts": round(time.time(), 6)}
        return {**record, "digest": _anchor_digest(record)}

    def close(self) -> None:
        """Write what was submitted, then close."""
        self._thread.shutdown(wait=True)
        with self._lock:
            self._db.close()


def _anchor_digest(record: dict) -> str:
    body = json.dumps([record[f] for f in ANCHOR_FIELDS], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def check_anchor(record: object, where: str = "anchor") -> dict:
    """`record` if it is an intact anchor; ValueError naming `where` and what is wrong."""
    if not isinstance(record, dict) or record.get("format") != ANCHOR_FORMAT:
        raise ValueError(f"{where}: not an audit anchor (expected format {ANCHOR_FORMAT!r})")
    try:
        intact = record["digest"] == _anchor_digest(record)
        seq, head, _ = int(record["seq"]), str(record["head"]), float(record["ts"])
    except (KeyError, TypeError, ValueError):
        intact = False
    if not intact or seq < 0 or len(head) != 64:
        raise ValueError(f"{where}: the anchor is damaged (its digest does not match its fields)")
    return record


def _log_failure(future: Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("audit write failed: %s", future.exception())


class DenialThrottle:
    """Audits denials of unauthenticated requests (no token, an unknown or an expired one) at a
    bounded rate, and says how many it left out.

    Denials are grouped by actor, reason and route (the route's template, so varying a path
    parameter does not make a new group). In each window of `window_s` seconds, the first
    `per_group` denials of a group are written as usual, as long as the window has written
    fewer than `total` in all; the others are only counted. When the window ends, each group
    that had denials left out gets one summary row saying how many, in the same hash chain as
    every other row. So a flood writes at most `total` rows plus one summary per group per
    window. Windows end on the next denial after them, on `sweep()` (the API calls it every
    second) and on `flush()` (at shutdown, so no count is lost). Denials by a valid token (too
    weak a role, a policy) are not throttled: they name a holder who can be asked or revoked.
    """

    def __init__(self, log: AuditLog, *, per_group: int = 10, total: int = 100, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.log, self.per_group, self.total, self.window_s = log, per_group, total, window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._start: float | None = None  # the current window's start (clock), None: no window
        self._start_wall = 0.0
        self._written = 0
        #: (actor, tenant, reason, route) -> [written, left out] in the current window
        self._groups: dict[tuple[str, str, str, str], list[int]] = {}

    def denied(self, actor: str, target: str, reason: str, route: str, tenant: str | None = None) -> None:
        """One denial of a request to `target` (method and path) matched to `route`."""
        with self._lock:
            now = self._clock()
            summaries = self._end_window(now) if self._start is not None and now - self._start >= self.window_s else []
            if self._start is None:
                self._start, self._start_wall = now, time.time()
            group = self._groups.setdefault((actor, tenant or "", reason, route), [0, 0])
            write = group[0] < self.per_group and self._written < self.total
            if write:
                group[0] += 1
                self._written += 1
            else:
                group[1] += 1
        self._write(summaries)
        if write:
            self.log.append(actor, "auth.denied", target, "denied", reason, tenant=tenant)

    def sweep_due(self) -> bool:
        """Whether a window has ended with summaries to write (asked every second on the
        node's loop, so that `sweep` is handed to the log's thread only when it has work)."""
        with self._lock:
            return self._ended()

    def sweep(self) -> None:
        """Write the summaries of a window that has ended."""
        with self._lock:
            summaries = self._end_window(self._clock()) if self._ended() else []
        self._write(summaries)

    def _ended(self) -> bool:
        return self._start is not None and self._clock() - self._start >= self.window_s

    def flush(self) -> None:
        """End the current window now and write its summaries."""
        with self._lock:
            summaries = self._end_window(self._clock()) if self._start is not None else []
        self._write(summaries)

    def _end_window(self, now: float) -> list[tuple]:
        assert self._start is not None, "called only while a window is open"
        span = min(now - self._start, self.window_s)
        out = [(key, n, span, self._start_wall) for key, (_, n) in self._groups.items() if n]
        self._start, self._written, self._groups = None, 0, {}
        return out

    def _write(self, summaries: list[tuple]) -> None:
        for (actor, tenant, reason, route), n, span, start in summaries:
            self.log.append(actor, "auth.denied", route, "denied",
                            f"{reason} … and {n:,} more denials suppressed in {span:.3g} s from {utc(start)}",
                            tenant=tenant or None)
