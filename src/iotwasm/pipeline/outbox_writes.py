"""Writing the outbox: its appends in one transaction (group commit), natively or through
Python's sqlite3, with the deletes of acknowledged rows that ride along.

Split from `outbox` (the table, its reads, acknowledgements and bounds) along the write path;
`Outbox` inherits it. Every write happens under the outbox's lock, on the native writer's
connection (`outbox_native`: the common transaction, without the GIL) or on the outbox's own.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import IotwasmError
from ..sqlite import Checkpointer, storage_error
from .outbox_native import NativeWriter
from .outbox_recent import RecentRows

log = logging.getLogger("iotwasm.outbox")


class OutboxFull(IotwasmError):
    kind = "outbox_full"


@dataclass(frozen=True, slots=True)
class AckedRange:
    """A sink's acknowledged rows not deleted yet: ids `lo` to `hi` (`Outbox.ack_later`),
    and their count and bytes when all of them were in memory — None: read them back
    before the delete."""

    lo: int
    hi: int
    size: tuple[int, int] | None


@dataclass
class OutboxStats:
    stored: int = 0
    sent: int = 0
    dropped: int = 0
    rejected: int = 0
    send_failures: int = 0


@dataclass(slots=True)
class _Plan:
    """An append worked out before it is written (`OutboxWrites._plan`)."""

    next_id: int
    results: list[int | BaseException] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    stored: list[tuple[str, int]] = field(default_factory=list)
    refused: list[tuple[str, int]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    rows_after: int = 0
    bytes_after: int = 0


class OutboxWrites:
    """The append transaction of `Outbox` (a base class: the state is the outbox's)."""

    path: Path
    max_rows: int
    max_bytes: int
    overflow: str
    checkpoints: Checkpointer
    stats: dict[str, OutboxStats]
    recent_rows: int
    _lock: threading.Lock
    _db: sqlite3.Connection
    _native: NativeWriter | None
    _acked: dict[str, AckedRange]
    _recent: dict[str, RecentRows]
    _rows: int
    _bytes: int
    _next_id: int

    def _st(self, sink: str) -> OutboxStats:
        return self.stats.setdefault(sink, OutboxStats())

    def append_many(self, requests: list[tuple[str, list[tuple]]]) -> list[int | BaseException]:
        """Store several callers' (sink, items) in one transaction (group commit: one commit
        instead of one per caller). Each request gets its own result: the number stored, or
        `OutboxFull` for a request the ``reject`` policy refused (the others are stored).
        A write that fails stores none of them, and each request gets that error. The same
        transaction deletes the rows acknowledged since the last write (`ack_later`)."""
        if not any(items for _, items in requests):
            return [0] * len(requests)
        with self._lock:
            native = self._native
            if native is not None and all(a.size is not None for a in self._acked.values()):
                done = self._append_native(native, requests)
                if done is not None:
                    return done
            return self._append_python(requests)

    def _append_native(self, native: NativeWriter, requests: list[tuple[str, list[tuple]]]
                       ) -> list[int | BaseException] | None:
        """`append_many`'s common transaction in one call without the GIL (outbox_native);
        None, with nothing done, when it is for the Python path: rows to drop for the bound,
        or values of other types than the plain ones."""
        ranges = dict(self._acked)
        sizes = {sink: a.size or (0, 0) for sink, a in ranges.items()}
        acked = (sum(n for n, _ in sizes.values()), sum(b for _, b in sizes.values()), ranges,
                 {sink: n for sink, (n, _) in sizes.items()})
        plan = self._plan(requests, self._rows - acked[0], self._bytes - acked[1], None)
        if plan is None:
            return None   # the oldest rows go, read inside the transaction: Python's
        deletes = [(sink, a.lo, a.hi) for sink, a in ranges.items()]
        try:
            if (plan.rows or deletes) and not native.append(deletes, plan.rows):
                return None
        except Exception as e:   # stored none of it: every request learns why
            err = (storage_error("outbox", self.path, e) if isinstance(e, sqlite3.Error) else None) or e
            return self._failed(plan, err, len(requests))
        return self._committed(plan, acked)

    def _append_python(self, requests: list[tuple[str, list[tuple]]]) -> list[int | BaseException]:
        """`append_many` through Python's sqlite3 (under the lock): every case."""
        plan = None
        try:
            self._db.execute("BEGIN")
            acked = self._delete_acked()
            plan = self._plan(requests, self._rows - acked[0], self._bytes - acked[1], self._drop_oldest)
            assert plan is not None, "dropping the oldest rows is possible here"
            if plan.rows:
                self._db.executemany("INSERT INTO outbox(id, sink, topic, payload, created, envelope) "
                                     "VALUES (?,?,?,?,?,?)", plan.rows)
            self._db.execute("COMMIT")
        except BaseException as e:
            try:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            except Exception:
                pass   # the error that failed the write is the one to report (a closed file too)
            return self._failed(plan, e, len(requests))
        return self._committed(plan, acked)

    def _plan(self, requests: list[tuple[str, list[tuple]]], base_rows: int, base_bytes: int,
              make_room: Callable[[int, int], tuple[int, int, list[str]]] | None) -> _Plan | None:
        """The rows of `requests` with their ids, and what each request gets, given `base_rows`
        and `base_bytes` stored once the acknowledged rows are gone. A request over the bound
        is refused (``reject``) or makes room with `make_room(rows, bytes)` (``drop-oldest``,
        inside the transaction); without `make_room` that ends the plan: None."""
        plan = _Plan(self._next_id)
        now = time.time()
        for sink, items in requests:
            if not items:
                plan.results.append(0)
                continue
            size = sum(len(i[0]) + len(i[1]) + (len(i[2]) if len(i) > 2 else 0) for i in items)
            over_rows = base_rows + len(items) - self.max_rows
            over_bytes = base_bytes + size - self.max_bytes
            if over_rows > 0 or over_bytes > 0:
                if self.overflow == "reject":
                    plan.refused.append((sink, len(items)))
                    plan.results.append(OutboxFull(
                        f"outbox {self.path.name} full ({base_rows} rows, {base_bytes} bytes); "
                        f"{len(items)} message(s) refused"))
                    continue
                if make_room is None:
                    return None
                n, freed, sinks = make_room(max(over_rows, 0), max(over_bytes, 0))
                base_rows -= n
                base_bytes -= freed
                plan.dropped += sinks
            first = plan.next_id
            plan.rows.extend((first + k, sink, i[0], i[1], now, i[2] if len(i) > 2 else None)
                             for k, i in enumerate(items))
            plan.next_id += len(items)
            base_rows += len(items)
            base_bytes += size
            plan.stored.append((sink, len(items)))
            plan.results.append(len(items))
        plan.rows_after, plan.bytes_after = base_rows, base_bytes
        return plan

    def _failed(self, plan: _Plan | None, error: BaseException, requests: int) -> list[int | BaseException]:
        """A write that stored nothing: every request gets `error`; the ids it gave out and
        the requests it refused still count."""
        if plan is not None:
            self._next_id = plan.next_id
            self._count_refused(plan)
        return [error] * requests

    def _committed(self, plan: _Plan, acked: tuple[int, int, dict[str, AckedRange], dict[str, int]]
                   ) -> list[int | BaseException]:
        """What follows a committed append: the accounts, its rows kept in memory, the stats."""
        self._next_id = plan.next_id
        self.checkpoints.committed()
        self._acked_done(acked)
        self._rows, self._bytes = plan.rows_after, plan.bytes_after
        for sink in plan.dropped:     # deleted under the forwarder: read from disk again
            self._recent.pop(sink, None)
        self._remember(plan.rows)
        self._count_refused(plan)
        for sink in plan.dropped:   # counted once deleted: a delete that failed dropped nothing
            self._st(sink).dropped += 1
        if plan.dropped:
            log.warning("outbox %s over its bound: dropped the %d oldest message(s)",
                        self.path.name, len(plan.dropped))
        for sink, n in plan.stored:
            self._st(sink).stored += n
        return plan.results

    def _count_refused(self, plan: _Plan) -> None:
        for sink, n in plan.refused:
            self._st(sink).rejected += n

    def _remember(self, rows: list[tuple]) -> None:
        """Keep rows just committed (id, sink, topic, payload, created, envelope) in memory."""
        for row_id, sink, topic, payload, _, envelope in rows:
            recent = self._recent.get(sink)
            if recent is None:   # older rows of the sink, if any, are below this id
                recent = self._recent[sink] = RecentRows(row_id, self.recent_rows)
            size = len(topic) + len(payload)
            if envelope is None:
                recent.add(row_id, (row_id, topic, payload), size)
            else:
                recent.add(row_id, (row_id, topic, payload, envelope), size + len(envelope))

    def _drop_oldest(self, rows: int, nbytes: int) -> tuple[int, int, list[str]]:
        """Delete the oldest rows (inside the caller's transaction) until `rows` rows and
        `nbytes` bytes are freed; returns how many, how many bytes, and whose they were."""
        dropped = freed = 0
        cur = self._db.execute("SELECT id, sink, length(payload) + length(topic) + coalesce(length(envelope), 0) FROM outbox ORDER BY id")
        ids, sinks = [], []
        for row_id, sink, size in cur:
            if dropped >= rows and freed >= nbytes:
                break
            ids.append(row_id)
            sinks.append(sink)
            dropped += 1
            freed += size
        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
        return dropped, freed, sinks

    def _delete_acked(self) -> tuple[int, int, dict[str, AckedRange], dict[str, int]]:
        """Inside the caller's transaction: delete the acknowledged ranges; returns rows,
        bytes, the ranges deleted and rows per sink, to account for once it committed."""
        ranges = dict(self._acked)
        total = size = 0
        per_sink: dict[str, int] = {}
        for sink, acked in ranges.items():
            first, last = acked.lo, acked.hi
            if acked.size is not None:    # all of the range was in memory: no read back
                n, nbytes = acked.size
            else:
                nbytes, n = self._db.execute(
                    "SELECT coalesce(sum(length(payload) + length(topic) + coalesce(length(envelope), 0)), 0), "
                    "count(*) FROM outbox WHERE sink = ? AND id BETWEEN ? AND ?", (sink, first, last)).fetchone()
            self._db.execute("DELETE FROM outbox WHERE sink = ? AND id BETWEEN ? AND ?", (sink, first, last))
            total += n
            size += nbytes
            per_sink[sink] = n
        return total, size, ranges, per_sink

    def _acked_done(self, acked: tuple[int, int, dict[str, AckedRange], dict[str, int]]) -> None:
        for sink, rng in acked[2].items():
            if self._acked.get(sink) == rng:
                del self._acked[sink]
            self._st(sink).sent += acked[3][sink]
