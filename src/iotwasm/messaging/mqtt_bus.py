"""`MqttBus`: MQTT 3.1.1 through paho-mqtt, bridged onto asyncio.

Threads: paho's network loop runs in its own thread (`loop_start`). Every paho callback only
hands its facts to the asyncio loop with `loop.call_soon_threadsafe`; all bookkeeping (ack
futures, subscriptions, stats) lives on the loop. One exception, on purpose: after a
reconnect the subscriptions are renewed from inside paho's `on_connect`, so the SUBSCRIBE
packets leave before anything else is sent on the new connection (paho retransmits
unacknowledged publishes right after `on_connect` returns).

PUBACK race: `publish` registers the ack future for the packet id synchronously after
`client.publish` returns, with no await in between. paho's `on_publish` can run in the network
thread before that, but what it schedules on the loop runs only after `publish` yields, by
which time the future is registered.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import urllib.parse
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from ..errors import ConfigError
from ..message import Message
from .bus import (
    Bus,
    BusState,
    Handler,
    Subscription,
    Will,
    as_payload,
    check_qos,
)
from .errors import BrokerUnavailable, PublishTimeout, SubscribeDenied
from .topics import matches, validate_filter, validate_topic

log = logging.getLogger("iotwasm.messaging.mqtt")


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.lower() != "mqtt":
        raise ConfigError(f"not an mqtt:// URL: {url!r}")
    if not parsed.hostname:
        raise ConfigError(f"no host in {url!r}")
    try:
        port = parsed.port or 1883
    except ValueError as exc:
        raise ConfigError(f"bad port in {url!r}: {exc}") from None
    user = urllib.parse.unquote(parsed.username) if parsed.username is not None else None
    password = urllib.parse.unquote(parsed.password) if parsed.password is not None else None
    return parsed.hostname, port, user, password


class MqttSubscription(Subscription):
    broker_filter: str


class MqttBus(Bus):
    """MQTT 3.1.1 bus.

    `client_id` given -> a persistent session (clean_session=False): the broker keeps the
    subscriptions and queues QoS 1 messages while the bus is away, and they arrive after the
    reconnect. No `client_id` -> a random one and a clean session.

    Incoming QoS 1 messages are acknowledged (PUBACK) only after every matching handler has
    finished, so a process that dies mid-handler gets the message again from a persistent
    session. MQTT 3.1.1 has no negative acknowledgement: a message whose handler raised is
    acknowledged too (and counted in `stats.errors`).
    """

    scheme = "mqtt"

    def __init__(self, url: str = "mqtt://127.0.0.1:1883", client_id: str | None = None, *,
                 will: Will | None = None, keepalive: int = 30, publish_timeout: float = 10.0,
                 max_pending: int = 1000, max_inflight: int = 100,
                 reconnect_min: float = 0.1, reconnect_max: float = 5.0,
                 connect_timeout: float = 5.0):
        super().__init__()
        self.url = url
        self.host, self.port, user, password = parse_mqtt_url(url)
        self.persistent = client_id is not None
        self.client_id = client_id or f"iotwasm-{uuid.uuid4().hex[:16]}"
        self.will = will
        self.keepalive = keepalive
        self.publish_timeout = publish_timeout
        self.max_pending = max_pending

        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=not self.persistent,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if user is not None:
            c.username_pw_set(user, password)
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        c.reconnect_delay_set(reconnect_min, reconnect_max)
        c.max_inflight_messages_set(max_inflight)
        # bound what paho may hold: publishes in flight when a connection drops stay with
        # paho and are retransmitted after the reconnect; nothing else is ever queued there
        c.max_queued_messages_set(max_inflight)
        c.connect_timeout = connect_timeout
        c.suppress_exceptions = True
        c.on_connect = self._net_on_connect
        c.on_connect_fail = self._net_on_connect_fail
        c.on_disconnect = self._net_on_disconnect
        c.on_publish = self._net_on_publish
        c.on_subscribe = self._net_on_subscribe
        c.on_message = self._net_on_message
        self._client = c

        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        #: broker-side filter -> qos; read by the network thread on (re)connect
        self._broker_filters: dict[str, int] = {}
        self._net_generation = 0  # written by the network thread only
        self._connected = False  # loop-side view
        self._ever_connected = False
        self._started = False
        self._acks: dict[int, asyncio.Future] = {}
        self._subacks: dict[int, asyncio.Future] = {}
        self._changed: asyncio.Event | None = None  # set on connect / refusal
        self._room: asyncio.Event | None = None  # set on every PUBACK and state change
        self._refusal: str | None = None
        self._last_failure = ""
        self._inbox: collections.deque = collections.deque()
        self._inbox_scheduled = False
        self._match_cache: dict[str, list] = {}
        self._match_sig: tuple = ()

    # ------------------------------------------------------------------ network thread side

    def _post(self, fn, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed between the check and the call
            pass

    def _net_on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._post(self._on_refused, str(reason_code))
            return
        self._net_generation += 1
        with self._lock:
            snapshot = dict(self._broker_filters)
        if snapshot:
            client.subscribe(list(snapshot.items()))
        self._post(self._on_connected, self._net_generation, snapshot,
                   bool(flags.session_present))

    def _net_on_connect_fail(self, client, userdata) -> None:
        self._post(self._on_connect_failed)

    def _net_on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._post(self._on_disconnected, str(reason_code))

    def _net_on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._post(self._on_puback, mid, reason_code.is_failure, str(reason_code))

    def _net_on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._post(self._on_suback, mid, [rc.is_failure for rc in reason_codes])

    def _net_on_message(self, client, userdata, message) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = None
        # Hand messages over in bulk: waking the event loop costs a system call, so it is
        # done once per burst, not once per message (deque appends are thread-safe).
        self._inbox.append((topic, message.payload, message.qos, message.mid, self._net_generation))
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            self._post(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False  # before draining: a message appended now reschedules
        inbox = self._inbox
        while inbox:
            self._on_message(*inbox.popleft())

    # ------------------------------------------------------------------ loop side

    def _on_connected(self, generation: int, snapshot: dict[str, int], session: bool) -> None:
        if self._closed:
            return
        # filters added on the loop after the network thread took its snapshot
        missing = [(f, q) for f, q in self._broker_filters.items() if snapshot.get(f, -1) < q]
        if missing:
            self._client.subscribe(missing)
        if self._ever_connected:
            self.stats.reconnects += 1
        self._ever_connected = True
        self._connected = True
        log.info("mqtt %s connected as %s (session present: %s)", self.url, self.client_id,
                 session)
        self._refusal = None
        if self._changed is not None:
            self._changed.set()
        self._emit_state(BusState.CONNECTED)

    def _on_refused(self, reason: str) -> None:
        self._last_failure = f"broker refused the connection: {reason}"
        log.warning("mqtt %s: %s", self.url, self._last_failure)
        self._refusal = self._last_failure
        if self._changed is not None:
            self._changed.set()

    def _on_connect_failed(self) -> None:
        self._last_failure = "cannot reach the broker"

    def _on_disconnected(self, reason: str) -> None:
        was = self._connected
        self._connected = False
        if self._room is not None:
            self._room.set()
        self._last_failure = f"connection lost: {reason}"
        # publishes waiting for PUBACK: the caller gets them back now; paho still holds them
        # and retransmits after the reconnect (duplicates are possible: at-least-once)
        acks, self._acks = self._acks, {}
        for fut in acks.values():
            if not fut.done():
                fut.set_exception(BrokerUnavailable(
                    f"{self.url}: connection lost before the broker acknowledged the message "
                    "(it may or may not have been delivered)"))
        subacks, self._subacks = self._subacks, {}
        for fut in subacks.values():
            if not fut.done():
                fut.set_exception(BrokerUnavailable(
                    f"{self.url}: connection lost before the broker confirmed the subscription "
                    "(it is renewed on reconnect)"))
        if was and not self._closed:
            log.warning("mqtt %s disconnected: %s; reconnecting", self.url, reason)
            self._emit_state(BusState.DISCONNECTED)

    def _on_puback(self, mid: int, failed: bool, reason: str) -> None:
        if self._room is not None:
            self._room.set()
        fut = self._acks.pop(mid, None)
        if fut is None or fut.done():
            return  # qos 0, or a publish whose caller stopped waiting
        if failed:
            fut.set_exception(BrokerUnavailable(f"{self.url}: broker rejected the publish: {reason}"))
        else:
            fut.set_result(None)

    def _on_suback(self, mid: int, failures: list[bool]) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(failures)

    def _on_message(self, topic: str | None, payload: bytes, qos: int, mid: int,
                    generation: int) -> None:
        self.stats.received += 1
        targets = []
        if topic is not None:
            targets = [s for s in self._matching(topic) if s.active]
        else:
            log.warning("mqtt %s: dropped a message whose topic is not UTF-8", self.url)
        if not targets:
            if qos > 0:
                self._ack(mid, qos, generation)
            return
        if qos == 0:
            for sub in targets:
                if sub.queued() >= self.max_pending or not sub.offer(Message(topic, payload)):
                    self.stats.dropped += 1
            return
        # qos >= 1: acknowledge when every matching handler is done with it; the broker's
        # in-flight window bounds how many such messages can be waiting here
        remaining = [len(targets)]

        def done(outcome: str) -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self._ack(mid, qos, generation)

        for sub in targets:
            sub.offer(Message(topic, payload), done)

    def _matching(self, topic: str) -> list:
        """Subscriptions whose filter matches `topic`, memoised until the set changes
        (devices repeat their topics; matching every filter per message is the cost)."""
        sig = tuple(map(id, self._subs))
        if sig != self._match_sig:
            self._match_cache.clear()
            self._match_sig = sig
        hit = self._match_cache.get(topic)
        if hit is None:
            if len(self._match_cache) > 50_000:
                self._match_cache.clear()
            hit = self._match_cache[topic] = [s for s in self._subs if matches(s.filter, topic)]
        return hit

    def _ack(self, mid: int, qos: int, generation: int) -> None:
        # a message from an earlier connection is not acknowledged on the new one: its packet
        # id may name a different message there; the broker redelivers it instead
        if generation == self._net_generation and self._connected:
            self._client.ack(mid, qos)

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
        if not self._started:
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
            self._room = asyncio.Event()
            self._client.connect_async(self.host, self.port, self.keepalive)
            self._client.loop_start()
            self._started = True
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

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                      timeout: float | None = None) -> None:
        validate_topic(topic)
        payload = as_payload(payload)
        check_qos(qos)
        wait = self.publish_timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            if self._closed:
                raise BrokerUnavailable(f"{self.url}: bus is closed")
            if not self._connected:
                raise BrokerUnavailable(
                    f"{self.url}: not connected ({self._last_failure or 'not yet connected'})")
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                # max_inflight messages already wait for their PUBACK: wait for room
                remaining = deadline - asyncio.get_running_loop().time()
                self._room.clear()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    await asyncio.wait_for(self._room.wait(), remaining)
                except TimeoutError:
                    raise PublishTimeout(
                        f"{self.url}: {self._client.max_inflight_messages} messages wait for an "
                        f"acknowledgement; no room for {topic!r} within {wait}s") from None
                continue
            if info.rc in (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_CONN_LOST):
                # the network thread lost the connection and its callback has not reached
                # the loop yet: take note now, so `connected` agrees with this error
                self._on_disconnected(mqtt.error_string(info.rc))
                raise BrokerUnavailable(f"{self.url}: not connected (connection lost)")
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerUnavailable(f"{self.url}: publish failed: {mqtt.error_string(info.rc)}")
            break
        if qos == 0:
            self.stats.published += 1
            return
        fut = self._loop.create_future()
        self._acks[info.mid] = fut  # before any await: see the module docstring
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - self._loop.time()))
        except TimeoutError:
            raise PublishTimeout(
                f"{self.url}: no acknowledgement for {topic!r} within {wait}s") from None
        finally:
            if self._acks.get(info.mid) is fut:
                del self._acks[info.mid]
        self.stats.published += 1

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
        with self._lock:
            old = self._broker_filters.get(broker_filter, -1)
            if qos > old:
                self._broker_filters[broker_filter] = qos
        if qos > old and self._connected:
            rc, mid = self._client.subscribe(broker_filter, qos)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                return sub  # the connection just went; on_connect subscribes again
            fut = self._loop.create_future()
            self._subacks[mid] = fut
            wait = self.publish_timeout if timeout is None else timeout
            try:
                failures = await asyncio.wait_for(asyncio.shield(fut), wait)
            except TimeoutError:
                await self._drop_sub(sub)
                raise BrokerUnavailable(
                    f"{self.url}: no SUBACK for {broker_filter!r} within {wait}s") from None
            except BrokerUnavailable:
                return sub  # renewed by on_connect after the reconnect
            finally:
                self._subacks.pop(mid, None)
            if any(failures):
                await self._drop_sub(sub)
                raise SubscribeDenied(
                    f"{self.url}: broker refused the subscription to {broker_filter!r} "
                    f"for client {self.client_id!r}")
        return sub

    async def _drop_sub(self, sub: MqttSubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        still_used = any(s.broker_filter == sub.broker_filter for s in self._subs)
        if not still_used:
            with self._lock:
                self._broker_filters.pop(sub.broker_filter, None)
        await sub.stop(drop_queued=True)
        return None if still_used else sub.broker_filter

    async def _unsubscribe(self, sub: Subscription) -> None:
        assert isinstance(sub, MqttSubscription)
        removed = await self._drop_sub(sub)
        if removed is not None and self._connected:
            self._client.unsubscribe(removed)

    async def flush(self, *, timeout: float = 5.0) -> None:
        """Wait for the acknowledgements of the qos >= 1 publishes in flight."""
        pending = [f for f in self._acks.values() if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def close(self, *, timeout: float = 5.0) -> None:
        """Wait for outstanding acknowledgements, let running handlers finish (their QoS 1
        messages are then acknowledged), disconnect cleanly (the broker does not send the
        will) and stop the network thread."""
        if self._closed:
            return
        try:
            await self.flush(timeout=timeout)
        except Exception:  # pragma: no cover - flush only waits
            pass
        for sub in list(self._subs):
            await sub.stop(grace=timeout)
        self._subs.clear()
        self._closed = True
        if self._started:
            self._connected = False
            # DISCONNECT is queued after what was published (qos 0 leaves first); the network
            # thread ends once it is written, and loop_stop joins it
            self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)
        for fut in list(self._acks.values()) + list(self._subacks.values()):
            if not fut.done():
                fut.set_exception(BrokerUnavailable(f"{self.url}: bus closed"))
        self._acks.clear()
        self._subacks.clear()
        if self._changed is not None:
            self._changed.set()
        self._emit_state(BusState.CLOSED)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self._connected else "disconnected"
        return f"<MqttBus {self.url} client_id={self.client_id!r} {state}>"


__all__ = ["MqttBus", "MqttSubscription", "Will", "parse_mqtt_url"]
