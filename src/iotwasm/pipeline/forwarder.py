"""The outbox's forwarder: drains one sink's rows to its uplink, in order, acknowledged first.

Split from `outbox` (the SQLite table and its group commit); `outbox` re-exports these names.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from ..backoff import Backoff
from ..breaker import CLOSED, CircuitBreaker
from ..errors import IotwasmError, SinkRejected
from ..supervise import StorageHold, cancel_and_wait, supervise, until_beat
from .worker import resolve

if TYPE_CHECKING:
    from .outbox import Outbox

log = logging.getLogger("iotwasm.outbox")

#: hands a window of (topic, payload) to the uplink in order and returns what confirms it:
#: one result per message, None once the uplink acknowledged it, else the error
SubmitWindow = Callable[[list[tuple[str, bytes]]], Awaitable[Awaitable[list[Exception | None]]]]
#: where a message the uplink refused for good goes (topic, payload, why): a dead letter
Reject = Callable[[str, bytes, SinkRejected], Awaitable[None]]

#: SQLite work up to this many rows runs on the event loop: a thread hop costs more
INLINE_ROWS = 16

#: acknowledged rows are deleted with the next append's transaction; a forwarder idle this
#: long deletes them in one of their own
ACK_FLUSH_S = 0.05

#: an idle forwarder looks at its outbox this often unnotified (a safety net: appends notify
#: it), on the beat of the node's other upkeep (`until_beat`): no wake-up of its own
POLL_S = 1.0


async def send_in_order(send: Callable[[str, bytes], Awaitable[None]],
                        items: list[tuple[str, bytes]]) -> list[Exception | None]:
    """Deliver a window one message after the other (for uplinks where concurrent sends could
    arrive out of order); the first failure fails the rest, which stay for a retry in order.
    A message the uplink refused for good (`SinkRejected`) does not: it has its answer, and
    the next one goes."""
    results: list[Exception | None] = []
    for topic, payload in items:
        try:
            await send(topic, payload)
        except SinkRejected as e:
            results.append(e)
            continue
        except IotwasmError as e:
            return results + [e] * (len(items) - len(results))
        results.append(None)
    return results


def _failed(confirm: asyncio.Future) -> bool:
    """Whether a window's confirmation already came back with a failure (a refusal for good
    is an answer, not a failure)."""
    if not confirm.done():
        return False
    if confirm.cancelled() or confirm.exception() is not None:
        return True
    return any(r is not None and not isinstance(r, SinkRejected) for r in confirm.result())


def _clean(confirm: asyncio.Future) -> bool:
    """Whether a window's confirmation is in with every message acknowledged."""
    return (confirm.done() and not confirm.cancelled() and confirm.exception() is None
            and all(r is None for r in confirm.result()))


class Forwarder:
    """Drains one sink's outbox to its uplink, in order, deleting only acknowledged messages.

    It runs as a supervised task: an unexpected failure restarts it (logged once, with
    backoff), and what was in flight is sent again. A delete that fails on storage (the WAL
    cannot grow on a full disk) is held and retried in place — the acknowledged rows are not
    sent again meanwhile — and `storage.error` says why until it went through.

    A message the uplink refused for good (`SinkRejected`: a constraint the row breaks, a 4xx)
    goes to `reject` — a dead letter — and the messages behind it go on; its row is deleted
    only after `reject` returned (held and retried while that fails on storage).

    With a `breaker`, failed windows count as its failures; once it opens, nothing is sent
    until it lets a probe through — a window of one message — whose outcome closes it again
    or keeps it open for longer. The messages wait in the outbox meanwhile: none is lost or
    dead-lettered, and the uplink is not hammered by every retry.
    """

    def __init__(self, outbox: Outbox, sink: str, submit: SubmitWindow, *, batch: int = 100,
                 windows: int = 4, min_backoff: float = 0.1, max_backoff: float = 5.0,
                 breaker: CircuitBreaker | None = None, reject: Reject | None = None):
        self.outbox = outbox
        self.sink = sink
        self.submit = submit
        self.batch = batch
        self.windows = windows
        #: waits between attempts after the uplink failed a window
        self.backoff = Backoff(min_backoff, max_backoff)
        self.storage = StorageHold(f"outbox forwarder {sink}", log)
        #: set by `notify`; the idle forwarder waits on `_waiter` (a bare future and a timer:
        #: `asyncio.wait_for` made a task per wait, and at moderate rates it waits per message)
        self._woken = False
        self._waiter: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self.last_error: str | None = None
        self.breaker = breaker
        #: messages the uplink refused for good go here and count as done (their rows are
        #: deleted once it returned); without it such a refusal is a failure like any other
        self.reject = reject
        self.rejected = 0

    def start(self) -> None:
        self._task = supervise(f"outbox forwarder {self.sink}", self._run, log=log,
                               backoff=Backoff(self.backoff.initial, self.backoff.maximum))

    def notify(self) -> None:
        """New rows were appended: deliver them now rather than at the next poll."""
        self._woken = True
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(True)

    async def _idle(self, timeout: float) -> bool:
        """Wait for `notify` up to `timeout` seconds; False when the time ran out."""
        if self._woken:
            self._woken = False
            return True
        loop = asyncio.get_running_loop()
        w = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, resolve, w, False)
        try:
            return await w
        finally:
            timer.cancel()
            self._waiter = None
            self._woken = False

    async def stop(self, drain_timeout: float = 0.0) -> None:
        if drain_timeout > 0:
            deadline = time.monotonic() + drain_timeout
            while self.outbox.backlog(self.sink) and time.monotonic() < deadline:
                self.notify()
                await asyncio.sleep(0.01)
                if self.outbox.pending_acks():
                    try:
                        await self._db(self.outbox.flush_acks, rows=1)
                    except IotwasmError:
                        pass   # the disk is full: they stay acknowledged, deleted later
        await cancel_and_wait(self._task)

    async def _db(self, fn, *args, rows: int):
        if rows <= INLINE_ROWS:
            return fn(*args)
        return await self.outbox.off_loop(fn, *args)

    async def _peek(self, after: int, busy: bool) -> list[tuple]:
        """The next window. With nothing in flight (a quiet uplink) it is read on the loop;
        with windows in flight the first `INLINE_ROWS` rows are read on the loop too — at
        moderate rates that is all there is, and a thread hop per message cost more than the
        read — and only a full first read fetches the rest of the window on a thread. Rows
        the outbox still holds in memory (appended lately, `outbox_recent`) are read whole
        on the loop: one look at the outbox says which it is (`Outbox.peek_window`)."""
        if not busy or self.batch <= INLINE_ROWS:
            return self.outbox.peek(self.sink, self.batch, after)
        rows, from_memory = self.outbox.peek_window(self.sink, self.batch, after, disk_limit=INLINE_ROWS)
        if not from_memory and len(rows) == INLINE_ROWS:
            rows += await self.outbox.off_loop(self.outbox.peek, self.sink, self.batch - INLINE_ROWS, rows[-1][0])
        return rows

    async def _rejected(self, row: tuple, why: SinkRejected) -> None:
        """Hand a refused message to `reject` (held while that fails on storage)."""
        reject = self.reject
        assert reject is not None
        log.warning("outbox %s: %s", self.sink, why)
        payload = why.payload if why.payload is not None else row[2]
        await self.storage.run(functools.partial(reject, row[1], payload, why))
        self.rejected += 1

    async def _run(self) -> None:
        """Up to `windows` windows are on their way at once (the next is sent while the
        uplink still acknowledges the last); rows are deleted window by window, oldest
        first, and only the acknowledged prefix: after a failure everything from the first
        unacknowledged message is sent again, in order (at-least-once)."""
        after = 0  # highest id handed to the uplink
        inflight: collections.deque[tuple[list[tuple], asyncio.Future]] = collections.deque()
        try:
            while True:
                rows = []
                # nothing goes out after a window that already failed: it would overtake
                # that window's messages, which are sent again first
                if len(inflight) < self.windows and not any(_failed(c) for _, c in inflight):
                    br = self.breaker
                    if br is None or br.state == CLOSED:
                        rows = await self._peek(after, bool(inflight))
                    elif not inflight:   # open or half-open: one probe message at a time
                        rows = await self._db(self.outbox.peek, self.sink, 1, after, rows=1)
                        if rows and not br.allow():
                            await asyncio.sleep(max(0.01, br.wait_s()))
                            continue
                if rows:
                    confirm = await self.submit([r[1:] for r in rows])
                    after = rows[-1][0]
                    inflight.append((rows, asyncio.ensure_future(confirm)))
                    continue
                if not inflight:
                    pending = self.outbox.pending_acks()
                    if not await self._idle(ACK_FLUSH_S if pending else until_beat(POLL_S)) and pending:
                        # no append took the deletes along: they go alone
                        await self.storage.run(functools.partial(self._db, self.outbox.flush_acks, rows=1))
                    continue
                window, confirm = inflight.popleft()
                results = await confirm
                done: list[int] = []
                failure: Exception | None = None
                for row, res in zip(window, results):
                    if res is not None:
                        if isinstance(res, SinkRejected) and self.reject is not None:
                            await self._rejected(row, res)
                        else:
                            failure = res
                            break
                    done.append(row[0])
                # windows confirmed meanwhile are deleted with this one (one commit for all)
                while failure is None and inflight and _clean(inflight[0][1]):
                    done.extend(r[0] for r in inflight.popleft()[0])
                if done:   # deleted with the next append, or by the flush below when idle
                    self.outbox.ack_later(self.sink, done[0], done[-1])
                if self.breaker is not None:
                    if failure is None:
                        self.breaker.success()
                    else:
                        self.breaker.failure(failure)
                if failure is not None:
                    # later windows are abandoned (their rows stay and are sent again)
                    for _, later in inflight:
                        later.cancel()
                    inflight.clear()
                    after = 0
                    self.outbox._st(self.sink).send_failures += 1
                    self.last_error = str(failure)
                    if self.breaker is None or self.breaker.state == CLOSED:
                        await asyncio.sleep(self.backoff.next())
                    # else: the breaker decides when the next (probe) window goes
                else:
                    self.backoff.reset()
                    self.last_error = None
        finally:
            for _, later in inflight:
                later.cancel()
