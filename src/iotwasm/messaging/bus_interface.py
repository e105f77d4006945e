"""The abstract `Bus`: what every bus offers (publish, subscribe, connection state) and
the few types and helpers that all buses share (`BusState`, `BusStats`, `Will`, `Outgoing`,
`as_payload`, `check_qos`, `settled`).

Split from `bus`; `bus` re-exports it. It stands apart from the subscriptions it hands out
(`subscription`) and from any implementation, the in-process one included (`memory_bus`),
so that a bus module imports the interface and nothing it does not use.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, TypeVar, Union

from ..errors import ConfigError
from ..message import Envelope
from .errors import BrokerUnavailable
from .subscription import Handler, Subscription
from .topics import OrderKey, validate_topic

log = logging.getLogger("iotwasm.messaging")

StateCallback = Callable[["BusState"], Union[None, Awaitable[None]]]
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
    #: gathered reads (messaging/gather.py): the cycles, and the messages they read
    gathers: int = 0
    gathered: int = 0


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
