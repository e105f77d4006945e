"""Store-and-forward: an SQLite outbox in front of an uplink.

Messages for an uplink are appended to the outbox first and deleted only after the broker
acknowledged them (MQTT PUBACK, JetStream ack). While the uplink is down they accumulate; when
it returns they are delivered in the order they were stored. A kill -9 of the node loses
nothing that was stored: SQLite in WAL mode has it on disk before `append` returns.

Delivery is at-least-once: a crash between the broker's ack and the delete re-sends that
message after restart. (A sample gateway that marks rows sent *before* publishing loses data
on every outage; this one never marks a row before the ack.)

The outbox is bounded by rows and bytes, with an explicit overflow policy:
``drop-oldest`` (default: keep the freshest data, count what was dropped) or ``reject``
(refuse new messages, count them; the caller keeps them).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..errors import ConfigError
from ..sqlite import Checkpointer, open_db
from .forwarder import ACK_FLUSH_S, INLINE_ROWS, Forwarder, SubmitWindow, send_in_order
from .group_commit import GroupCommit
from .outbox_native import NativeWriter, use_native
from .outbox_recent import RECENT_ROWS, RecentRows
from .outbox_writes import AckedRange, OutboxFull, OutboxStats, OutboxWrites
from .worker import Worker

__all__ = ["ACK_FLUSH_S", "INLINE_ROWS", "Forwarder", "GroupCommit", "Outbox", "OutboxFull", "OutboxStats",
           "SubmitWindow", "send_in_order"]

T = TypeVar("T")

log = logging.getLogger("iotwasm.outbox")

#: how long a write waits for another connection's (another process's) write lock
BUSY_TIMEOUT_S = 30.0


#: ids are given by the outbox (`Outbox._next_id`, above every id the file ever held), not by
#: AUTOINCREMENT, whose sqlite_sequence row made every commit write one page more; a file made
#: before keeps its AUTOINCREMENT table, which takes the given ids all the same
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, sink TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, created REAL NOT NULL, envelope BLOB);
CREATE INDEX IF NOT EXISTS outbox_sink ON outbox(sink, id);
"""


class Outbox(OutboxWrites):
    """A durable FIFO per sink name, shared by every sink of a node (one SQLite file)."""

    def __init__(self, path: str | Path, *, max_rows: int = 1_000_000, max_bytes: int = 512 * 2**20,
                 overflow: str = "drop-oldest", writes: str = "auto"):
        if overflow not in ("drop-oldest", "reject"):
            raise ConfigError(f"outbox overflow policy {overflow!r} is not drop-oldest or reject")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.overflow = overflow
        self._lock = threading.Lock()
        native = use_native(writes)
        self._db = open_db(self.path, synchronous="NORMAL", schema=SCHEMA, what="outbox",
                           timeout_s=BUSY_TIMEOUT_S)
        #: commits happen on the event loop (small groups): checkpoints never do
        self.checkpoints = Checkpointer(self._db)
        self.stats: dict[str, OutboxStats] = {}
        # an outbox written before messages had envelopes gains the column (NULL: none)
        if "envelope" not in {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}:
            self._db.execute("ALTER TABLE outbox ADD COLUMN envelope BLOB")
        rows, size = self._db.execute(
            "SELECT count(*), coalesce(sum(length(payload) + length(topic) "
            "+ coalesce(length(envelope), 0)), 0) FROM outbox").fetchone()
        self._rows, self._bytes = rows, size
        self._writer: GroupCommit | None = None
        #: the thread that runs this outbox's larger reads and writes off the event loop
        #: (`off_loop`): one long-lived thread with a cheap hand-off, where the shared default
        #: executor cost a work item, a chained future and a wake of one of several threads
        self._worker = Worker(f"outbox-{self.path.stem}")
        #: per sink: the acknowledged rows not deleted yet, and the highest acknowledged id
        #: (`ack_later`)
        self._acked: dict[str, AckedRange] = {}
        self._through: dict[str, int] = {}
        #: per sink: the rows appended lately, for the forwarder (`outbox_recent`), at most
        #: `recent_rows` of them
        self._recent: dict[str, RecentRows] = {}
        self.recent_rows = RECENT_ROWS
        seq = 0
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
            seq = self._db.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence "
                                   "WHERE name = 'outbox'").fetchone()[0]
        top = self._db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
        self._next_id = max(seq, top) + 1
        #: writes the common group commit without the GIL (outbox_native; `writes`: "auto",
        #: "native" or "python"); the rest goes through `_db`
        self._native = self._open_native(writes == "native") if native else None

    def _open_native(self, required: bool) -> NativeWriter | None:
        """The native writer's connection; when it cannot be opened and was not required,
        None (every write goes through Python's sqlite3), said once."""
        try:
            return NativeWriter(self.path, BUSY_TIMEOUT_S)
        except OSError as e:
            if required:
                self.checkpoints.close()
                self._db.close()
                raise
            log.warning("outbox %s: every write through Python's sqlite3: %s", self.path.name, e)
            return None

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

    def append(self, sink: str, items: list[tuple]) -> int:
        """Store (topic, payload) or (topic, payload, envelope bytes) items durably; returns
        how many were stored. The envelope is the sink's to encode; it counts toward the
        byte bound like the rest."""
        res = self.append_many([(sink, items)])[0]
        if isinstance(res, BaseException):
            raise res
        return res

    def ack_later(self, sink: str, first: int, last: int) -> None:
        """The uplink acknowledged `sink`'s rows with ids from `first` to `last`: they are
        never handed out again (`peek` starts above them), and deleted with the next write
        of this outbox — an append's transaction, or `flush_acks` when none comes — instead
        of a commit of their own. Only for a range acknowledged whole and in order: the
        forwarder's acknowledged prefix is one, since it hands on every row of the sink
        above its last window, oldest first. A crash before the delete sends them again
        after the restart (at-least-once, as a crash between ack and delete always did)."""
        with self._lock:
            self._through[sink] = max(self._through.get(sink, 0), last)
            recent = self._recent.get(sink)
            known = recent.pop_through(first, last) if recent is not None else None
            size = (known[0], known[1]) if known is not None and known[2] else None
            before = self._acked.get(sink)
            if before is None:
                self._acked[sink] = AckedRange(first, last, size)
            else:
                self._acked[sink] = AckedRange(min(before.lo, first), max(before.hi, last),
                                          None if before.size is None or size is None else
                                          (before.size[0] + size[0], before.size[1] + size[1]))

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

    def peek(self, sink: str, limit: int = 100, after: int = 0) -> list[tuple]:
        """The oldest stored messages of `sink` with an id above `after`: (id, topic,
        payload), and the envelope bytes as a fourth item where one was stored."""
        return self.peek_window(sink, limit, after)[0]

    def peek_window(self, sink: str, limit: int = 100, after: int = 0, *,
                    disk_limit: int | None = None) -> tuple[list[tuple], bool]:
        """`peek`, and whether the rows came from memory (appended lately, no SQLite read),
        in one look under the lock. With `disk_limit`, a read that has to go to SQLite takes
        at most that many rows (what the caller reads where it is: the forwarder on the
        event loop); one from memory takes `limit`."""
        with self._lock:
            after = max(after, self._through.get(sink, 0))   # acknowledged: never again
            recent = self._recent.get(sink)
            if recent is not None and recent.covers(after):
                return recent.after(after, limit), True
            if disk_limit is not None:
                limit = min(limit, disk_limit)
            rows = self._db.execute("SELECT id, topic, payload, envelope FROM outbox WHERE sink = ? "
                                    "AND id > ? ORDER BY id LIMIT ?", (sink, after, limit)).fetchall()
        return [r if r[3] is not None else r[:3] for r in rows], False

    def ack(self, sink: str, ids: list[int]) -> None:
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self._lock:
            self._recent.pop(sink, None)   # rows leave out of order: read from disk again
            self._db.execute("BEGIN")
            cur = self._db.execute(
                f"SELECT coalesce(sum(length(payload) + length(topic) + coalesce(length(envelope), 0)), 0), count(*) FROM outbox "
                f"WHERE id IN ({marks})", ids)
            size, n = cur.fetchone()
            self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)
            self._db.execute("COMMIT")
            self._rows -= n
            self._bytes -= size
        self._st(sink).sent += n

    def ack_through(self, sink: str, first: int, last: int) -> None:
        """Delete `sink`'s rows with ids from `first` to `last`: a range delete on the
        (sink, id) index instead of one lookup per id. Only for a range the uplink
        acknowledged whole — the forwarder's acknowledged prefix is one, since it hands on
        every row of the sink above its last window, oldest first."""
        with self._lock:
            self._recent.pop(sink, None)
            self._db.execute("BEGIN")
            size, n = self._db.execute(
                "SELECT coalesce(sum(length(payload) + length(topic) + coalesce(length(envelope), 0)), 0), "
                "count(*) FROM outbox WHERE sink = ? AND id BETWEEN ? AND ?", (sink, first, last)).fetchone()
            self._db.execute("DELETE FROM outbox WHERE sink = ? AND id BETWEEN ? AND ?", (sink, first, last))
            self._db.execute("COMMIT")
            self._rows -= n
            self._bytes -= size
        self._st(sink).sent += n

    def backlog(self, sink: str | None = None) -> int:
        with self._lock:
            if sink is None:
                return self._rows
            return self._db.execute("SELECT count(*) FROM outbox WHERE sink = ?", (sink,)).fetchone()[0]

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
            if self._native is not None:
                self._native.close()
                self._native = None
            self._db.close()
