"""Where a route's messages come from: a bus subscription or simulated sensors.

Sources hand each message to the route with the variables captured from its topic (e.g.
``device`` from ``devices/{device}/frame``); the route uses them for per-device ordering and
topic templates.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..message import Message
from ..messaging.bus import Settlement
from ..sensors import SensorField
from ..supervise import cancel_and_wait, supervise
from .route import RouteRunner
from .templates import TopicPattern

log = logging.getLogger("iotwasm.sources")


class BusSource:
    """Subscribe to a topic pattern on a bus and feed the route (backpressure included).

    A message is acknowledged to the broker (QoS 1, JetStream) only after the route is done
    with it, so a node killed with messages in its queues gets them again from a persistent
    session or a durable consumer (at-least-once).

    Stopping comes in two kinds. `stop` (the node stops) only detaches: no UNSUBSCRIBE, so
    the broker keeps queueing for the node's session (or durable consumer) until it is back.
    `remove` (the route is gone) also ends the subscription at the broker. Both first stop
    taking and hand what already arrived to the route. A route that is replaced keeps its
    source when its manifest did not change: the source is pointed at the new route
    (`retarget`) and nothing is subscribed or unsubscribed."""

    def __init__(self, bus, pattern: str, runner: RouteRunner, *, qos: int = 1,
                 queue: str | None = None, durable: str | None = None):
        self.bus = bus
        self.pattern = TopicPattern.parse(pattern)
        self.runner = runner
        self.qos = qos
        self.queue = queue
        self.durable = durable
        self._sub = None

    async def start(self) -> None:
        pattern = self.pattern
        loop = asyncio.get_running_loop()

        async def handler(msg: Message) -> asyncio.Future:
            # the bus acknowledges the message to its broker when this future is done:
            # once the route is through with it, not when it was queued
            settled = loop.create_future()
            await self.runner.offer(msg, pattern.capture(msg.topic), settled)
            return settled

        def take(msg: Message, settlement: Settlement) -> bool:
            # the same without waiting, straight from the bus, while the lane has room
            return self.runner.offer_nowait(msg, pattern.capture(msg.topic), settlement)

        # an empty queue or durable name means none, as when it is left out
        # the lanes' key: a bus that spreads messages over workers keeps each key on one
        sub = await self.bus.subscribe(pattern.filter, handler, qos=self.qos,
                                       queue=self.queue or None, durable=self.durable or None,
                                       order=pattern.order_key(self.runner.order_key))
        sub.fast = take
        self._sub = sub

    def retarget(self, runner: RouteRunner) -> None:
        """Feed `runner` from now on (the route that replaces this source's route)."""
        self.runner = runner

    def pause(self) -> None:
        """Take no more messages (the broker keeps them); what arrived still goes on."""
        if self._sub is not None:
            self._sub.pause()

    async def stop(self, grace: float = 5.0) -> None:
        """The node stops: hand on what arrived, keep the broker-side subscription."""
        if self._sub is not None:
            await self._sub.detach(grace=grace)
            self._sub = None

    async def remove(self, grace: float = 5.0) -> None:
        """The route is gone: hand on what arrived, then unsubscribe at the broker."""
        if self._sub is not None:
            self._sub.pause()
            await self._sub.handed_on(grace)
            await self._sub.unsubscribe()
            self._sub = None


class SensorSource:
    """Simulated devices producing binary frames at a fixed rate per device and sensor."""

    def __init__(self, field: SensorField, rate: float, runner: RouteRunner,
                 sim_seconds_per_second: float = 60.0):
        self.field = field
        self.rate = rate
        self.runner = runner
        self.speed = sim_seconds_per_second
        self._task: asyncio.Task | None = None
        self.produced = 0

    async def start(self) -> None:
        self._task = supervise("sensor source", self._run, log=log)

    async def _run(self) -> None:
        period = 1.0 / self.rate
        start = time.monotonic()
        n = 0
        while True:
            t_sim = (time.monotonic() - start) * self.speed
            for topic, frame in self.field.tick(t_sim):
                await self.runner.offer(Message(topic, frame), {"device": topic.split("/")[1]})
                self.produced += 1
            n += 1
            delay = start + n * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif n % 100 == 0:
                await asyncio.sleep(0)  # behind schedule: still let others run

    def retarget(self, runner: RouteRunner) -> None:
        self.runner = runner

    def status(self) -> dict:
        return {"health": "ok", "counters": {"produced": self.produced}}

    def pause(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def stop(self, grace: float = 5.0) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    remove = stop
