"""The audit log: every mutating API call and every security event, hash-chained in SQLite.

Each row stores the sha256 of the previous row's hash and its own fields (canonical JSON), so
changing, deleting or reordering any row breaks the chain from that row on; `verify()` walks
the chain and names the first row that does not match. The chain detects tampering by anyone
who cannot also recompute every later hash; pin the latest hash elsewhere (``GET
/v1/audit/verify`` returns it) to detect even that.

Denials of requests that carry no valid token go through a `DenialThrottle`: anyone who can
reach the port can send them, so writing each one would let a flood grow the log without
bound.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Callable

from ..sqlite import open_db
from .security import utc

GENESIS = "0" * 64
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

    def verify(self) -> dict:
        """Walk the chain; ``{"ok", "rows", "head", "problem"}``."""
        prev, n = GENESIS, 0
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(FIELDS)}, prev, hash FROM audit ORDER BY id").fetchall()
        expected_id = None
        for r in rows:
            row = dict(zip(FIELDS, r[:len(FIELDS)]))
            stored_prev, stored_hash = r[-2], r[-1]
            if expected_id is not None and row["id"] != expected_id:
                return {"ok": False, "rows": n, "head": prev,
                        "problem": f"row {expected_id} is missing (next row is {row['id']})"}
            if stored_prev != prev:
                return {"ok": False, "rows": n, "head": prev,
                        "problem": f"row {row['id']}: does not link to the row before it"}
            if row_hash(prev, row) != stored_hash:
                return {"ok": False, "rows": n, "head": prev,
                        "problem": f"row {row['id']}: contents do not match its hash (edited)"}
            prev, n, expected_id = stored_hash, n + 1, row["id"] + 1
        return {"ok": True, "rows": n, "head": prev, "problem": None}

    def close(self) -> None:
        with self._lock:
            self._db.close()


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

    def sweep(self) -> None:
        """Write the summaries of a window that has ended."""
        with self._lock:
            ended = self._start is not None and self._clock() - self._start >= self.window_s
            summaries = self._end_window(self._clock()) if ended else []
        self._write(summaries)

    def flush(self) -> None:
        """End the current window now and write its summaries."""
        with self._lock:
            summaries = self._end_window(self._clock()) if self._start is not None else []
        self._write(summaries)

    def _end_window(self, now: float) -> list[tuple]:
        span = min(now - self._start, self.window_s)
        out = [(key, n, span, self._start_wall) for key, (_, n) in self._groups.items() if n]
        self._start, self._written, self._groups = None, 0, {}
        return out

    def _write(self, summaries: list[tuple]) -> None:
        for (actor, tenant, reason, route), n, span, start in summaries:
            self.log.append(actor, "auth.denied", route, "denied",
                            f"{reason} … and {n:,} more denials suppressed in {span:.3g} s from {utc(start)}",
                            tenant=tenant or None)
