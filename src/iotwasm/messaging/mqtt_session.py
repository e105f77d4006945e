"""MQTT connection and session: the socket, CONNECT/CONNACK, keep-alive and reconnects.

`BrokerConnection` is the asyncio protocol of one TCP (or TLS) connection; it decodes packets and
hands them to the bus. `MqttSession` is the part of `MqttBus` that makes connections and
keeps them: connect with backoff, renew the subscriptions and resend the unacknowledged
publishes when the broker accepts (in the order a session expects), send PINGREQ when idle,
and fail what waited for the lost connection. Outgoing packets are queued by `_write` and
leave in one send per pass of the loop.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import socket
import ssl
import time
import urllib.parse

from ..errors import ConfigError
from . import mqtt_codec as codec
from . import mqtt_props as mp
from .bus import BusState
from .errors import BrokerUnavailable
from .gather import ReadGathering
from .mqtt_state import BrokerLimits, MqttState
from .reads import BufferedReads


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


class _Refused(Exception):
    pass


class BrokerConnection(BufferedReads):
    """One TCP (or TLS) connection to the broker; hands decoded packets to its bus."""

    def __init__(self, bus: MqttState):
        self.bus = bus
        self.transport: asyncio.Transport | None = None
        self.decoder = codec.Decoder(bus.max_packet_size)
        #: the session-present flag of the broker's CONNACK, or why there is none
        self.connack: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        #: why the connection ended
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.writable = asyncio.Event()
        self.writable.set()
        #: the socket's low-water mark while messages come close together (gather.py)
        self.gathering: ReadGathering | None = None

    def wire(self) -> asyncio.Transport:
        """The transport; asyncio sets it before the first byte arrives or leaves."""
        if self.transport is None:
            raise ConnectionError(f"mqtt {self.bus.url}: the connection is not made yet")
        return self.transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self._quickack = None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if hasattr(socket, "TCP_QUICKACK"):
                self._quickack = sock
        self.gathering = ReadGathering.of(transport, self.bus.gather_window, self.bus.stats)

    def data_received(self, data: bytes) -> None:
        bus = self.bus
        bus._last_recv = now = time.monotonic()
        if self._quickack is not None:
            # Linux falls back to delayed ACKs after a while; a broker that leaves Nagle on
            # (mosquitto's default) would then hold its next packet for up to 40 ms
            self._quickack.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        failure: Exception | None = None
        try:
            packets = self.decoder.feed(data)
        except codec.ProtocolError as exc:
            packets, failure = exc.packets, exc  # what came before the bad bytes still counts
        messages = 0
        try:
            for ptype, flags, body in packets:
                if ptype == codec.PUBLISH:
                    messages += 1
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
            if self.gathering is not None:
                self.gathering.read(messages, len(data), len(packets), now)
            return
        bus.stats.errors += 1
        if isinstance(failure, codec.PacketTooLarge):
            log.error("mqtt %s: %s (max_packet_size); dropping the connection and reconnecting",
                      bus.url, failure)
        else:
            log.warning("mqtt %s: malformed packet from the broker (%s); reconnecting",
                        bus.url, failure or type(failure).__name__)
        self.wire().abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if self.gathering is not None:
            self.gathering.close()
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


class MqttSession(MqttState):
    """Connection and session half of `MqttBus` (a mixin: the state lives on the bus)."""

    # ------------------------------------------------------------------ writing

    def _write(self, packet: bytes) -> None:
        """Queue a packet; everything queued in one pass of the loop leaves in one send."""
        self._out += packet
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._bound_loop().call_soon(self._flush)

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
                self._changed_event().set()
            except (OSError, ConnectionError, TimeoutError, ssl.SSLError, codec.ProtocolError) as exc:
                self._last_failure = f"cannot reach the broker ({exc or type(exc).__name__})"
            else:
                loop = self._bound_loop()
                up = loop.time()
                await conn.closed
                if self._closed:
                    return
                if loop.time() - up >= self.reconnect_max:
                    self._backoff.reset()
            await asyncio.sleep(self._backoff.next())

    async def _open(self) -> BrokerConnection:
        loop = self._bound_loop()
        async with asyncio.timeout(self.connect_timeout):
            transport, conn = await loop.create_connection(lambda: BrokerConnection(self), self.host,
                                                           self.port, ssl=self.tls)
            try:
                will = None
                if self.will is not None:
                    will = (self.will.topic, self.will.payload, self.will.qos, self.will.retain)
                if self.version == 5:
                    transport.write(codec.connect5(
                        self.client_id, clean_start=not self.persistent, keepalive=self.keepalive,
                        username=self.username, password=self.password, will=will,
                        properties=self._connect_properties()))
                else:
                    transport.write(codec.connect(
                        self.client_id, clean_session=not self.persistent,
                        keepalive=self.keepalive, username=self.username,
                        password=self.password, will=will))
                await conn.connack  # `_accepted` has made it the bus's connection by now
            except BaseException:
                transport.abort()
                raise
        return conn

    def _connect_properties(self) -> mp.Properties:
        """MQTT 5 CONNECT properties: the session's lifetime, how many QoS 1 messages the
        broker may send before our PUBACKs (receive maximum), and our packet limit, so the
        broker drops what we would refuse instead of costing us the connection."""
        found: mp.Properties = {mp.MAXIMUM_PACKET_SIZE: self.max_packet_size}
        if self.session_expiry:
            found[mp.SESSION_EXPIRY] = self.session_expiry
        if self.receive_maximum is not None:
            found[mp.RECEIVE_MAXIMUM] = self.receive_maximum
        return found

    def _on_connack(self, conn: BrokerConnection, body: bytes) -> None:
        if self.version == 5:
            session_present, code, found = codec.parse_connack5(body)
            reason = mp.reason_text(code)
            if found.get(mp.REASON_STRING):
                reason += f": {found[mp.REASON_STRING]}"
        else:
            if len(body) < 2:
                raise codec.ProtocolError("short CONNACK")
            found = {}
            session_present, code = bool(body[0] & 1), body[1]
            reason = codec.CONNACK_REASONS.get(code, f"return code {code}")
        if code != 0:
            self.broker = BrokerLimits(reason_code=code, reason=reason)
            if not conn.connack.done():
                conn.connack.set_exception(_Refused(reason))
            conn.wire().close()
        elif not conn.connack.done():
            self.broker = BrokerLimits.of(found)
            self._inflight_cap = min(self.max_inflight, self.broker.receive_maximum)
            self._accepted(conn, session_present)

    def _on_disconnect(self, conn: BrokerConnection, body: bytes) -> None:
        """MQTT 5: the broker closes the connection and says why (session taken over, keep
        alive timeout, ...): the reason goes into the log and the next error."""
        code, found = codec.parse_disconnect5(body)
        reason = mp.reason_text(code)
        if found.get(mp.REASON_STRING):
            reason += f": {found[mp.REASON_STRING]}"
        self.broker = dataclasses.replace(self.broker, reason_code=code, reason=reason)
        log.warning("mqtt %s: the broker disconnected: %s", self.url, reason)
        conn.wire().close()
        if self._conn is conn:
            self._on_lost(f"the broker disconnected: {reason}")

    def _accepted(self, conn: BrokerConnection, session_present: bool) -> None:
        """The broker accepted `conn` (CONNACK). Runs while the CONNACK is decoded: a
        session's messages often arrive in the same read, right behind it, and belong to
        this connection — they are acknowledged on it."""
        self._conn = conn
        self._generation += 1
        # topic aliases are the connection's: start over, up to what the broker allows
        self._aliases = {}
        self._alias_limit = min(self.topic_aliases, self.broker.topic_alias_maximum)
        self._last_recv = self._last_sent = time.monotonic()
        # subscriptions first, then the retransmissions (the order a session expects)
        if self._broker_filters:
            self._write(self._subscribe_packet(self._new_mid_for_renewal(),
                                               list(self._broker_filters.items())))
        for entry in self._inflight.values():
            entry.packet = codec.with_dup(entry.packet)
            self._write(entry.packet)
        if self._ever_connected:
            self.stats.reconnects += 1
        self._ever_connected = True
        self._connected = True
        self._refusal = None
        log.info("mqtt %s connected as %s (session present: %s)", self.url, self.client_id,
                 session_present)
        self._changed_event().set()
        self._wake_all_room_waiters()
        self._emit_state(BusState.CONNECTED)
        conn.connack.set_result(session_present)

    def _new_mid_for_renewal(self) -> int:
        mid = self._new_mid()
        fut: asyncio.Future[list[int]] = self._bound_loop().create_future()
        fut.add_done_callback(self._renewed)
        self._subacks[mid] = fut
        return mid

    def _renewed(self, fut: asyncio.Future[list[int]]) -> None:
        if not fut.cancelled() and fut.exception() is None and any(c >= 0x80 for c in fut.result()):
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
            fut, entry.fut = entry.fut, None
            if fut is not None and not fut.done():
                fut.set_exception(BrokerUnavailable(
                    f"{self.url}: connection lost before the broker acknowledged the message "
                    "(it may or may not have been delivered)"))
                fut.exception()  # the caller reads it; a caller that went away is no error
        subacks, self._subacks = self._subacks, {}
        for suback in subacks.values():
            if not suback.done():
                suback.set_exception(BrokerUnavailable(
                    f"{self.url}: connection lost before the broker confirmed the subscription "
                    "(it is renewed on reconnect)"))
                suback.exception()
        if was and not self._closed:
            log.warning("mqtt %s disconnected: %s; reconnecting", self.url, reason)
            self._emit_state(BusState.DISCONNECTED)

    async def _keep_alive(self) -> None:
        """PINGREQ when idle; drop a connection that has been silent for 1.5 keepalives.
        A keepalive of 0 turns both off (MQTT 3.1.1, 3.1.2.10)."""
        if self.keepalive == 0:
            return
        while not self._closed:
            # an MQTT 5 broker may ask for another keep alive (server keep alive, 3.2.2.3.14)
            keepalive = self.broker.server_keep_alive or self.keepalive
            period = max(keepalive / 2, 0.5)
            await asyncio.sleep(period)
            conn = self._conn
            if conn is None or conn.transport is None:
                continue
            now = time.monotonic()
            if now - self._last_recv > keepalive * 1.5:
                log.warning("mqtt %s: no answer within %.0fs; reconnecting", self.url,
                            keepalive * 1.5)
                conn.transport.abort()
            elif now - self._last_sent >= period:
                self._write(codec.PINGREQ_PACKET)

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
        changed = self._changed_event()
        try:
            async with asyncio.timeout(timeout):
                while not self._connected:
                    self._check_open()
                    if self._refusal is not None:
                        reason, self._refusal = self._refusal, None
                        raise BrokerUnavailable(
                            f"{self.url}: {reason} (still retrying in the background)")
                    changed.clear()
                    await changed.wait()
        except TimeoutError:
            detail = self._last_failure or "no answer"
            raise BrokerUnavailable(
                f"cannot connect to {self.url} within {timeout}s ({detail}); still trying in "
                "the background") from None
