"""The in-process bus: every message handed from publisher to subscriber inside one loop.

Split from `bus`; `bus` re-exports it. It is one implementation of the interface
(`bus_interface`) among the transports (MQTT, NATS, the ingress's workers), kept apart so the
interface does not carry it.
"""

from __future__ import annotations

import logging

from ..errors import ConfigError
from ..message import Envelope, Message
from .bus_interface import Bus, BusState, Will, as_payload, check_qos
from .errors import BrokerUnavailable
from .subscription import Handler, Subscription
from .topics import OrderKey, matches, validate_filter, validate_topic

log = logging.getLogger("iotwasm.messaging")


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
