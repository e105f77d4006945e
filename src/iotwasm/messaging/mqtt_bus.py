"""`MqttBus`: MQTT 3.1.1 on asyncio, one connection, no client thread.

The bus speaks the protocol itself (`mqtt_codec`) on an asyncio transport. Everything —
parsing, acknowledgements, subscriptions, reconnects — happens on the event loop that uses the
bus, so a message crosses no thread and no lock between the socket and its handler. Outgoing
packets written during one pass of the loop leave in one `send` (a route acknowledging and
publishing a batch costs one system call, not one per packet), and the socket has
`TCP_NODELAY` (asyncio's default), so a lone PUBACK or PUBLISH is not held back by Nagle's
algorithm. docs/messaging.md gives the measurements that led here.

QoS: publishes at 0 and 1; subscriptions are made at QoS 0 or 1 (2 is asked as 1).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import time
import urllib.parse
import uuid
from typing import Any, Iterable

from ..backoff import Backoff
from ..errors import ConfigError
from ..message import Message
from . import mqtt_codec as codec
from .bus import (
    OK,
    RELEASED,
    Bus,
    BusState,
    Handler,
    Subscription,
    Will,
    as_payload,
    check_qos,
    settled,
)
from .errors import BrokerUnavailable, PublishTimeout, SubscribeDenied
from .topics import matches, validate_filter, validate_topic

log = logging.getLogger("iotwasm.messaging.mqtt")


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.lower() not in ("mqtt", "mqtts"):
        raise ConfigError(f"not an mqtt:// or mqtts:// URL: {url!r}")
    if not parsed.hostname:
        raise ConfigError(f"no host in {url!r}")
    try:
        port = parsed.port or (8883 if parsed.scheme.lower() == "mqtts" else 1883)
    except ValueError as exc:
        raise ConfigError(f"bad port in {url!r}: {exc}") from None
    user = urllib.parse.unquote(parsed.username) if parsed.username is not None else None
    password = urllib.parse.unquote(parsed.password) if parsed.password is not None else None
    return parsed.hostname, port, user, password


def _expire_waiter(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class MqttSubscription(Subscription):
    broker_filter: str


class _Refused(Exception):
    pass


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to the broker; hands decoded packets to its bus."""

    def __init__(self, bus: "MqttBus"):
        self.bus = bus
        self.transport: asyncio.Transport | None = None
        self.decoder = codec.Decoder(bus.max_packet_size)
        self.connack: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self._quickack = None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if hasattr(socket, "TCP_QUICKACK"):
                self._quickack = sock

    def data_received(self, data: bytes) -> None:
        bus = self.bus
        bus._last_recv = time.monotonic()
        if self._quickack is not None:
            # Linux falls back to delayed ACKs after a while; a broker that leaves Nagle on
            # (mosquitto's default) would then hold its next packet for up to 40 ms
            self._quickack.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        failure: Exception | None = None
        try:
            packets = self.decoder.feed(data)
        except codec.ProtocolError as exc:
            packets, failure = exc.packets, exc  # what came before the bad bytes still counts
        try:
            for ptype, flags, body in packets:
                try:
                    bus._on_packet(self, ptype, flags, body)
                except (codec.ProtocolError, IndexError):
                    raise
                except Exception:  # a bug in a consumer must not take the connection down
                    bus.stats.errors += 1
                    log.exception("mqtt %s: handling a packet of type %d failed", bus.url, ptype)
        except (codec.ProtocolError, IndexError) as exc:
            failure = exc
        if failure is None:
            return
        bus.stats.errors += 1
        if isinstance(failure, codec.PacketTooLarge):
            log.error("mqtt %s: %s (max_packet_size); dropping the connection and reconnecting",
                      bus.url, failure)
        else:
            log.warning("mqtt %s: malformed packet from the broker (%s); reconnecting",
                        bus.url, failure or type(failure).__name__)
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        reason = str(exc) if exc else "connection closed by the broker"
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(reason))
            self.connack.exception()  # retrieved: `_open` may have stopped waiting
        if self.bus._conn is self:
            self.bus._on_lost(reason)
        if not self.closed.done():
            self.closed.set_result(reason)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class MqttBus(Bus):
    """MQTT 3.1.1 bus.

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
                 backoff: Backoff | None = None):
        super().__init__()
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
        #: delays between connection attempts; `backoff` lets a test pass a seeded one
        self._backoff = backoff or Backoff(reconnect_min, reconnect_max)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: _Connection | None = None
        self._generation = 0
        self._connected = False
        self._ever_connected = False
        self._supervisor: asyncio.Task | None = None
        self._pinger: asyncio.Task | None = None
        #: broker-side filter -> qos, renewed on every connection
        self._broker_filters: dict[str, int] = {}
        #: QoS 1 publishes awaiting PUBACK: packet id -> [packet, future or None], in send order
        self._inflight: dict[int, list] = {}
        self._subacks: dict[int, asyncio.Future] = {}
        self._next_mid = 0
        self._changed: asyncio.Event | None = None  # set on connect / refusal
        self._room_waiters: collections.deque[asyncio.Future] = collections.deque()
        #: incoming QoS 1 messages in arrival order: [packet id, generation, handled]
        self._ack_queue: collections.deque[list] = collections.deque()
        #: persistent session: messages that arrived before a subscription matched them
        self._parked: list[tuple[str, bytes, list, float]] = []
        self._park_timer: asyncio.TimerHandle | None = None
        self.park_timeout = park_timeout
        self._refusal: str | None = None
        self._last_failure = ""
        self._out = bytearray()
        self._flush_scheduled = False
        self._last_recv = self._last_sent = 0.0
        self._topic_bytes: dict[str, bytes] = {}
        self._match_cache: dict[str, list] = {}  # cleared whenever the subscriptions change

    # ------------------------------------------------------------------ writing

    def _write(self, packet: bytes) -> None:
        """Queue a packet; everything queued in one pass of the loop leaves in one send."""
        self._out += packet
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, bytearray()
        conn = self._conn
        if out and conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(out)
            self._last_sent = time.monotonic()

    def _new_mid(self) -> int:
        for _ in range(65535):
            self._next_mid = self._next_mid % 65535 + 1
            if self._next_mid not in self._inflight and self._next_mid not in self._subacks:
                return self._next_mid
        raise BrokerUnavailable(f"{self.url}: no free MQTT packet identifier")

    # ------------------------------------------------------------------ connection

    async def _supervise(self) -> None:
        """Connect, and reconnect with backoff (exponential, with jitter), until the bus is
        closed. The backoff starts over once a connection stayed up for `reconnect_max`
        seconds: a broker that accepts and drops the client at once is not hammered."""
        while not self._closed:
            try:
                conn = await self._open()
            except _Refused as exc:
                self._last_failure = f"broker refused the connection: {exc}"
                log.warning("mqtt %s: %s", self.url, self._last_failure)
                self._refusal = self._last_failure
                self._changed.set()
            except (OSError, ConnectionError, TimeoutError, ssl.SSLError, codec.ProtocolError) as exc:
                self._last_failure = f"cannot reach the broker ({exc or type(exc).__name__})"
            else:
                up = self._loop.time()
                await conn.closed
                if self._closed:
                    return
                if self._loop.time() - up >= self.reconnect_max:
                    self._backoff.reset()
            await asyncio.sleep(self._backoff.next())

    async def _open(self) -> _Connection:
        loop = self._loop
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port,
                                                   ssl=self.tls)
            try:
                will = None
                if self.will is not None:
                    will = (self.will.topic, self.will.payload, self.will.qos, self.will.retain)
                conn.transport.write(codec.connect(
                    self.client_id, clean_session=not self.persistent, keepalive=self.keepalive,
                    username=self.username, password=self.password, will=will))
                await conn.connack  # `_accepted` has made it the bus's connection by now
            except BaseException:
                conn.transport.abort()
                raise
        return conn

    def _accepted(self, conn: _Connection, session_present: bool) -> None:
        """The broker accepted `conn` (CONNACK). Runs while the CONNACK is decoded: a
        session's messages often arrive in the same read, right behind it, and belong to
        this connection — they are acknowledged on it."""
        self._conn = conn
        self._generation += 1
        self._last_recv = self._last_sent = time.monotonic()
        # subscriptions first, then the retransmissions (the order a session expects)
        if self._broker_filters:
            self._write(codec.subscribe(self._new_mid_for_renewal(), list(self._broker_filters.items())))
        for entry in self._inflight.values():
            entry[0] = codec.with_dup(entry[0])
            self._write(entry[0])
        if self._ever_connected:
            self.stats.reconnects += 1
        self._ever_connected = True
        self._connected = True
        self._refusal = None
        log.info("mqtt %s connected as %s (session present: %s)", self.url, self.client_id,
                 session_present)
        self._changed.set()
        self._wake_all_room_waiters()
        self._emit_state(BusState.CONNECTED)
        conn.connack.set_result(session_present)

    def _new_mid_for_renewal(self) -> int:
        mid = self._new_mid()
        fut = self._loop.create_future()
        fut.add_done_callback(self._renewed)
        self._subacks[mid] = fut
        return mid

    def _renewed(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None and any(fut.result()):
            log.error("mqtt %s: broker refused renewing a subscription for client %r",
                      self.url, self.client_id)

    def _on_lost(self, reason: str) -> None:
        was = self._connected
        self._connected = False
        self._conn = None
        self._out = bytearray()
        self._ack_queue = collections.deque()  # not acknowledged there: the broker resends
        self._parked = []
        self._wake_all_room_waiters()
        self._last_failure = f"connection lost: {reason}"
        # publishes waiting for PUBACK: the caller gets them back now; the packets stay and
        # are sent again after the reconnect (duplicates are possible: at-least-once)
        for entry in self._inflight.values():
            fut, entry[1] = entry[1], None
            if fut is not None and not fut.done():
                fut.set_exception(BrokerUnavailable(
                    f"{self.url}: connection lost before the broker acknowledged the message "
                    "(it may or may not have been delivered)"))
                fut.exception()  # the caller reads it; a caller that went away is no error
        subacks, self._subacks = self._subacks, {}
        for fut in subacks.values():
            if not fut.done():
                fut.set_exception(BrokerUnavailable(
                    f"{self.url}: connection lost before the broker confirmed the subscription "
                    "(it is renewed on reconnect)"))
                fut.exception()
        if was and not self._closed:
            log.warning("mqtt %s disconnected: %s; reconnecting", self.url, reason)
            self._emit_state(BusState.DISCONNECTED)

    async def _keep_alive(self) -> None:
        """PINGREQ when idle; drop a connection that has been silent for 1.5 keepalives.
        A keepalive of 0 turns both off (MQTT 3.1.1, 3.1.2.10)."""
        if self.keepalive == 0:
            return
        period = max(self.keepalive / 2, 0.5)
        while not self._closed:
            await asyncio.sleep(period)
            conn = self._conn
            if conn is None or conn.transport is None:
                continue
            now = time.monotonic()
            if now - self._last_recv > self.keepalive * 1.5:
                log.warning("mqtt %s: no answer within %.0fs; reconnecting", self.url,
                            self.keepalive * 1.5)
                conn.transport.abort()
            elif now - self._last_sent >= period:
                self._write(codec.PINGREQ_PACKET)

    # ------------------------------------------------------------------ packets in

    def _on_packet(self, conn: _Connection, ptype: int, flags: int, body: bytes) -> None:
        if ptype == codec.PUBLISH:
            topic_b, qos, mid, payload = codec.parse_publish(flags, body)
            try:
                topic = topic_b.decode()
            except UnicodeDecodeError:
                topic = None
            self._on_message(topic, payload, qos, mid, self._generation)
        elif ptype == codec.PUBACK:
            entry = self._inflight.pop(codec.packet_id(body), None)
            if entry is not None:
                fut = entry[1]
                if fut is not None and not fut.done():
                    fut.set_result(None)
                if self._room_waiters:
                    self._wake_room_waiter()
        elif ptype == codec.CONNACK:
            if len(body) < 2:
                raise codec.ProtocolError("short CONNACK")
            if body[1] != 0:
                reason = codec.CONNACK_REASONS.get(body[1], f"return code {body[1]}")
                if not conn.connack.done():
                    conn.connack.set_exception(_Refused(reason))
                conn.transport.close()
            elif not conn.connack.done():
                self._accepted(conn, bool(body[0] & 1))
        elif ptype == codec.SUBACK:
            fut = self._subacks.pop(codec.packet_id(body), None)
            if fut is not None and not fut.done():
                fut.set_result([rc == 0x80 for rc in body[2:]])
        elif ptype in (codec.UNSUBACK, codec.PINGRESP):
            pass
        else:
            raise codec.ProtocolError(f"unexpected packet type {ptype} from the broker")

    def _on_message(self, topic: str | None, payload: bytes, qos: int, mid: int,
                    generation: int) -> None:
        self.stats.received += 1
        targets = []
        if topic is not None:
            targets = [s for s in self._matching(topic) if s.active]
        else:
            log.warning("mqtt %s: dropped a message whose topic is not UTF-8", self.url)
        if qos == 0:
            for sub in targets:
                if sub.queued() >= self.max_pending or not sub.offer(Message(topic, payload)):
                    self.stats.dropped += 1
            return
        # qos 1: acknowledge when every matching handler is done with it, in the order the
        # messages arrived (MQTT 3.1.1, 4.6); the broker's in-flight window bounds how many
        # such messages can be waiting here
        entry = [mid, generation, False]
        self._ack_queue.append(entry)
        if not targets:
            if self.persistent and topic is not None:
                self._park(topic, payload, entry)
            else:
                self._ready(entry)
            return
        self._hand_out(targets, topic, payload, entry)

    def _hand_out(self, targets: list, topic: str, payload: bytes, entry: list) -> None:
        if len(targets) == 1:
            targets[0].offer(Message(topic, payload), lambda outcome: self._settle(entry, outcome))
            return
        remaining = [len(targets), OK]

        def done(outcome: str) -> None:
            remaining[0] -= 1
            if outcome == RELEASED:
                remaining[1] = RELEASED
            if remaining[0] == 0:
                self._settle(entry, remaining[1])

        for sub in targets:
            sub.offer(Message(topic, payload), done)

    def _park(self, topic: str, payload: bytes, entry: list) -> None:
        """A session's message that arrived before its subscriber did (a node connects,
        the broker delivers what it kept, the routes subscribe a moment later): hold it,
        unacknowledged, until a matching subscription is made or `park_timeout` passes."""
        self._parked.append((topic, payload, entry, self._loop.time()))
        if self._park_timer is None:
            self._park_timer = self._loop.call_later(self.park_timeout, self._expire_parked)

    def _claim_parked(self) -> None:
        parked, self._parked = self._parked, []
        for topic, payload, entry, since in parked:
            targets = [s for s in self._matching(topic) if s.active]
            if targets:
                self._hand_out(targets, topic, payload, entry)
            else:
                self._parked.append((topic, payload, entry, since))

    def _expire_parked(self) -> None:
        self._park_timer = None
        cutoff = self._loop.time() - self.park_timeout
        keep, dropped = [], 0
        for item in self._parked:
            if item[3] <= cutoff:
                self._ready(item[2])  # acknowledged: MQTT 3.1.1 cannot hand it back
                dropped += 1
            else:
                keep.append(item)
        self._parked = keep
        if dropped:
            self.stats.dropped += dropped
            log.warning("mqtt %s: dropped %d message(s) of the session that no subscription "
                        "claimed within %ss", self.url, dropped, self.park_timeout)
        if self._parked:
            self._park_timer = self._loop.call_later(self.park_timeout, self._expire_parked)

    def _settle(self, entry: list, outcome: str) -> None:
        if outcome == RELEASED:
            self._release(entry)
        else:
            self._ready(entry)

    def _release(self, entry: list) -> None:
        """A handler gave the message back unprocessed. MQTT 3.1.1 has no negative
        acknowledgement: a broker sends an unacknowledged message again only on the session's
        next connection, and as acknowledgements go in arrival order, this one holds back
        those of every later message. So while other subscriptions on this bus still take
        messages, the bus reconnects and the broker hands them all over again (duplicates are
        possible: at-least-once); when none does (a node stopping), the message waits for the
        session's next connection. A clean session would lose it on a reconnect: there it is
        acknowledged and counted as dropped."""
        entry[2] = None  # never acknowledged on this connection
        if entry[1] != self._generation or not self._connected or self._closed:
            return  # a later connection of the session gets it again anyway
        if not self.persistent:
            self.stats.dropped += 1
            log.warning("mqtt %s: a message given back unprocessed is acknowledged (a clean "
                        "session cannot have it delivered again)", self.url)
            entry[2] = True
            self._ready(entry)
            return
        if any(s.active for s in self._subs) and self._conn is not None:
            conn = self._conn
            if not conn.transport.is_closing():
                log.info("mqtt %s: a message was given back unprocessed; reconnecting so the "
                         "broker delivers it again", self.url)
                self._flush()  # the acknowledgements before it still go out
                conn.transport.close()

    def _ready(self, entry: list) -> None:
        entry[2] = True
        queue = self._ack_queue
        while queue and queue[0][2]:
            mid, generation, _ = queue.popleft()
            self._ack(mid, generation)

    def _matching(self, topic: str) -> list:
        """Subscriptions whose filter matches `topic`, memoised until the set changes
        (devices repeat their topics; matching every filter per message is the cost)."""
        hit = self._match_cache.get(topic)
        if hit is None:
            if len(self._match_cache) > 50_000:
                self._match_cache.clear()
            hit = self._match_cache[topic] = [s for s in self._subs if matches(s.filter, topic)]
        return hit

    def _ack(self, mid: int, generation: int) -> None:
        # a message from an earlier connection is not acknowledged on the new one: its packet
        # id may name a different message there; the broker redelivers it instead
        if generation == self._generation and self._connected:
            self._write(codec.puback(mid))

    # ------------------------------------------------------------------ API

    @property
    def connected(self) -> bool:
        return self._connected and not self._closed

    async def connect(self, *, timeout: float = 10.0, wait: bool = True) -> None:
        """Start connecting; from then on the bus reconnects by itself, with backoff, until
        `close`.

        With `wait` (the default) return once connected, or raise `BrokerUnavailable` after
        `timeout` seconds or when the broker refuses the client. Raising does not stop the
        bus: it keeps trying in the background (publishes raise `BrokerUnavailable` until it
        is connected; subscriptions are made when it is). Call `close` to give up.
        """
        self._check_open()
        if self._supervisor is None:
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
            self._supervisor = self._loop.create_task(self._supervise(), name=f"mqtt:{self.url}")
            self._pinger = self._loop.create_task(self._keep_alive(), name=f"mqtt-ping:{self.url}")
        if not wait:
            return
        try:
            async with asyncio.timeout(timeout):
                while not self._connected:
                    self._check_open()
                    if self._refusal is not None:
                        reason, self._refusal = self._refusal, None
                        raise BrokerUnavailable(
                            f"{self.url}: {reason} (still retrying in the background)")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            detail = self._last_failure or "no answer"
            raise BrokerUnavailable(
                f"cannot connect to {self.url} within {timeout}s ({detail}); still trying in "
                "the background") from None

    def _packet(self, topic: str, payload: Any, qos: int, retain: bool, mid: int = 0) -> bytes:
        tb = self._topic_bytes.get(topic)
        if tb is None:
            validate_topic(topic)
            if len(self._topic_bytes) > 50_000:
                self._topic_bytes.clear()
            tb = self._topic_bytes[topic] = topic.encode()
        if qos not in (0, 1):
            check_qos(qos)
            raise ConfigError(f"{self.url}: MQTT publishes are made at QoS 0 or 1, not {qos}")
        return codec.publish(tb, as_payload(payload), qos, retain, mid)

    def _check_connected(self) -> None:
        if self._closed:
            raise BrokerUnavailable(f"{self.url}: bus is closed")
        if not self._connected:
            raise BrokerUnavailable(
                f"{self.url}: not connected ({self._last_failure or 'not yet connected'})")

    def _has_room(self) -> bool:
        return len(self._inflight) < self.max_inflight and self._conn.writable.is_set()

    async def _room_for_one(self, topic: str, deadline: float, wait: float) -> None:
        """Wait, in line with other waiting publishers, until one more may be in flight."""
        while not self._has_room() or self._room_waiters:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise PublishTimeout(
                    f"{self.url}: {self.max_inflight} messages wait for an acknowledgement; "
                    f"no room for {topic!r} within {wait}s")
            if len(self._inflight) < self.max_inflight:  # the socket's buffer is full
                try:
                    await asyncio.wait_for(self._conn.writable.wait(), remaining)
                except TimeoutError:
                    pass
                self._check_connected()
                if self._has_room() and not self._room_waiters:
                    return
                continue
            waiter = self._loop.create_future()
            self._room_waiters.append(waiter)
            timer = self._loop.call_later(remaining, _expire_waiter, waiter)
            try:
                await waiter
            except TimeoutError:
                continue  # the deadline check above raises PublishTimeout
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_room_waiter()  # we were given a slot: pass it on
                raise
            finally:
                timer.cancel()
                if waiter in self._room_waiters:
                    self._room_waiters.remove(waiter)
            self._check_connected()
            if self._has_room():
                return

    def _wake_all_room_waiters(self) -> None:
        waiters, self._room_waiters = self._room_waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_room_waiter(self) -> None:
        while self._room_waiters:
            waiter = self._room_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _send_qos1(self, topic: str, payload: Any, retain: bool) -> asyncio.Future:
        mid = self._new_mid()
        packet = self._packet(topic, payload, 1, retain, mid)
        fut = self._loop.create_future()
        self._inflight[mid] = [packet, fut]
        self._write(packet)
        return fut

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                      timeout: float | None = None) -> None:
        self._check_connected()
        if qos == 0:
            self._write(self._packet(topic, payload, 0, retain))
            self.stats.published += 1
            return
        wait = self.publish_timeout if timeout is None else timeout
        deadline = self._loop.time() + wait
        if not self._has_room() or self._room_waiters:
            await self._room_for_one(topic, deadline, wait)
        fut = self._send_qos1(topic, payload, retain)
        await self._await_acks([fut], [topic], deadline, wait)
        if fut.exception() is not None:
            raise fut.exception()
        self.stats.published += 1

    async def publish_many(self, items: Iterable[tuple[str, bytes]], *, qos: int = 0,
                           retain: bool = False, timeout: float | None = None) -> list[Exception | None]:
        """Publish a batch in order, waiting for all its acknowledgements together."""
        return await (await self.send_many(items, qos=qos, retain=retain, timeout=timeout))

    async def send_many(self, items: Iterable[tuple[str, bytes]], *, qos: int = 0,
                        retain: bool = False, timeout: float | None = None):
        """Write a batch in order (waiting for room in the in-flight window as needed) and
        return a coroutine that waits for its PUBACKs: see `Bus.send_many`."""
        items = list(items)
        self._check_connected()
        if qos == 0:
            for topic, payload in items:
                self._write(self._packet(topic, payload, 0, retain))
            self.stats.published += len(items)
            return settled([None] * len(items))
        wait = self.publish_timeout if timeout is None else timeout
        deadline = self._loop.time() + wait
        futs: list[asyncio.Future] = []
        failure: Exception | None = None
        for topic, payload in items:
            try:
                if not self._has_room() or self._room_waiters:
                    await self._room_for_one(topic, deadline, wait)
                futs.append(self._send_qos1(topic, payload, retain))
            except (BrokerUnavailable, PublishTimeout, ConfigError) as exc:
                # what follows a failed message is not sent: order is kept for a retry
                failure = exc
                break
        return self._confirm(futs, items, failure, deadline, wait)

    async def _confirm(self, futs: list[asyncio.Future], items: list[tuple[str, bytes]],
                       failure: Exception | None, deadline: float, wait: float
                       ) -> list[Exception | None]:
        await self._await_acks(futs, [t for t, _ in items[:len(futs)]], deadline, wait)
        results: list[Exception | None] = []
        for fut in futs:
            exc = fut.exception()
            if exc is None:
                self.stats.published += 1
            results.append(exc)
        results += [failure] * (len(items) - len(futs))
        return results

    async def _await_acks(self, futs: list[asyncio.Future], topics: list[str], deadline: float,
                          wait: float) -> None:
        pending = [f for f in futs if not f.done()]
        if pending:
            remaining = max(0.0, deadline - self._loop.time())
            await asyncio.wait(pending, timeout=remaining)
        for fut, topic in zip(futs, topics):
            if not fut.done():
                # the packet stays in flight (a late PUBACK is still taken); the caller hears now
                fut.set_exception(PublishTimeout(
                    f"{self.url}: no acknowledgement for {topic!r} within {wait}s"))
                fut.exception()

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0,
                        queue: str | None = None, durable: str | None = None,
                        timeout: float | None = None) -> Subscription:
        """Subscribe; when connected, return after the broker confirmed (SUBACK).

        `queue` -> a shared subscription (``$share/<queue>/<filter>``): the broker gives each
        message to one member of the group. `durable` needs a persistent session (a
        `client_id`): on MQTT the session is what is durable, the name is only checked.
        Before `connect`, or while reconnecting, the subscription is registered and made as
        soon as the connection is up.
        """
        self._check_open()
        validate_filter(topic_filter)
        check_qos(qos)
        if durable and not self.persistent:
            raise ConfigError(
                f"durable subscription {durable!r} on MQTT needs a persistent session: "
                "give MqttBus a client_id")
        if queue is not None:
            if not queue or "/" in queue or "+" in queue or "#" in queue:
                raise ConfigError(f"bad queue group name {queue!r}")
            broker_filter = f"$share/{queue}/{topic_filter}"
        else:
            broker_filter = topic_filter
        sub = MqttSubscription(self, topic_filter, handler, qos=qos, queue=queue,
                               durable=durable)
        sub.broker_filter = broker_filter
        sub.start()
        self._subs.append(sub)
        self._match_cache.clear()
        if self._parked:
            self._claim_parked()
        wire_qos = min(qos, 1)
        old = self._broker_filters.get(broker_filter, -1)
        if wire_qos > old:
            self._broker_filters[broker_filter] = wire_qos
        if wire_qos > old and self._connected:
            mid = self._new_mid()
            fut = self._loop.create_future()
            self._subacks[mid] = fut
            self._write(codec.subscribe(mid, [(broker_filter, wire_qos)]))
            wait = self.publish_timeout if timeout is None else timeout
            try:
                failures = await asyncio.wait_for(asyncio.shield(fut), wait)
            except TimeoutError:
                await self._drop_sub(sub)
                raise BrokerUnavailable(
                    f"{self.url}: no SUBACK for {broker_filter!r} within {wait}s") from None
            except BrokerUnavailable:
                return sub  # renewed on the next connection
            finally:
                self._subacks.pop(mid, None)
            if any(failures):
                await self._drop_sub(sub)
                raise SubscribeDenied(
                    f"{self.url}: broker refused the subscription to {broker_filter!r} "
                    f"for client {self.client_id!r}")
        return sub

    async def _drop_sub(self, sub: MqttSubscription) -> str | None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._match_cache.clear()
        still_used = any(s.broker_filter == sub.broker_filter for s in self._subs)
        if not still_used:
            self._broker_filters.pop(sub.broker_filter, None)
        await sub.stop(drop_queued=True)
        return None if still_used else sub.broker_filter

    async def _unsubscribe(self, sub: Subscription) -> None:
        assert isinstance(sub, MqttSubscription)
        removed = await self._drop_sub(sub)
        if removed is not None and self._connected:
            self._write(codec.unsubscribe(self._new_mid(), [removed]))

    async def _detach(self, sub: Subscription, grace: float) -> None:
        """Stop `sub` here and send no UNSUBSCRIBE: the broker keeps the filter in the
        persistent session and queues what is published until the session's next connection.
        Messages queued here go to the handler first (for up to `grace` seconds); those left
        are given back unacknowledged. Meanwhile arriving ones wait unacknowledged (parked)."""
        assert isinstance(sub, MqttSubscription)
        sub.pause()
        await sub.handed_on(grace)
        if sub in self._subs:
            self._subs.remove(sub)
            self._match_cache.clear()
        await sub.stop(grace=grace, release_queued=True)

    async def flush(self, *, timeout: float = 5.0) -> None:
        """Wait for the acknowledgements of the qos 1 publishes in flight."""
        pending = [e[1] for e in self._inflight.values() if e[1] is not None and not e[1].done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

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
            self._write(codec.DISCONNECT_PACKET)
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
        for task in (self._supervisor, self._pinger):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        for fut in [e[1] for e in self._inflight.values()] + list(self._subacks.values()):
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
