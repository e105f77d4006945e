"""The state `MqttBus` keeps, declared once for the three halves that share it.

`MqttSession`, `MqttInbound` and `MqttOutbound` are mixins of `MqttBus`: the state lives on
the bus (set in `MqttBus.__init__`), and each half reads and writes it. `MqttState` names
that state and the methods one half calls on another, so each file type-checks on its own;
it adds nothing at run time. `BrokerLimits` is what an MQTT 5 broker announced.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ssl
from typing import TYPE_CHECKING

from ..backoff import Backoff
from ..message import Envelope
from . import mqtt_props as mp
from .bus import Bus, Subscription, Will
from .errors import BrokerUnavailable

if TYPE_CHECKING:
    from .mqtt_session import BrokerConnection


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerLimits:
    """What the broker's last CONNACK (or DISCONNECT) said, on MQTT 5; the defaults are
    MQTT's own when the broker leaves a property out, and all there is on 3.1.1.

    `receive_maximum` caps the QoS 1 publishes in flight (with the bus's `max_inflight`);
    a PUBLISH larger than `maximum_packet_size` is refused before it is sent."""

    receive_maximum: int = 65535
    maximum_packet_size: int | None = None
    topic_alias_maximum: int = 0
    maximum_qos: int = 2
    retain_available: bool = True
    shared_subscriptions: bool = True
    server_keep_alive: int | None = None
    #: the reason code and text of the last refusal or broker-side disconnect
    reason_code: int = 0
    reason: str = ""

    @classmethod
    def of(cls, found: mp.Properties) -> BrokerLimits:
        return cls(receive_maximum=found.get(mp.RECEIVE_MAXIMUM, 65535),
                   maximum_packet_size=found.get(mp.MAXIMUM_PACKET_SIZE),
                   topic_alias_maximum=found.get(mp.TOPIC_ALIAS_MAXIMUM, 0),
                   maximum_qos=found.get(mp.MAXIMUM_QOS, 2),
                   retain_available=bool(found.get(mp.RETAIN_AVAILABLE, 1)),
                   shared_subscriptions=bool(found.get(mp.SHARED_SUB_AVAILABLE, 1)),
                   server_keep_alive=found.get(mp.SERVER_KEEP_ALIVE))


class AckWindow:
    """The acknowledgements of one batch of QoS 1 publishes (`send_many`): a result per
    message and one future for the whole batch, done once every message has its answer.

    A future per message, gathered with `asyncio.wait`, cost a future, a done-callback and a
    loop handle per message; a batch's caller only ever waits for all of them."""

    __slots__ = ("slots", "left", "sealed", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.slots: list[AckSlot] = []
        self.left = 0
        self.sealed = False
        self.future: asyncio.Future[None] = loop.create_future()

    def slot(self) -> AckSlot:
        """A place for the next message's answer."""
        s = AckSlot(self)
        self.slots.append(s)
        self.left += 1
        return s

    def seal(self) -> None:
        """No more messages: the future is done once those so far have their answers."""
        self.sealed = True
        self._check()

    def _answered(self) -> None:
        self.left -= 1
        self._check()

    def _check(self) -> None:
        if self.sealed and self.left == 0 and not self.future.done():
            self.future.set_result(None)


class AckSlot:
    """One message's answer in an `AckWindow`, set through the calls the bus makes on a
    publish's future (`done`, `set_result`, `set_exception`, `exception`)."""

    __slots__ = ("window", "_done", "_exc")

    def __init__(self, window: AckWindow) -> None:
        self.window = window
        self._done = False
        self._exc: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, _value: None) -> None:
        if not self._done:
            self._done = True
            self.window._answered()

    def set_exception(self, exc: BaseException) -> None:
        if not self._done:
            self._done = True
            self._exc = exc
            self.window._answered()

    def exception(self) -> BaseException | None:
        return self._exc


def waitable(answer: asyncio.Future[None] | AckSlot) -> asyncio.Future[None]:
    """The future to await for `answer` (a batch's for a message of a batch)."""
    return answer.window.future if isinstance(answer, AckSlot) else answer


class InFlight:
    """A QoS 1 publish waiting for its PUBACK: the packet (sent again, marked DUP, after a
    reconnect), the caller's future or batch slot (None once the caller was told the
    connection was lost: the packet stays, the caller has its answer) and the topic (named
    in errors)."""

    __slots__ = ("packet", "fut", "topic")

    def __init__(self, packet: bytes, fut: asyncio.Future[None] | AckSlot | None, topic: str) -> None:
        self.packet = packet
        self.fut = fut
        self.topic = topic


class Incoming:
    """An incoming QoS 1 message's place in the order of acknowledgements: its packet id,
    the connection it came on (`generation`) and whether every handler is done with it
    (`handled`: None when it was given back, never to be acknowledged on this connection)."""

    __slots__ = ("mid", "generation", "handled", "bus")

    def __init__(self, mid: int, generation: int, handled: bool | None = False,
                 bus: MqttState | None = None) -> None:
        self.mid = mid
        self.generation = generation
        self.handled = handled
        self.bus = bus

    def __call__(self, outcome: str) -> None:
        """A subscription is done with the message (`Done`): settle it with its bus."""
        assert self.bus is not None   # made with its bus wherever it is handed out
        self.bus._settle(self, outcome)


class MqttState(Bus):
    """Annotations of `MqttBus`'s shared state (see the module's doc)."""

    url: str
    host: str
    port: int
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None
    persistent: bool
    client_id: str
    will: Will | None
    keepalive: int
    publish_timeout: float
    max_pending: int
    max_inflight: int
    reconnect_min: float
    reconnect_max: float
    connect_timeout: float
    max_packet_size: int
    version: int
    session_expiry: int
    receive_maximum: int | None
    topic_aliases: int
    broker: BrokerLimits
    inflight_peak: int
    park_timeout: float

    _backoff: Backoff
    _aliases: dict[str, int]
    _alias_limit: int
    _loop: asyncio.AbstractEventLoop | None
    _conn: BrokerConnection | None
    _generation: int
    _connected: bool
    _ever_connected: bool
    _supervisor: asyncio.Task[None] | None
    _pinger: asyncio.Task[None] | None
    _broker_filters: dict[str, int]
    _inflight: dict[int, InFlight]
    _inflight_cap: int
    _subacks: dict[int, asyncio.Future[list[int]]]
    _next_mid: int
    _changed: asyncio.Event | None
    _room_waiters: collections.deque[asyncio.Future[None]]
    _ack_queue: collections.deque[Incoming]
    _parked: list[tuple[str, bytes, Incoming, float, Envelope | None]]
    _park_timer: asyncio.TimerHandle | None
    _refusal: str | None
    _last_failure: str
    _out: bytearray
    _flush_scheduled: bool
    _last_recv: float
    _last_sent: float
    _topic_bytes: dict[str, bytes]
    _match_cache: dict[str, list[Subscription]]
    gather_window: float

    # `connect` binds the loop and the event, `_accepted` sets the connection: what runs
    # before would be a bug or a call made too early, and says so instead of failing on None

    def _bound_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise BrokerUnavailable(f"{self.url}: not connected (call connect first)")
        return self._loop

    def _changed_event(self) -> asyncio.Event:
        if self._changed is None:
            raise BrokerUnavailable(f"{self.url}: not connected (call connect first)")
        return self._changed

    def _live_conn(self) -> BrokerConnection:
        if self._conn is None:
            raise BrokerUnavailable(
                f"{self.url}: not connected ({self._last_failure or 'not yet connected'})")
        return self._conn

    if TYPE_CHECKING:
        # what one half calls on another
        def _on_packet(self, conn: BrokerConnection, ptype: int, flags: int, body: bytes) -> None: ...
        def _write(self, packet: bytes) -> None: ...
        def _flush(self) -> None: ...
        def _new_mid(self) -> int: ...
        def _on_lost(self, reason: str) -> None: ...
        def _settle(self, entry: Incoming, outcome: str) -> None: ...
        def _subscribe_packet(self, mid: int, filters: list[tuple[str, int]]) -> bytes: ...
        def _wake_all_room_waiters(self) -> None: ...
