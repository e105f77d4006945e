"""Subscriptions: one handler on a topic filter, and how a message it took is settled.

Split from `bus` (the interface every bus implements); `bus` re-exports it. It stands alone
because it is the per-message path every bus shares: each message a bus delivers passes a
`Subscription`, through its queue or its fast path, and its outcome goes back to the bus
(`Done`) from the handler's return, a future it returned, or a `Settlement`. It knows no bus
but by the attributes a subscription reaches (`stats`, `_subs`, `_unsubscribe`, `_detach`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Union

from ..message import Message
from ..supervise import cancel_and_wait

if TYPE_CHECKING:
    from .bus_interface import Bus

log = logging.getLogger("iotwasm.messaging")

#: a message handler; it may return a future to settle the message later (see `Subscription`)
Handler = Callable[[Message], Awaitable[asyncio.Future[Any] | None]]

#: what a subscription tells its bus about a message it took from the queue: handled; the
#: handler failed; discarded on purpose (acknowledged all the same); given back unprocessed
#: (not acknowledged: a broker with a session or a durable consumer delivers it again)
OK, FAILED, DROPPED, RELEASED = "ok", "failed", "dropped", "released"
Done = Callable[[str], Union[None, Awaitable[None]]]


class Settlement:
    """What became of a message a subscription's fast path (`Subscription.fast`) took,
    reported once, later: ``set_result(True)`` handled (False: failed), ``set_exception``
    failed, ``cancel()`` given back unprocessed. The synchronous twin of the future a handler
    may return: a future's callbacks run a loop turn later, each through the loop's ready
    queue, which on a busy route was a turn and a handle per message before the broker heard
    of it. The report goes straight to the bus instead (an MQTT PUBACK is queued at once)."""

    __slots__ = ("_report", "_done", "_outcome")

    def __init__(self, report: Callable[[Done | None, str], None], done: Done | None = None):
        """`report(done, outcome)` is called once, with `done` as given here."""
        self._report = report
        self._done = done
        self._outcome: str | None = None

    def done(self) -> bool:
        return self._outcome is not None

    def cancelled(self) -> bool:
        return self._outcome == RELEASED

    def _settle(self, outcome: str) -> bool:
        if self._outcome is not None:
            return False
        self._outcome = outcome
        self._report(self._done, outcome)
        return True

    def set_result(self, ok: Any) -> None:
        self._settle(FAILED if ok is False else OK)

    def set_exception(self, exc: BaseException) -> None:
        self._settle(FAILED)

    def cancel(self) -> bool:
        return self._settle(RELEASED)


#: a synchronous way into a subscription's consumer: take the message now and report what
#: became of it through the `Settlement` (True), or decline (False: it is queued as usual)
FastPath = Callable[[Message, Settlement], bool]


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class Subscription:
    """One handler attached to a topic filter.

    Messages wait in a queue of their own and the handler sees them one at a time, in order.
    `pending` counts the messages that arrived but whose handler has not finished;
    `wait_idle` waits until it is zero.

    Settling later: a handler may return an `asyncio.Future` instead of None. The message is
    then acknowledged to the broker (QoS 1 PUBACK, JetStream ack) only when that future is
    done, while the handler already takes the next message. A pipeline uses this to
    acknowledge a message once its results are safe, not when it was merely queued. A future
    whose result is False counts as a failure (JetStream redelivers); a cancelled one gives
    the message back unprocessed (RELEASED: not acknowledged).

    Stopping: `unsubscribe` ends the subscription at the broker too. `detach` only stops
    taking: messages already queued here still go to the handler (for a grace period), and
    the broker-side state stays — an MQTT persistent session keeps the subscription and
    queues what is published meanwhile, a JetStream durable consumer keeps its position and
    redelivers what was not acknowledged. A process that stops and comes back detaches.
    """

    def __init__(self, bus: "Bus", topic_filter: str, handler: Handler, *, qos: int = 0,
                 queue: str | None = None, durable: str | None = None, maxsize: int = 0):
        self.bus = bus
        self.filter = topic_filter
        self.handler = handler
        self.qos = qos
        self.queue = queue
        self.durable = durable
        #: messages handed to the handler / handler returned normally / handler raised
        self.delivered = 0
        self.handled = 0
        self.failed = 0
        self._queue: asyncio.Queue[tuple[Message, Done | None]] = asyncio.Queue(maxsize)
        self._busy = False
        self._settling = 0  # handled, but waiting for the future the handler returned
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: acknowledgements running on their own (`_settled`), held so none is collected
        #: before it is done
        self._acks: set[asyncio.Future[None]] = set()
        self.active = True
        #: set by a consumer that can take a message without waiting (a route whose lane has
        #: room): with nothing queued or running ahead of it, a message goes there at once,
        #: without the queue and a task switch; declined, it is queued for the handler
        self.fast: FastPath | None = None

    # ---- consumer side

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"iotwasm-sub:{self.filter}"
        )

    async def _run(self) -> None:
        while True:
            msg, done = await self._queue.get()
            self._busy = True
            try:
                ok, later = await self._call(msg)
                if later is not None:
                    self._settling += 1
                    later.add_done_callback(functools.partial(self._settled, done))
                elif done is not None:
                    await _maybe_await(done(OK if ok else FAILED))
            except Exception:  # a failing ack must not stop the subscription
                log.exception("acknowledging a message on %r failed", self.filter)
                self.bus.stats.errors += 1
            finally:
                self._busy = False
                self._progress.set()

    def _settled(self, done: Done | None, later: asyncio.Future[Any]) -> None:
        if later.cancelled():
            outcome = RELEASED
        elif later.exception() is not None or later.result() is False:
            outcome = FAILED
        else:
            outcome = OK
        self._report(done, outcome)

    def _report(self, done: Done | None, outcome: str) -> None:
        self._settling -= 1
        self._progress.set()
        if done is None:
            return
        try:
            result = done(outcome)
            if result is not None and inspect.isawaitable(result):   # a bus's own acks are plain calls
                ack = asyncio.ensure_future(result)
                self._acks.add(ack)
                ack.add_done_callback(self._acks.discard)
        except Exception:
            log.exception("acknowledging a message on %r failed", self.filter)
            self.bus.stats.errors += 1

    async def _call(self, msg: Message) -> tuple[bool, asyncio.Future[Any] | None]:
        self.delivered += 1
        try:
            result = await _maybe_await(self.handler(msg))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed += 1
            self.bus.stats.errors += 1
            log.warning("handler for %r failed on %r: %s: %s", self.filter, msg.topic,
                        type(exc).__name__, exc)
            return False, None
        self.handled += 1
        return True, result if isinstance(result, asyncio.Future) else None

    # ---- producer side (the bus)

    def _taken_now(self, msg: Message, done: Done | None) -> bool:
        """Hand `msg` to the fast path when one is set and nothing is ahead of it (order
        holds: a queued or running message goes first); True when it took the message."""
        fast = self.fast
        if fast is None or self._busy or not self._queue.empty():
            return False
        self._settling += 1   # until the settlement reports
        settlement = Settlement(self._report, done)
        try:
            taken = fast(msg, settlement)
        except Exception as exc:  # as a failing handler: counted, the message fails
            self.delivered += 1
            self.failed += 1
            self.bus.stats.errors += 1
            log.warning("handler for %r failed on %r: %s: %s", self.filter, msg.topic,
                        type(exc).__name__, exc)
            settlement.set_exception(exc)
            return True
        if not taken:
            self._settling -= 1
            return False
        self.delivered += 1
        self.handled += 1
        return True

    def offer(self, msg: Message, done: Done | None = None) -> bool:
        """Queue without waiting; False when the queue is full."""
        if self._taken_now(msg, done):
            return True
        try:
            self._queue.put_nowait((msg, done))
        except asyncio.QueueFull:
            return False
        return True

    async def put(self, msg: Message, done: Done | None = None) -> None:
        """Queue, waiting while the queue is full (backpressure)."""
        if not self._taken_now(msg, done):
            await self._queue.put((msg, done))

    def queued(self) -> int:
        return self._queue.qsize()

    def _upstream_pending(self) -> int:
        """Messages held for this subscription before its queue (e.g. in a client library)."""
        return 0

    @property
    def pending(self) -> int:
        return (self._queue.qsize() + (1 if self._busy else 0) + self._settling
                + self._upstream_pending())

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every message that arrived so far has been handled."""
        try:
            async with asyncio.timeout(timeout):
                while self.pending:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            raise TimeoutError(
                f"subscription {self.filter!r} still has {self.pending} message(s) pending "
                f"after {timeout}s"
            ) from None

    def pause(self) -> None:
        """Take no more messages from the bus; those already queued still go to the handler."""
        self.active = False

    def _unhanded(self) -> int:
        """Messages that arrived but whose handler has not returned yet."""
        return self._queue.qsize() + (1 if self._busy else 0) + self._upstream_pending()

    async def handed_on(self, grace: float = 5.0) -> bool:
        """Wait until every message that arrived went to the handler and it returned (up to
        `grace` seconds); True when none is left."""
        try:
            async with asyncio.timeout(grace):
                while self._unhanded() and self._task is not None and not self._task.done():
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            pass
        return not self._unhanded()

    async def stop(self, *, grace: float = 5.0, drop_queued: bool = False,
                   release_queued: bool = False) -> None:
        """Stop the worker: let the running handler finish (up to `grace` seconds), then
        cancel. Queued messages are reported as DROPPED when `drop_queued`, as RELEASED when
        `release_queued`, else left alone (not acknowledged, so a broker with a session
        redelivers them)."""
        self.active = False
        if self._task is None:
            return
        if self._busy:
            try:
                async with asyncio.timeout(grace):
                    while self._busy:
                        self._progress.clear()
                        await self._progress.wait()
            except TimeoutError:
                log.warning("handler for %r still running after %ss; cancelled", self.filter, grace)
        await cancel_and_wait(self._task)
        self._task = None
        outcome = DROPPED if drop_queued else RELEASED if release_queued else None
        while not self._queue.empty():
            _msg, done = self._queue.get_nowait()
            if outcome is not None and done is not None:
                try:
                    await _maybe_await(done(outcome))
                except Exception:
                    log.exception("releasing a queued message on %r failed", self.filter)
        self._progress.set()

    async def unsubscribe(self) -> None:
        """Stop receiving, here and at the broker. Idempotent."""
        if self.active or self in self.bus._subs:
            await self.bus._unsubscribe(self)

    async def detach(self, *, grace: float = 5.0) -> None:
        """Stop receiving here but keep what the broker holds for this subscriber (see the
        class doc): queued messages still go to the handler for up to `grace` seconds, what
        is left then is given back unacknowledged. Idempotent."""
        if self.active or self in self.bus._subs:
            await self.bus._detach(self, grace)

    def __repr__(self) -> str:
        extra = "".join(
            f" {k}={v!r}" for k, v in (("queue", self.queue), ("durable", self.durable)) if v
        )
        return f"<Subscription {self.filter!r} qos={self.qos}{extra} pending={self.pending}>"
