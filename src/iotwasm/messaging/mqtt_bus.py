"""`MqttBus`: MQTT 3.1.1 on asyncio, one connection, no client thread.

The bus speaks the protocol itself (`mqtt_codec`) on an asyncio transport. Everything —
parsing, acknowledgements, subscriptions, reconnects — happens on the event loop that uses the
bus, so a message crosses no thread and no lock between the socket and its handler. Outgoing
packets written during one pass of the loop leave in one `send` (a route acknowledging and
publishing a batch costs one system call, not one per packet), and the socket has
`TCP_NODELAY` (asyncio's default), so a lone PUBACK or PUBLISH is not held back by Nagle's
algorithm. docs/messaging.md gives the measurements that led here.

The bus is cut along the protocol's seams, one file each:

* mqtt_session.py — connection and session (CONNECT/CONNACK, keep-alive, reconnects);
* mqtt_inbound.py — subscriptions and the flow of incoming messages (SUBSCRIBE, PUBLISH in,
  PUBACK out in arrival order);
* mqtt_outbound.py — publishes and their acknowledgements (PUBLISH out, the in-flight window,
  PUBACK in).

This file holds the state they share and `_on_packet`, the state machine that routes each
packet from the broker to its half.

QoS: publishes at 0 and 1; subscriptions are made at QoS 0 or 1 (2 is asked as 1).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import urllib.parse
import uuid

from ..backoff import Backoff
from ..errors import ConfigError
from ..message import Envelope
from ..supervise import cancel_and_wait
from . import mqtt_codec as codec
from .bus import BusState, Subscription, Will
from .errors import BrokerUnavailable
from .mqtt_inbound import MqttInbound, MqttSubscription
from .mqtt_outbound import MqttOutbound
from .mqtt_session import MqttSession, BrokerConnection, parse_mqtt_url
from .mqtt_state import BrokerLimits, InFlight, Incoming


class MqttBus(MqttSession, MqttInbound, MqttOutbound):
    """MQTT 3.1.1 bus, or MQTT 5 with `version=5`.

    `client_id` given -> a persistent session (clean_session=False): the broker keeps the
    subscriptions and queues QoS 1 messages while the bus is away, and they arrive after the
    reconnect. No `client_id` -> a random one and a clean session.

    Incoming QoS 1 messages are acknowledged (PUBACK) only after every matching handler has
    finished, so a process that dies mid-handler gets the message again from a persistent
    session. MQTT 3.1.1 has no negative acknowledgement: a message whose handler raised is
    acknowledged too (and counted in `stats.errors`).

    QoS 1 publishes not yet acknowledged when the connection drops fail for their caller
    (`BrokerUnavailable`) and are also sent again, marked DUP, right after the reconnect —
    at-least-once, as the protocol intends. At most `max_inflight` wait for a PUBACK at a time.
    """

    scheme = "mqtt"

    def __init__(self, url: str = "mqtt://127.0.0.1:1883", client_id: str | None = None, *,
                 will: Will | None = None, keepalive: int = 30, publish_timeout: float = 10.0,
                 max_pending: int = 1000, max_inflight: int = 100,
                 reconnect_min: float = 0.1, reconnect_max: float = 5.0,
                 connect_timeout: float = 5.0, tls: ssl.SSLContext | None = None,
                 park_timeout: float = 30.0, max_packet_size: int = codec.DEFAULT_MAX_PACKET,
                 backoff: Backoff | None = None, version: int = 4,
                 session_expiry: int | None = None, receive_maximum: int | None = None,
                 topic_aliases: int = 0, gather_ms: int = 1):
        super().__init__()
        if version not in (4, 5):
            raise ConfigError(f"{url}: MQTT version must be 4 (3.1.1) or 5, not {version!r}")
        if version == 4 and (session_expiry is not None or receive_maximum is not None
                             or topic_aliases):
            raise ConfigError(f"{url}: session_expiry, receive_maximum and topic_aliases need "
                              "MQTT 5 (version=5)")
        if isinstance(topic_aliases, bool) or not isinstance(topic_aliases, int) or not 0 <= topic_aliases <= 0xFFFF:
            raise ConfigError(f"{url}: topic_aliases must be a whole number from 0 (off) to "
                              f"65535, not {topic_aliases!r}")
        for name, value, top in (("session_expiry", session_expiry, 0xFFFF_FFFF),
                                 ("receive_maximum", receive_maximum, 0xFFFF)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not (name == "session_expiry" or value) or not 0 <= value <= top):
                raise ConfigError(f"{url}: {name} must be a whole number from "
                                  f"{0 if name == 'session_expiry' else 1} to {top}, not {value!r}")
        if isinstance(gather_ms, bool) or not isinstance(gather_ms, int) or not 0 <= gather_ms <= 100:
            raise ConfigError(f"{url}: gather_ms must be whole milliseconds from 0 (off) to 100, "
                              f"not {gather_ms!r}")
        if max_packet_size < 1024:
            raise ConfigError(f"{url}: max_packet_size {max_packet_size} is below 1024 bytes")
        if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 0 <= keepalive <= 0xFFFF:
            raise ConfigError(f"{url}: keepalive must be whole seconds from 0 (off) to 65535, "
                              f"not {keepalive!r}")
        self.url = url
        self.host, self.port, self.username, self.password = parse_mqtt_url(url)
        if tls is None and urllib.parse.urlsplit(url).scheme.lower() == "mqtts":
            tls = ssl.create_default_context()
        self.tls = tls
        self.persistent = client_id is not None
        self.client_id = client_id or f"iotwasm-{uuid.uuid4().hex[:16]}"
        self.will = will
        self.keepalive = keepalive
        self.publish_timeout = publish_timeout
        self.max_pending = max_pending
        self.max_inflight = max_inflight
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        self.max_packet_size = max_packet_size
        #: how long a busy connection's messages may wait in the kernel to be read together
        #: (gather.py); 0 reads each the moment it arrives
        self.gather_window = gather_ms / 1000
        #: protocol level: 4 is MQTT 3.1.1, 5 is MQTT 5
        self.version = version
        #: MQTT 5: how long the broker keeps the session after a disconnect; a persistent
        #: session (a client_id) is kept for ever by default, as MQTT 3.1.1 does
        if session_expiry is None:
            session_expiry = 0xFFFF_FFFF if self.persistent and version == 5 else 0
        self.session_expiry = session_expiry
        self.receive_maximum = receive_maximum
        #: MQTT 5: how many topics may be sent as a two-byte alias after their first message
        #: (no more than the broker allows; 0, the default, sends every topic in full)
        self.topic_aliases = topic_aliases
        self._aliases: dict[str, int] = {}
        self._alias_limit = 0
        #: a message's envelope (MQTT 5 properties) travels only on MQTT 5
        self.envelopes = version == 5
        #: what the broker's CONNACK said (MQTT 5): its limits and, when refused, its reason
        self.broker = BrokerLimits()
        #: delays between connection attempts; `backoff` lets a test pass a seeded one
        self._backoff = backoff or Backoff(reconnect_min, reconnect_max)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: BrokerConnection | None = None
        self._generation = 0
        self._connected = False
        self._ever_connected = False
        self._supervisor: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        #: broker-side filter -> qos, renewed on every connection
        self._broker_filters: dict[str, int] = {}
        #: QoS 1 publishes awaiting PUBACK, by packet id, in send order
        self._inflight: dict[int, InFlight] = {}
        #: the most QoS 1 publishes that waited for their PUBACK at once (flow control's gauge)
        self.inflight_peak = 0
        #: `inflight_limit`, kept current on every CONNACK (read for every QoS 1 publish)
        self._inflight_cap = max_inflight
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._next_mid = 0
        self._changed: asyncio.Event | None = None  # set on connect / refusal
        self._room_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        #: incoming QoS 1 messages in arrival order
        self._ack_queue: collections.deque[Incoming] = collections.deque()
        #: persistent session: messages that arrived before a subscription matched them
        self._parked: list[tuple[str, bytes, Incoming, float, Envelope | None]] = []
        self._park_timer: asyncio.TimerHandle | None = None
        self.park_timeout = park_timeout
        self._refusal: str | None = None
        self._last_failure = ""
        self._out = bytearray()
        self._flush_scheduled = False
        self._last_recv = self._last_sent = 0.0
        self._topic_bytes: dict[str, bytes] = {}
        self._match_cache: dict[str, list[Subscription]] = {}  # cleared whenever the subscriptions change

    # ------------------------------------------------------------------ packets in

    def _on_packet(self, conn: BrokerConnection, ptype: int, flags: int, body: bytes) -> None:
        """The client's state machine: each packet the broker may send goes to its half.
        Anything else is a protocol error and drops the connection (then reconnects)."""
        if ptype == codec.PUBLISH:
            self._on_publish(flags, body)         # inbound: fan out, PUBACK when handled
        elif ptype == codec.PUBACK:
            self._on_puback(body)                 # outbound: confirm, free an in-flight slot
        elif ptype == codec.CONNACK:
            self._on_connack(conn, body)          # session: accepted (renew, resend) or refused
        elif ptype == codec.SUBACK:
            self._on_suback(body)                 # inbound: the subscription is made or refused
        elif ptype == codec.DISCONNECT and self.version == 5:
            self._on_disconnect(conn, body)       # session: the broker says why it hangs up
        elif ptype in (codec.UNSUBACK, codec.PINGRESP):
            pass
        else:
            raise codec.ProtocolError(f"unexpected packet type {ptype} from the broker")

    @property
    def connected(self) -> bool:
        return self._connected and not self._closed

    async def close(self, *, timeout: float = 5.0) -> None:
        """Wait for outstanding acknowledgements, let running handlers finish (their QoS 1
        messages are then acknowledged), disconnect cleanly (the broker does not send the
        will) and close the connection."""
        if self._closed:
            return
        await self.flush(timeout=timeout)
        for sub in list(self._subs):
            await sub.stop(grace=timeout)
        self._subs.clear()
        self._match_cache.clear()
        self._closed = True
        conn = self._conn
        if conn is not None and conn.transport is not None:
            self._write(codec.DISCONNECT_PACKET)  # reason 0 on MQTT 5: the same two bytes
            self._flush()
            conn.transport.close()
            try:
                await asyncio.wait_for(asyncio.shield(conn.closed), timeout)
            except TimeoutError:
                conn.transport.abort()
        self._connected = False
        self._conn = None
        if self._park_timer is not None:
            self._park_timer.cancel()
        await cancel_and_wait(self._supervisor, self._pinger)
        for fut in [e.fut for e in self._inflight.values()] + list(self._subacks.values()):
            if fut is not None and not fut.done():
                fut.set_exception(BrokerUnavailable(f"{self.url}: bus closed"))
                fut.exception()
        self._subacks.clear()
        if self._changed is not None:
            self._changed.set()
        self._emit_state(BusState.CLOSED)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self._connected else "disconnected"
        return f"<MqttBus {self.url} client_id={self.client_id!r} {state}>"


__all__ = ["MqttBus", "MqttSubscription", "Will", "parse_mqtt_url"]
