"""The audit log: every mutating API call and every security event, hash-chained in SQLite.

Each row stores the sha256 of the previous row's hash and its own fields (canonical JSON), so
changing, deleting or reordering any row breaks the chain from that row on; `verify()` walks
the chain and names the first row that does not match. The chain detects tampering by anyone
who cannot also recompute every later hash; pin the latest hash elsewhere (``GET
/v1/audit/verify`` returns it) to detect even that.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

from ..sqlite import open_db

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
        self._db = open_db(self.path, synchronous="FULL", schema=SCHEMA)
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
