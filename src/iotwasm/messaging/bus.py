"""The message bus interface and the in-process bus.

A `Bus` connects iotwasm to where messages come from and go to. Every bus is used from one
asyncio event loop: `publish` and `subscribe` are coroutines, and handlers are called on that
loop (one message at a time per subscription, in arrival order). This module knows no
transport: the MQTT and NATS buses, and `open_bus` that picks one from a URL, live beside it
(`transports.py`), so the interface imports none of them.

Delivery guarantees, reconnect behaviour and URL forms are described in docs/messaging.md.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, TypeVar, Union

from ..errors import ConfigError
from ..message import Envelope, Message
from ..supervise import cancel_and_wait
from .errors import BrokerUnavailable
from .topics import OrderKey, matches, validate_filter, validate_topic

log = logging.getLogger("iotwasm.messaging")

#: a message handler; it may return a future to settle the message later (see `Subscription`)
Handler = Callable[[Message], Awaitable[asyncio.Future[Any] | None]]
StateCallback = Callable[["BusState"], Union[None, Awaitable[None]]]

#: what a subscription tells its bus about a message it took from the queue: handled; the
#: handler failed; discarded on purpose (acknowledged all the same); given back unprocessed
#: (not acknowledged: a broker with a session or a durable consumer delivers it again)
OK, FAILED, DROPPED, RELEASED = "ok", "failed", "dropped", "released"
Done = Callable[[str], Union[None, Awaitable[None]]]
#: one message of a batch (`Bus.publish_many`, `Bus.send_many`): topic and payload, and on a
#: bus that carries envelopes (`Bus.envelopes`) optionally the envelope
Outgoing = Union[tuple[str, bytes], tuple[str, bytes, Envelope | None]]

_T = TypeVar("_T")


class BusState(str, enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Will:
    """MQTT last will: published by the broker when the client vanishes without a clean close."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False

    def __post_init__(self) -> None:
        validate_topic(self.topic)
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"will qos must be 0, 1 or 2, not {self.qos!r}")


@dataclass(slots=True)
class BusStats:
    #: messages the broker took (qos 0: handed to the connection; qos >= 1: acknowledged)
    published: int = 0
    #: messages that arrived from the broker (before fan-out to subscriptions)
    received: int = 0
    #: handler exceptions and transport errors
    errors: int = 0
    #: successful connections after the first one
    reconnects: int = 0
    #: qos 0 messages dropped because a subscription's queue was full
    dropped: int = 0


def as_payload(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes, not {type(payload).__name__}")


def check_qos(qos: int) -> int:
    if qos not in (0, 1, 2):
        raise ConfigError(f"qos must be 0, 1 or 2, not {qos!r}")
    return qos


def settled(value: _T) -> asyncio.Future[_T]:
    """An awaitable already done with `value`. Two-step calls (hand on now, confirm later:
    `Bus.send_many`, a sink's `submit`) return it when both steps happened at once."""
    fut: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


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
            if inspect.isawaitable(result):
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


class Bus(abc.ABC):
    """Publish/subscribe on MQTT-style topics. See docs/messaging.md."""

    #: short name used in messages ("memory", "mqtt", "nats", "ingress")
    scheme = "bus"
    #: True when a subscription sees only its share of the matching messages (a worker behind
    #: an ingress, `WorkerBus`): a consumer that needs all of them (a rule's window over every
    #: device) cannot run on it
    partitioned = False
    #: whether `publish` takes an `envelope` (a message's headers and MQTT 5 properties) and
    #: `send_many` items of ``(topic, payload, envelope)``; a sink passes envelopes on only
    #: to a bus that carries them
    envelopes = False

    def __init__(self) -> None:
        self.stats = BusStats()
        self._state_callbacks: list[StateCallback] = []
        self._subs: list[Subscription] = []
        #: state callbacks' coroutines (`_emit_state`), held so none is collected before it
        #: is done
        self._state_tasks: set[asyncio.Future[None]] = set()
        self._closed = False

    # ---- lifecycle

    @abc.abstractmethod
    async def connect(self, *, timeout: float = 10.0) -> None:
        """Connect; raise `BrokerUnavailable` if no connection is made within `timeout`."""

    @abc.abstractmethod
    async def close(self, *, timeout: float = 5.0) -> None:
        """Flush what was published, stop the subscriptions and disconnect cleanly."""

    async def flush(self, *, timeout: float = 5.0) -> None:
        """Wait until everything published so far has left (and, for qos >= 1, was confirmed).

        Not abstract on purpose: a bus whose `publish` returns only once the message is gone
        has nothing left to wait for, and this default says so. Buses that buffer override it."""
        return None

    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> "Bus":
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ---- messages

    @abc.abstractmethod
    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                      timeout: float | None = None) -> None:
        """Publish one message.

        qos 0 returns once the message is handed to the connection; qos 1 returns only after
        the broker acknowledged it. Raises `BrokerUnavailable` when not connected and
        `PublishTimeout` when no acknowledgement came in time; the message is then the
        caller's to retry or keep.
        """

    async def publish_many(self, items: Iterable[Outgoing], *, qos: int = 0,
                           retain: bool = False, timeout: float | None = None) -> list[Exception | None]:
        """Publish a batch, in order; one entry per message: None when the broker took it,
        else the error (as `publish` would have raised it). Buses override this when they
        can send a batch cheaper than message by message."""
        results = await asyncio.gather(
            *(self.publish(item[0], item[1], qos=qos, retain=retain, timeout=timeout,
                           **({"envelope": item[2]} if len(item) > 2 else {}))
              for item in items),
            return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r
        return [r if isinstance(r, Exception) else None for r in results]

    async def send_many(self, items: Iterable[Outgoing], *, qos: int = 0,
                        retain: bool = False, timeout: float | None = None
                        ) -> "Awaitable[list[Exception | None]]":
        """Hand a batch to the connection, in order, and return what confirms it.

        Returns once the messages are on their way — a later `send_many` on the same bus
        goes out after them — with an awaitable of `publish_many`'s results. A caller can so
        send the next batch while the broker is still acknowledging this one. Buses that
        cannot separate the two steps send and confirm here and return the results."""
        return settled(await self.publish_many(items, qos=qos, retain=retain, timeout=timeout))

    @abc.abstractmethod
    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0,
                        queue: str | None = None, durable: str | None = None,
                        order: OrderKey | None = None) -> Subscription:
        """Call `handler(msg)` for each message on a topic matching `topic_filter`; `order`
        says which part of the topic keys the order the handler needs (see `OrderKey`)."""

    @abc.abstractmethod
    async def _unsubscribe(self, sub: Subscription) -> None: ...

    async def _detach(self, sub: Subscription, grace: float) -> None:
        """Stop `sub` here, keeping the broker's state for it. Buses without a session (the
        in-process bus, core NATS) have nothing to keep: their messages are handed on, then
        the subscription ends as with `unsubscribe`."""
        sub.pause()
        await sub.handed_on(grace)
        await self._unsubscribe(sub)

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs)

    # ---- connection state events

    def on_state(self, callback: StateCallback) -> Callable[[], None]:
        """Call `callback(BusState)` on connect, disconnect and close; returns a remover."""
        self._state_callbacks.append(callback)

        def remove() -> None:
            if callback in self._state_callbacks:
                self._state_callbacks.remove(callback)

        return remove

    def _emit_state(self, state: BusState) -> None:
        for cb in list(self._state_callbacks):
            try:
                result = cb(state)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._state_tasks.add(task)
                    task.add_done_callback(self._state_tasks.discard)
            except Exception:
                log.exception("state callback %r failed", cb)

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable(f"{self.scheme} bus is closed")


# --------------------------------------------------------------------------------------------


class InProcessBus(Bus):
    """A bus inside one asyncio loop, for tests, demos and single-process pipelines.

    * Topic matching as MQTT (`topics.matches`), qos is accepted and ignored: every message
      reaches every matching subscription, in publish order per subscription.
    * Backpressure: each subscription has a bounded queue (`max_pending`); `publish` waits
      while a matching subscription's queue is full, so a slow handler slows its publishers
      instead of growing memory. A handler must therefore not await a publish that targets
      its own full queue.
    * `retain=True` keeps the last message per topic and hands it to later subscribers;
      an empty retained payload clears it (as MQTT).
    * `queue="name"`: subscriptions sharing the name get each message once, round-robin.
    * `durable` is accepted and means nothing: nothing outlives the process. The `will` is
      accepted for interface parity and never sent (the bus cannot vanish unexpectedly).
    """

    scheme = "memory"
    envelopes = True

    def __init__(self, *, max_pending: int = 1000, will: Will | None = None):
        super().__init__()
        if max_pending < 1:
            raise ConfigError("max_pending must be at least 1")
        self.max_pending = max_pending
        self.will = will
        self._connected = False
        self._retained: dict[str, bytes] = {}
        self._rr: dict[str, int] = {}

    @property
    def connected(self) -> bool:
        return self._connected and not self._closed

    async def connect(self, *, timeout: float = 10.0) -> None:
        self._check_open()
        if not self._connected:
            self._connected = True
            self._emit_state(BusState.CONNECTED)

    async def flush(self, *, timeout: float = 5.0) -> None:
        """Wait until every subscription has handled what was published so far."""
        for sub in list(self._subs):
            await sub.wait_idle(timeout)

    async def close(self, *, timeout: float = 5.0) -> None:
        if self._closed:
            return
        try:
            await self.flush(timeout=timeout)
        except TimeoutError as exc:
            log.warning("closing memory bus: %s", exc)
        self._closed = True
        self._connected = False
        for sub in list(self._subs):
            await sub.stop(grace=timeout)
        self._subs.clear()
        self._emit_state(BusState.CLOSED)

    def _targets(self, topic: str) -> list[Subscription]:
        out: list[Subscription] = []
        groups: dict[str, list[Subscription]] = {}
        for sub in self._subs:
            if not matches(sub.filter, topic):
                continue
            if sub.queue:
                groups.setdefault(sub.queue, []).append(sub)
            else:
                out.append(sub)
        for name, members in groups.items():
            i = self._rr.get(name, 0)
            self._rr[name] = i + 1
            out.append(members[i % len(members)])
        return out

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                      timeout: float | None = None, envelope: Envelope | None = None) -> None:
        validate_topic(topic)
        payload = as_payload(payload)
        check_qos(qos)
        if not self.connected:
            raise BrokerUnavailable("memory bus is not connected" if not self._closed
                                    else "memory bus is closed")
        if retain:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)
        targets = self._targets(topic)
        self.stats.published += 1
        if targets:
            self.stats.received += 1
        for sub in targets:
            if sub.active:
                await sub.put(Message(topic, payload, envelope=envelope))

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0,
                        queue: str | None = None, durable: str | None = None,
                        order: OrderKey | None = None) -> Subscription:
        self._check_open()
        validate_filter(topic_filter)
        check_qos(qos)
        sub = Subscription(self, topic_filter, handler, qos=qos, queue=queue, durable=durable,
                           maxsize=self.max_pending)
        sub.start()
        self._subs.append(sub)
        for topic, payload in list(self._retained.items()):
            if matches(topic_filter, topic):
                await sub.put(Message(topic, payload))
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        await sub.stop(drop_queued=True)
