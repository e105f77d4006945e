"""MQTT subscriptions and the flow of incoming messages.

`MqttInbound` is the part of `MqttBus` that takes messages in: SUBSCRIBE and its SUBACK, the
fan-out of a PUBLISH to the matching subscriptions' queues, and the acknowledgement (PUBACK)
of QoS 1 messages once every handler is done with them, in arrival order (MQTT 3.1.1, 4.6).
A persistent session's messages that arrive before their subscriber are parked,
unacknowledged, until a subscription claims them; a message handed back unprocessed makes
the bus reconnect so the broker delivers it again.
"""

from __future__ import annotations

import asyncio
import logging

from ..errors import ConfigError
from ..message import Envelope, Message
from . import mqtt_codec as codec
from . import mqtt_props as mp
from .bus import OK, RELEASED, Handler, Subscription, check_qos
from .errors import BrokerUnavailable, SubscribeDenied
from .mqtt_state import Incoming, MqttState
from .topics import OrderKey, matches, validate_filter

log = logging.getLogger("iotwasm.messaging.mqtt")


class MqttSubscription(Subscription):
    #: the filter as the broker knows it (``$share/<queue>/<filter>`` for a queue group)
    broker_filter: str



class MqttInbound(MqttState):
    """Subscriptions and incoming flow of `MqttBus` (a mixin: the state lives on the bus)."""

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0,
                        queue: str | None = None, durable: str | None = None,
                        order: OrderKey | None = None, timeout: float | None = None) -> Subscription:
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
            fut: asyncio.Future[list[int]] = self._bound_loop().create_future()
            self._subacks[mid] = fut
            self._write(self._subscribe_packet(mid, [(broker_filter, wire_qos)]))
            wait = self.publish_timeout if timeout is None else timeout
            try:
                codes = await asyncio.wait_for(asyncio.shield(fut), wait)
            except TimeoutError:
                await self._drop_sub(sub)
                raise BrokerUnavailable(
                    f"{self.url}: no SUBACK for {broker_filter!r} within {wait}s") from None
            except BrokerUnavailable:
                return sub  # renewed on the next connection
            finally:
                self._subacks.pop(mid, None)
            refused = [c for c in codes if c >= 0x80]
            if refused:
                await self._drop_sub(sub)
                why = mp.reason_text(refused[0]) if self.version == 5 else "failure (0x80)"
                exc = SubscribeDenied(
                    f"{self.url}: broker refused the subscription to {broker_filter!r} "
                    f"for client {self.client_id!r}: {why}")
                exc.reason_code = refused[0]
                raise exc
        return sub

    async def _drop_sub(self, sub: MqttSubscription) -> str | None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._match_cache.clear()
        still_used = any(isinstance(s, MqttSubscription) and s.broker_filter == sub.broker_filter
                         for s in self._subs)
        if not still_used:
            self._broker_filters.pop(sub.broker_filter, None)
        await sub.stop(drop_queued=True)
        return None if still_used else sub.broker_filter

    async def _unsubscribe(self, sub: Subscription) -> None:
        assert isinstance(sub, MqttSubscription)
        removed = await self._drop_sub(sub)
        if removed is not None and self._connected:
            unsubscribe = codec.unsubscribe5 if self.version == 5 else codec.unsubscribe
            self._write(unsubscribe(self._new_mid(), [removed]))

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

    def _on_publish(self, flags: int, body: bytes) -> None:
        envelope = None
        if self.version == 5:
            topic_b, qos, mid, envelope, own, payload = codec.read_publish5(flags, body)
            if mp.TOPIC_ALIAS in own:  # we allow none (CONNECT has no alias maximum)
                raise codec.ProtocolError("PUBLISH with a topic alias, which the client did "
                                          "not allow")
        else:
            topic_b, qos, mid, payload = codec.parse_publish(flags, body)
        try:
            topic = topic_b.decode()
        except UnicodeDecodeError:
            topic = None
        self._on_message(topic, payload, qos, mid, self._generation, envelope)

    def _on_suback(self, body: bytes) -> None:
        """The SUBACK's reason codes go to the waiting `subscribe`: 0-2 the QoS granted,
        0x80 and up a refusal (on 3.1.1 only 0x80, 'failure')."""
        if self.version == 5:
            mid, codes, _found = codec.parse_suback5(body)
        else:
            mid, codes = codec.packet_id(body), list(body[2:])
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    def _subscribe_packet(self, mid: int, filters: list[tuple[str, int]]) -> bytes:
        if self.version == 5:
            return codec.subscribe5(mid, filters)  # options: the QoS alone
        return codec.subscribe(mid, filters)

    def _on_message(self, topic: str | None, payload: bytes, qos: int, mid: int,
                    generation: int, envelope: Envelope | None = None) -> None:
        self.stats.received += 1
        if topic is None:
            log.warning("mqtt %s: dropped a message whose topic is not UTF-8", self.url)
            if qos:  # acknowledged in its turn: redelivered, it would be dropped again
                entry = Incoming(mid, generation)
                self._ack_queue.append(entry)
                self._ready(entry)
            return
        targets = [s for s in self._matching(topic) if s.active]
        if qos == 0:
            for sub in targets:
                if sub.queued() >= self.max_pending or not sub.offer(Message(topic, payload, envelope=envelope)):
                    self.stats.dropped += 1
            return
        # qos 1: acknowledge when every matching handler is done with it, in the order the
        # messages arrived (MQTT 3.1.1, 4.6); the broker's in-flight window bounds how many
        # such messages can be waiting here
        entry = Incoming(mid, generation, bus=self)
        self._ack_queue.append(entry)
        if not targets:
            if self.persistent:
                self._park(topic, payload, entry, envelope)
            else:
                self._ready(entry)
            return
        self._hand_out(targets, topic, payload, entry, envelope)

    def _hand_out(self, targets: list[Subscription], topic: str, payload: bytes, entry: Incoming,
                  envelope: Envelope | None = None) -> None:
        if len(targets) == 1:
            targets[0].offer(Message(topic, payload, envelope=envelope), entry)
            return
        remaining = len(targets)
        overall = OK

        def done(outcome: str) -> None:
            nonlocal remaining, overall
            remaining -= 1
            if outcome == RELEASED:
                overall = RELEASED
            if remaining == 0:
                self._settle(entry, overall)

        for sub in targets:
            sub.offer(Message(topic, payload, envelope=envelope), done)

    def _park(self, topic: str, payload: bytes, entry: Incoming, envelope: Envelope | None) -> None:
        """A session's message that arrived before its subscriber did (a node connects,
        the broker delivers what it kept, the routes subscribe a moment later): hold it,
        unacknowledged, until a matching subscription is made or `park_timeout` passes."""
        loop = self._bound_loop()
        self._parked.append((topic, payload, entry, loop.time(), envelope))
        if self._park_timer is None:
            self._park_timer = loop.call_later(self.park_timeout, self._expire_parked)

    def _claim_parked(self) -> None:
        parked, self._parked = self._parked, []
        for topic, payload, entry, since, envelope in parked:
            targets = [s for s in self._matching(topic) if s.active]
            if targets:
                self._hand_out(targets, topic, payload, entry, envelope)
            else:
                self._parked.append((topic, payload, entry, since, envelope))

    def _expire_parked(self) -> None:
        self._park_timer = None
        loop = self._bound_loop()
        cutoff = loop.time() - self.park_timeout
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
            self._park_timer = loop.call_later(self.park_timeout, self._expire_parked)

    def _settle(self, entry: Incoming, outcome: str) -> None:
        if outcome == RELEASED:
            self._release(entry)
        else:
            self._ready(entry)

    def _release(self, entry: Incoming) -> None:
        """A handler gave the message back unprocessed. MQTT 3.1.1 has no negative
        acknowledgement: a broker sends an unacknowledged message again only on the session's
        next connection, and as acknowledgements go in arrival order, this one holds back
        those of every later message. So while other subscriptions on this bus still take
        messages, the bus reconnects and the broker hands them all over again (duplicates are
        possible: at-least-once); when none does (a node stopping), the message waits for the
        session's next connection. A clean session would lose it on a reconnect: there it is
        acknowledged and counted as dropped."""
        entry.handled = None  # never acknowledged on this connection
        if entry.generation != self._generation or not self._connected or self._closed:
            return  # a later connection of the session gets it again anyway
        if not self.persistent:
            self.stats.dropped += 1
            log.warning("mqtt %s: a message given back unprocessed is acknowledged (a clean "
                        "session cannot have it delivered again)", self.url)
            entry.handled = True
            self._ready(entry)
            return
        if any(s.active for s in self._subs) and self._conn is not None:
            conn = self._conn
            if not conn.wire().is_closing():
                log.info("mqtt %s: a message was given back unprocessed; reconnecting so the "
                         "broker delivers it again", self.url)
                self._flush()  # the acknowledgements before it still go out
                conn.wire().close()

    def _ready(self, entry: Incoming) -> None:
        entry.handled = True
        queue = self._ack_queue
        while queue and queue[0].handled:
            done = queue.popleft()
            self._ack(done.mid, done.generation)

    def _matching(self, topic: str) -> list[Subscription]:
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
