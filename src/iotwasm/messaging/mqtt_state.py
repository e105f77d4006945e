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
from .bus import Bus, Will

if TYPE_CHECKING:
    from .mqtt_session import _Connection


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
    def of(cls, found: dict) -> BrokerLimits:
        return cls(receive_maximum=found.get(mp.RECEIVE_MAXIMUM, 65535),
                   maximum_packet_size=found.get(mp.MAXIMUM_PACKET_SIZE),
                   topic_alias_maximum=found.get(mp.TOPIC_ALIAS_MAXIMUM, 0),
                   maximum_qos=found.get(mp.MAXIMUM_QOS, 2),
                   retain_available=bool(found.get(mp.RETAIN_AVAILABLE, 1)),
                   shared_subscriptions=bool(found.get(mp.SHARED_SUB_AVAILABLE, 1)),
                   server_keep_alive=found.get(mp.SERVER_KEEP_ALIVE))


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
    _conn: _Connection | None
    _generation: int
    _connected: bool
    _ever_connected: bool
    _supervisor: asyncio.Task | None
    _pinger: asyncio.Task | None
    _broker_filters: dict[str, int]
    _inflight: dict[int, list]
    _inflight_cap: int
    _subacks: dict[int, asyncio.Future]
    _next_mid: int
    _changed: asyncio.Event | None
    _room_waiters: collections.deque[asyncio.Future]
    _ack_queue: collections.deque[list]
    _parked: list[tuple[str, bytes, list, float, Envelope | None]]
    _park_timer: asyncio.TimerHandle | None
    _refusal: str | None
    _last_failure: str
    _out: bytearray
    _flush_scheduled: bool
    _last_recv: float
    _last_sent: float
    _topic_bytes: dict[str, bytes]
    _match_cache: dict[str, list]

    if TYPE_CHECKING:
        # what one half calls on another
        def _on_packet(self, conn: _Connection, ptype: int, flags: int, body: bytes) -> None: ...
        def _write(self, packet: bytes) -> None: ...
        def _flush(self) -> None: ...
        def _new_mid(self) -> int: ...
        def _on_lost(self, reason: str) -> None: ...
        def _subscribe_packet(self, mid: int, filters: list[tuple[str, int]]) -> bytes: ...
        def _wake_all_room_waiters(self) -> None: ...
