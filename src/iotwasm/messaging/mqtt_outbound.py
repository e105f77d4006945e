"""MQTT publishes and their acknowledgements.

`MqttOutbound` is the part of `MqttBus` that sends: QoS 0 publishes go straight to the
connection's write queue; QoS 1 publishes take a packet identifier and a slot in the
in-flight window (`max_inflight`, waited for in line) and are confirmed by the broker's
PUBACK, or time out for their caller while the packet stays in flight for a late PUBACK.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Awaitable, Iterable

from ..errors import ConfigError
from ..message import Envelope
from . import mqtt_codec as codec
from . import mqtt_props as mp
from .bus import Outgoing, as_payload, check_qos, settled
from .errors import (
    REJECTED_FOR_GOOD,
    BrokerUnavailable,
    MessageTooLarge,
    PublishDenied,
    PublishRefused,
    PublishRejected,
    PublishTimeout,
)
from .mqtt_state import AckSlot, AckWindow, InFlight, MqttState, waitable
from .topics import validate_topic


def _expire_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())



class MqttOutbound(MqttState):
    """Publish and acknowledgement half of `MqttBus` (a mixin: the state lives on the bus)."""

    def _packet(self, topic: str, payload: Any, qos: int, retain: bool, mid: int = 0,
                envelope: Envelope | None = None) -> bytes:
        """The PUBLISH to write now (with a topic alias where one applies)."""
        return self._packets(topic, payload, qos, retain, mid, envelope)[0]

    def _packets(self, topic: str, payload: Any, qos: int, retain: bool, mid: int = 0,
                 envelope: Envelope | None = None) -> tuple[bytes, bytes]:
        """(the PUBLISH to write now, the same with its full topic and no alias). The second
        is what a QoS 1 message is sent again as after a reconnect: aliases live only as
        long as their connection (MQTT 5, 3.3.2.3.4)."""
        tb = self._topic_bytes.get(topic)
        if tb is None:
            validate_topic(topic)
            if len(self._topic_bytes) > 50_000:
                self._topic_bytes.clear()
            tb = self._topic_bytes[topic] = topic.encode()
        if qos not in (0, 1):
            check_qos(qos)
            raise ConfigError(f"{self.url}: MQTT publishes are made at QoS 0 or 1, not {qos}")
        if self.version == 4:
            if envelope is not None:
                raise ConfigError(f"{self.url}: MQTT 3.1.1 cannot carry the headers and "
                                  f"properties of the message on {topic!r} (use version=5)")
            packet = codec.publish(tb, as_payload(payload), qos, retain, mid)
            return packet, packet
        block = codec.EMPTY_PROPS
        if envelope is not None:
            try:
                block = mp.envelope_block(envelope)
            except ValueError as exc:
                raise ConfigError(f"{self.url}: message on {topic!r}: {exc}") from None
        packet = codec.publish5(tb, as_payload(payload), qos, retain, mid, block)
        limit = self.broker.maximum_packet_size
        if limit is not None and len(packet) > limit:
            raise MessageTooLarge(
                f"{self.url}: the message on {topic!r} makes a packet of {len(packet):,} bytes; "
                f"the broker takes at most {limit:,}")
        if self._alias_limit:
            alias = self._aliases.get(topic)
            if alias is not None:        # the broker knows it: the topic is left out
                return codec.publish5(b"", payload, qos, retain, mid,
                                      mp.with_alias(block, alias)), packet
            if len(self._aliases) < self._alias_limit:
                alias = self._aliases[topic] = len(self._aliases) + 1
                return codec.publish5(tb, payload, qos, retain, mid,
                                      mp.with_alias(block, alias)), packet
        return packet, packet

    def _on_puback(self, body: bytes) -> None:
        if self.version == 5:
            mid, code, found = codec.parse_ack5("PUBACK", body)
        else:
            mid, code, found = codec.packet_id(body), 0, {}
        entry = self._inflight.pop(mid, None)
        if entry is not None:
            fut = entry.fut
            if fut is not None and not fut.done():
                if code < 0x80:  # 0x10, no matching subscribers, is a success too
                    fut.set_result(None)
                else:
                    fut.set_exception(self._refusal_error(entry.topic, code, found))
                    fut.exception()
            if self._room_waiters:
                self._wake_room_waiter()

    def _refusal_error(self, topic: str, code: int, found: mp.Properties) -> Exception:
        reason = mp.reason_text(code)
        if found.get(mp.REASON_STRING):
            reason += f": {found[mp.REASON_STRING]}"
        message = f"{self.url}: the broker refused the message on {topic!r}: {reason}"
        if code == 0x87:
            denied = PublishDenied(message)
            denied.reason_code = code
            return denied
        if code in REJECTED_FOR_GOOD:
            return PublishRejected(message, reason_code=code)
        return PublishRefused(message, reason_code=code)

    @property
    def inflight_count(self) -> int:
        """QoS 1 publishes waiting for their PUBACK now (including those to be sent again
        after a reconnect)."""
        return len(self._inflight)

    @property
    def aliased_topics(self) -> int:
        """How many topics go out as a topic alias on the current connection (MQTT 5)."""
        return len(self._aliases)

    @property
    def inflight_limit(self) -> int:
        """How many QoS 1 publishes may wait for their PUBACK at once: `max_inflight`, and
        on MQTT 5 no more than the broker's receive maximum (flow control, 4.9)."""
        return self._inflight_cap

    def _check_connected(self) -> None:
        if self._closed:
            raise BrokerUnavailable(f"{self.url}: bus is closed")
        if not self._connected:
            raise BrokerUnavailable(
                f"{self.url}: not connected ({self._last_failure or 'not yet connected'})")

    def _has_room(self) -> bool:
        return len(self._inflight) < self._inflight_cap and self._live_conn().writable.is_set()

    async def _room_for_one(self, topic: str, deadline: float, wait: float) -> None:
        """Wait, in line with other waiting publishers, until one more may be in flight."""
        loop = self._bound_loop()
        while not self._has_room() or self._room_waiters:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PublishTimeout(
                    f"{self.url}: {self.inflight_limit} messages wait for an acknowledgement; "
                    f"no room for {topic!r} within {wait}s")
            if len(self._inflight) < self.inflight_limit:  # the socket's buffer is full
                try:
                    await asyncio.wait_for(self._live_conn().writable.wait(), remaining)
                except TimeoutError:
                    pass
                self._check_connected()
                if self._has_room() and not self._room_waiters:
                    return
                continue
            waiter: asyncio.Future[None] = loop.create_future()
            self._room_waiters.append(waiter)
            timer = loop.call_later(remaining, _expire_waiter, waiter)
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

    def _send_qos1(self, topic: str, payload: Any, retain: bool,
                   envelope: Envelope | None = None,
                   window: AckWindow | None = None) -> asyncio.Future[None] | AckSlot:
        """Write one QoS 1 PUBLISH; its answer is a future of its own, or a slot of `window`
        (the packet is built first: a message that cannot be sent takes no slot)."""
        mid = self._new_mid()
        wire, packet = self._packets(topic, payload, 1, retain, mid, envelope)
        fut: asyncio.Future[None] | AckSlot = (self._bound_loop().create_future() if window is None
                                              else window.slot())
        self._inflight[mid] = InFlight(packet, fut, topic)
        if len(self._inflight) > self.inflight_peak:
            self.inflight_peak = len(self._inflight)
        self._write(wire)
        return fut

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                      timeout: float | None = None, envelope: Envelope | None = None) -> None:
        """See `Bus.publish`. `envelope` (MQTT 5 only) sends the message's headers as user
        properties, and its expiry, content type, response topic and correlation data."""
        self._check_connected()
        if qos == 0:
            self._write(self._packet(topic, payload, 0, retain, 0, envelope))
            self.stats.published += 1
            return
        wait = self.publish_timeout if timeout is None else timeout
        deadline = self._bound_loop().time() + wait
        if not self._has_room() or self._room_waiters:
            await self._room_for_one(topic, deadline, wait)
        fut = self._send_qos1(topic, payload, retain, envelope)
        assert isinstance(fut, asyncio.Future)
        await self._await_acks([fut], [topic], deadline, wait)
        failure = fut.exception()
        if failure is not None:
            raise failure
        self.stats.published += 1

    async def publish_many(self, items: Iterable[Outgoing], *, qos: int = 0,
                           retain: bool = False, timeout: float | None = None) -> list[Exception | None]:
        """Publish a batch in order, waiting for all its acknowledgements together."""
        return await (await self.send_many(items, qos=qos, retain=retain, timeout=timeout))

    async def send_many(self, items: Iterable[Outgoing], *, qos: int = 0,
                        retain: bool = False, timeout: float | None = None
                        ) -> Awaitable[list[Exception | None]]:
        """Write a batch in order (waiting for room in the in-flight window as needed) and
        return a coroutine that waits for its PUBACKs: see `Bus.send_many`. An item may be
        ``(topic, payload, envelope)`` on MQTT 5 (see `publish`)."""
        items = list(items)
        self._check_connected()
        if qos == 0:
            sent: list[Exception | None] = []
            for item in items:
                try:
                    self._write(self._packet(item[0], item[1], 0, retain, 0,
                                             item[2] if len(item) > 2 else None))
                    sent.append(None)
                except MessageTooLarge as exc:   # this one alone; the next ones go
                    sent.append(exc)
            self.stats.published += sent.count(None)
            return settled(sent)
        wait = self.publish_timeout if timeout is None else timeout
        deadline = self._bound_loop().time() + wait
        window = AckWindow(self._bound_loop())
        answers: list[AckSlot | Exception] = []
        failure: Exception | None = None
        for item in items:
            try:
                if not self._has_room() or self._room_waiters:
                    await self._room_for_one(item[0], deadline, wait)
                slot = self._send_qos1(item[0], item[1], retain, item[2] if len(item) > 2 else None, window)
                assert isinstance(slot, AckSlot)
                answers.append(slot)
            except MessageTooLarge as exc:
                # never sendable: answered now, and the next ones go (MessageTooLarge is a
                # refusal for good; nothing is held back behind a message that never goes)
                answers.append(exc)
            except (BrokerUnavailable, PublishTimeout, ConfigError) as exc:
                # what follows a failed message is not sent: order is kept for a retry
                failure = exc
                break
        window.seal()
        return self._answers(window, answers, items, failure, deadline, wait)

    def _answers(self, window: AckWindow, answers: list[AckSlot | Exception], items: list[Outgoing],
                 failure: Exception | None, deadline: float, wait: float
                 ) -> asyncio.Future[list[Exception | None]]:
        """The future of a sent batch's results, done when every message has its answer or
        at `deadline`, when those still unanswered time out (their packets stay in flight: a
        late PUBACK is still taken). A future with callbacks, not a coroutine: a caller that
        keeps it (the outbox forwarder keeps a few windows in flight) needs no task for it."""
        loop = self._bound_loop()
        out: asyncio.Future[list[Exception | None]] = loop.create_future()

        def finish(_done: object = None) -> None:
            timer.cancel()
            if out.done():
                return
            for answer, item in zip(answers, items):
                if isinstance(answer, AckSlot) and not answer.done():
                    answer.set_exception(PublishTimeout(
                        f"{self.url}: no acknowledgement for {item[0]!r} within {wait}s"))
            results: list[Exception | None] = []
            for answer in answers:
                exc = answer.exception() if isinstance(answer, AckSlot) else answer
                if exc is None:
                    self.stats.published += 1
                elif not isinstance(exc, Exception):  # only errors are set on these answers
                    out.set_exception(exc)
                    return
                results.append(exc)
            results += [failure] * (len(items) - len(answers))
            out.set_result(results)

        timer = loop.call_at(deadline, finish)
        window.future.add_done_callback(finish)
        return out

    async def _await_acks(self, futs: list[asyncio.Future[None]], topics: list[str], deadline: float,
                          wait: float) -> None:
        pending = [f for f in futs if not f.done()]
        if pending:
            remaining = max(0.0, deadline - self._bound_loop().time())
            await asyncio.wait(pending, timeout=remaining)
        for fut, topic in zip(futs, topics):
            if not fut.done():
                # the packet stays in flight (a late PUBACK is still taken); the caller hears now
                fut.set_exception(PublishTimeout(
                    f"{self.url}: no acknowledgement for {topic!r} within {wait}s"))
                fut.exception()

    async def flush(self, *, timeout: float = 5.0) -> None:
        """Wait for the acknowledgements of the qos 1 publishes in flight."""
        pending = {waitable(e.fut) for e in self._inflight.values()
                   if e.fut is not None and not e.fut.done()}
        if pending:
            await asyncio.wait(pending, timeout=timeout)
