"""Store-and-forward: an SQLite outbox in front of an uplink.

Messages for an uplink are appended to the outbox first and deleted only after the broker
acknowledged them (MQTT PUBACK, JetStream ack). While the uplink is down they accumulate; when
it returns they are delivered in the order they were stored. A kill -9 of the node loses
nothing that was stored: SQLite in WAL mode has it on disk before `append` returns.

Delivery is at-least-once: a crash between the broker's ack and the delete re-sends that
message after restart. A batch of small messages is stored as one row (`outbox_rows`); the
acknowledged messages of a row are deleted together (the row, or its acknowledged part) in
the next write. (A sample gateway that marks rows sent *before* publishing loses data
on every outage; this one never marks a row before the ack.)

The outbox is bounded by rows and bytes, with an explicit overflow policy:
``drop-oldest`` (default: keep the freshest data, count what was dropped) or ``reject``
(refuse new messages, count them; the caller keeps them).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..errors import ConfigError, IotwasmError
from ..sqlite import Checkpointer, open_db
from .forwarder import ACK_FLUSH_S, INLINE_ROWS, Forwarder, SubmitWindow, send_in_order
from .group_commit import GroupCommit
from .outbox_recent import RECENT_ROWS, RecentRows
from .outbox_rows import ROW_MESSAGES, messages, rows_of
from .worker import Worker

__all__ = ["ACK_FLUSH_S", "INLINE_ROWS", "Forwarder", "GroupCommit", "Outbox", "OutboxFull", "OutboxStats",
           "SubmitWindow", "send_in_order"]

T = TypeVar("T")

log = logging.getLogger("iotwasm.outbox")

class OutboxFull(IotwasmError):
    kind = "outbox_full"


@dataclass
class OutboxStats:
    stored: int = 0
    sent: int = 0
    dropped: int = 0
    rejected: int = 0
    send_failures: int = 0


#: ids are given by the outbox (`Outbox._next_id`, above every id the file ever held), not by
#: AUTOINCREMENT, whose sqlite_sequence row made every commit write one page more; a file made
#: before keeps its AUTOINCREMENT table, which takes the given ids all the same. A row holds
#: the `n` messages with ids from its own on (`outbox_rows`).
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, sink TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, created REAL NOT NULL, envelope BLOB, n INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS outbox_sink ON outbox(sink, id);
"""

#: a row's size in bytes, as the outbox's byte bound counts it
_ROW_SIZE = "length(payload) + length(topic) + coalesce(length(envelope), 0)"


class Outbox:
    """A durable FIFO per sink name, shared by every sink of a node (one SQLite file)."""

    def __init__(self, path: str | Path, *, max_rows: int = 1_000_000, max_bytes: int = 512 * 2**20,
                 overflow: str = "drop-oldest"):
        if overflow not in ("drop-oldest", "reject"):
            raise ConfigError(f"outbox overflow policy {overflow!r} is not drop-oldest or reject")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.overflow = overflow
        self._lock = threading.Lock()
        self._db = open_db(self.path, synchronous="NORMAL", schema=SCHEMA, what="outbox")
        #: commits happen on the event loop (small groups): checkpoints never do
        self.checkpoints = Checkpointer(self._db)
        self.stats: dict[str, OutboxStats] = {}
        # an outbox written before messages had envelopes, or before rows held several
        # messages, gains the column (NULL: no envelope; 1: a row of one message)
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
        if "envelope" not in cols:
            self._db.execute("ALTER TABLE outbox ADD COLUMN envelope BLOB")
        if "n" not in cols:
            self._db.execute("ALTER TABLE outbox ADD COLUMN n INTEGER NOT NULL DEFAULT 1")
        rows, size = self._db.execute(
            f"SELECT coalesce(sum(n), 0), coalesce(sum({_ROW_SIZE}), 0) FROM outbox").fetchone()
        self._rows, self._bytes = rows, size
        self._writer: GroupCommit | None = None
        #: the thread that runs this outbox's larger reads and writes off the event loop
        #: (`off_loop`): one long-lived thread with a cheap hand-off, where the shared default
        #: executor cost a work item, a chained future and a wake of one of several threads
        self._worker = Worker(f"outbox-{self.path.stem}")
        #: per sink: the highest acknowledged id whose messages wait for their delete
        #: (`ack_later`), and the highest acknowledged id ever (`peek` starts above it)
        self._acked: dict[str, int] = {}
        self._through: dict[str, int] = {}
        #: per sink: the messages appended lately, for the forwarder (`outbox_recent`), at
        #: most `recent_rows` of them
        self._recent: dict[str, RecentRows] = {}
        self.recent_rows = RECENT_ROWS
        seq = 0
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
            seq = self._db.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence "
                                   "WHERE name = 'outbox'").fetchone()[0]
        top = self._db.execute("SELECT coalesce(max(id + n - 1), 0) FROM (SELECT id, n FROM outbox ORDER BY id DESC LIMIT 1)").fetchone()[0]
        self._next_id = max(seq, top) + 1

    def append_soon(self, sink: str, items: list[tuple]) -> asyncio.Future:
        """`append` from the event loop, group-committed with every other append of this
        outbox made ready in the same loop turn (or while the previous group was being
        written); the future resolves once the items are on disk (see `GroupCommit`)."""
        loop = asyncio.get_running_loop()
        if self._writer is None or self._writer.loop is not loop:
            self._writer = GroupCommit(self, loop)
        return self._writer.add(sink, items)

    def off_loop(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` (an outbox read or write too large for the loop) on the outbox's
        thread; calls run one at a time, in order (SQLite writes one at a time anyway)."""
        try:
            return self._worker.run(fn, *args)
        except RuntimeError as e:   # closed: the caller learns it where it awaits
            fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            fut.set_exception(e)
            return fut

    def _st(self, sink: str) -> OutboxStats:
        return self.stats.setdefault(sink, OutboxStats())

    def append(self, sink: str, items: list[tuple]) -> int:
        """Store (topic, payload) or (topic, payload, envelope bytes) items durably; returns
        how many were stored. The envelope is the sink's to encode; it counts toward the
        byte bound like the rest."""
        res = self.append_many([(sink, items)])[0]
        if isinstance(res, BaseException):
            raise res
        return res

    def append_many(self, requests: list[tuple[str, list[tuple]]]) -> list[int | BaseException]:
        """Store several callers' (sink, items) in one transaction (group commit: one commit
        instead of one per caller). Each request gets its own result: the number stored, or
        `OutboxFull` for a request the ``reject`` policy refused (the others are stored).
        A write that fails stores none of them, and each request gets that error. The same
        transaction deletes the rows acknowledged since the last write (`ack_later`)."""
        if not any(items for _, items in requests):
            return [0] * len(requests)
        results: list[int | BaseException] = []
        rows: list[tuple] = []
        kept: list[tuple[str, int, list[tuple]]] = []   # for memory: sink, first id, items
        stored: list[tuple[str, int]] = []
        with self._lock:
            try:
                self._db.execute("BEGIN")
                acked = self._delete_acked()
                base_rows = self._rows - acked[0]
                base_bytes = self._bytes - acked[1]
                dropped: list[str] = []
                now = time.time()
                for sink, items in requests:
                    if not items:
                        results.append(0)
                        continue
                    first = self._next_id
                    new, size = rows_of(sink, first, items, now)
                    over_rows = base_rows + len(items) - self.max_rows
                    over_bytes = base_bytes + size - self.max_bytes
                    if over_rows > 0 or over_bytes > 0:
                        if self.overflow == "reject":
                            self._st(sink).rejected += len(items)
                            results.append(OutboxFull(
                                f"outbox {self.path.name} full ({base_rows} rows, {base_bytes} bytes); "
                                f"{len(items)} message(s) refused"))
                            continue
                        n, freed, sinks = self._drop_oldest(max(over_rows, 0), max(over_bytes, 0))
                        base_rows -= n
                        base_bytes -= freed
                        dropped += sinks
                    self._next_id += len(items)
                    rows += new
                    kept.append((sink, first, items))
                    base_rows += len(items)
                    base_bytes += size
                    stored.append((sink, len(items)))
                    results.append(len(items))
                if rows:
                    self._db.executemany("INSERT INTO outbox(id, sink, topic, payload, created, envelope, n) "
                                         "VALUES (?,?,?,?,?,?,?)", rows)
                self._db.execute("COMMIT")
            except BaseException as e:
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except Exception:
                        pass   # the error that failed the write is the one to report
                return [e] * len(requests)
            self.checkpoints.committed()
            self._acked_done(acked)
            self._rows, self._bytes = base_rows, base_bytes
            for sink in dropped:     # deleted under the forwarder: read from disk again
                self._recent.pop(sink, None)
            self._remember(kept)
        for sink in dropped:   # counted once deleted: a delete that failed dropped nothing
            self._st(sink).dropped += 1
        if dropped:
            log.warning("outbox %s over its bound: dropped the %d oldest message(s)", self.path.name, len(dropped))
        for sink, n in stored:
            self._st(sink).stored += n
        return results

    def _remember(self, kept: list[tuple[str, int, list[tuple]]]) -> None:
        """Keep messages just committed (sink, the first's id, their items) in memory, as
        `peek` gives them."""
        for sink, first, items in kept:
            recent = self._recent.get(sink)
            if recent is None:   # older messages of the sink, if any, are below this id
                recent = self._recent[sink] = RecentRows(first, self.recent_rows)
            recent.extend(first, [(first + k, *item) for k, item in enumerate(items)])

    def _drop_oldest(self, rows: int, nbytes: int) -> tuple[int, int, list[str]]:
        """Delete the oldest rows (inside the caller's transaction) until `rows` messages and
        `nbytes` bytes are freed; returns how many messages, how many bytes, and whose each
        message was. A row goes whole: a packed batch may free more than was needed."""
        dropped = freed = 0
        cur = self._db.execute(f"SELECT id, sink, n, {_ROW_SIZE} FROM outbox ORDER BY id")
        ids: list[int] = []
        sinks: list[str] = []
        for row_id, sink, n, size in cur:
            if dropped >= rows and freed >= nbytes:
                break
            ids.append(row_id)
            sinks += [sink] * n
            dropped += n
            freed += size
        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
        return dropped, freed, sinks

    def ack_later(self, sink: str, last: int) -> None:
        """The uplink acknowledged `sink`'s messages with ids up to `last`: they are
        never handed out again (`peek` starts above them), and their rows are deleted with the
        next write of this outbox — an append's transaction, or `flush_acks` when none comes —
        instead of a commit of their own. Only for messages acknowledged whole and in order:
        the forwarder's acknowledged prefix is that, since it hands on every message of the
        sink above its last window, oldest first. A row acknowledged in part is written
        again with the rest (`_delete_acked`). A crash before the delete sends them again
        after the restart (at-least-once, as a crash between ack and delete always did)."""
        with self._lock:
            self._through[sink] = max(self._through.get(sink, 0), last)
            recent = self._recent.get(sink)
            if recent is not None:
                recent.pop_through(last)
            self._acked[sink] = max(self._acked.get(sink, 0), last)

    def pending_acks(self) -> bool:
        """Whether acknowledged rows wait for their delete."""
        return bool(self._acked)

    def flush_acks(self) -> None:
        """Delete the acknowledged rows now (raises `StorageError` while it cannot; they stay
        acknowledged and are tried again with the next write)."""
        with self._lock:
            if not self._acked:
                return
            try:
                self._db.execute("BEGIN")
                acked = self._delete_acked()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except Exception:
                        pass
                raise
            self.checkpoints.committed()
            self._acked_done(acked)
            self._rows -= acked[0]
            self._bytes -= acked[1]

    def _delete_acked(self) -> tuple[int, int, dict[str, int], dict[str, int]]:
        """Inside the caller's transaction: delete the acknowledged messages; returns how
        many, their bytes, the acknowledged ids the deletes were made for, and messages
        deleted per sink, to account for once it committed. Rows whose every message was
        acknowledged go; a row holding acknowledged messages and others (a window ended
        inside it) is written again with the others only, so nothing acknowledged is sent
        again after a clean stop. (Below a sink's acknowledged id there is nothing but what
        is deleted here: the index's range read is that and no more.)"""
        through = dict(self._acked)
        total = size = 0
        per_sink: dict[str, int] = {}
        for sink, last in through.items():
            rows = self._db.execute(f"SELECT id, n, {_ROW_SIZE} FROM outbox WHERE sink = ? AND id <= ? ORDER BY id",
                                    (sink, last)).fetchall()
            n = nbytes = 0
            if rows and rows[-1][0] + rows[-1][1] - 1 > last:   # the last is partly acknowledged
                n, nbytes = self._trim(sink, rows.pop()[0], last)
            if rows:
                self._db.execute("DELETE FROM outbox WHERE sink = ? AND id BETWEEN ? AND ?",
                                 (sink, rows[0][0], rows[-1][0]))
                n += sum(r[1] for r in rows)
                nbytes += sum(r[2] for r in rows)
            total += n
            size += nbytes
            per_sink[sink] = n
        return total, size, through, per_sink

    def _trim(self, sink: str, row_id: int, last: int) -> tuple[int, int]:
        """Write row `row_id` again without its messages up to id `last`; returns how many
        messages and bytes that removed."""
        row_id, n, topic, payload, envelope, created, size = self._db.execute(
            f"SELECT id, n, topic, payload, envelope, created, {_ROW_SIZE} FROM outbox WHERE id = ?",
            (row_id,)).fetchone()
        rest = [m[1:] for m in messages((row_id, n, topic, payload, envelope)) if m[0] > last]
        new, new_size = rows_of(sink, last + 1, rest, created)
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        self._db.executemany("INSERT INTO outbox(id, sink, topic, payload, created, envelope, n) "
                             "VALUES (?,?,?,?,?,?,?)", new)
        return n - len(rest), size - new_size

    def _acked_done(self, acked: tuple[int, int, dict[str, int], dict[str, int]]) -> None:
        for sink, last in acked[2].items():
            if self._acked.get(sink) == last:
                del self._acked[sink]
            self._st(sink).sent += acked[3][sink]

    def peek(self, sink: str, limit: int = 100, after: int = 0) -> list[tuple]:
        """The oldest stored messages of `sink` with an id above `after`: (id, topic,
        payload), and the envelope bytes as a fourth item where one was stored."""
        return self.peek_window(sink, limit, after)[0]

    def peek_window(self, sink: str, limit: int = 100, after: int = 0, *,
                    disk_limit: int | None = None) -> tuple[list[tuple], bool]:
        """`peek`, and whether the messages came from memory (appended lately, no SQLite
        read), in one look under the lock. With `disk_limit`, a read that has to go to
        SQLite takes at most that many messages (what the caller reads where it is: the
        forwarder on the event loop); one from memory takes `limit`."""
        with self._lock:
            after = max(after, self._through.get(sink, 0))   # acknowledged: never again
            recent = self._recent.get(sink)
            if recent is not None and recent.covers(after):
                return recent.after(after, limit), True
            if disk_limit is not None:
                limit = min(limit, disk_limit)
            # the row holding message `after + 1` starts at most ROW_MESSAGES - 1 below it
            rows = self._db.execute("SELECT id, n, topic, payload, envelope FROM outbox WHERE sink = ? "
                                    "AND id > ? AND id + n - 1 > ? ORDER BY id LIMIT ?",
                                    (sink, after - ROW_MESSAGES, after, limit)).fetchall()
        out = [m for row in rows for m in messages(row) if m[0] > after]
        return out[:limit], False

    def backlog(self, sink: str | None = None) -> int:
        """Messages stored (those of a row partly acknowledged count until it is deleted)."""
        with self._lock:
            if sink is None:
                return self._rows
            return self._db.execute("SELECT coalesce(sum(n), 0) FROM outbox WHERE sink = ?", (sink,)).fetchone()[0]

    def close(self) -> None:
        """Close the file, deleting the acknowledged rows first where the disk lets it (else
        they are sent again after a restart: at-least-once)."""
        try:
            self.flush_acks()
        except Exception as e:  # noqa: BLE001 - closing goes on; the rows are only sent again
            log.warning("outbox %s: acknowledged rows not deleted at close (sent again): %s", self.path.name, e)
        self.checkpoints.close()
        self._worker.close()
        with self._lock:
            self._db.close()
