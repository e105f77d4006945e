"""A route: messages from a source, through deployments in order, out to sinks.

    source ─▶ bounded queue ─▶ lanes (batch: max size + max linger) ─▶ step 1 … step n ─▶ sinks

Per-device ordering: each message is assigned to a lane by its ordering key (a source-topic
variable such as ``device``), and a lane handles one batch at a time, so two readings of one
device never overtake each other. Several lanes let a deployment's replicas work in parallel.

Backpressure: the queue is bounded. With ``block`` the source waits (and so does the broker
connection behind it); with ``drop-oldest`` the oldest queued message is dropped and counted.

Nothing is lost silently: a message a module cannot handle becomes a dead letter with its
error; a message a deployment may not receive, or an output it may not emit, is counted,
logged and dead-lettered; a step whose container is unavailable is retried with backoff while
its lane holds the batch.

A storage error (the outbox, the store or the dead letters cannot be written: disk full,
read-only) is backpressure, never an acknowledgement: the lane holds the batch and retries the
write that failed, its queue fills, the source waits, and the source's messages stay
unacknowledged with their broker. `storage.error` says why meanwhile (the node's readiness
reports it); the batch goes on by itself once the write succeeds.

Guest code never runs on the event loop: each lane hands its batches to a worker thread of its
own (`pipeline.worker.Worker`), which runs every step of the batch in one hop, so a module
spinning until its time limit holds up only its own lane.

Replacing a route (an edit) hands its work over (`hand_over`): the batches in flight finish
here, and every queued message — with the acknowledgement its source waits for — moves to the
successor, in order, ahead of what the successor got meanwhile. Stopping (`stop`) drains
first; what is still queued after the drain timeout is given back to the source
unacknowledged.

The runner is in four files: intake, lanes, batching and hand-over here; the steps of a
batch on the lane's thread in `route_steps`; sinks, confirmations and dead letters in
`route_sinks`; and what they share (the protocols, policies, counters and a lane's items) in
`route_state`. This module re-exports their public names.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import Awaitable, Sequence

from ..errors import IotwasmError
from ..message import DeadLetter, Message
from ..supervise import Repeats, StorageHold, cancel_and_wait
from .worker import Worker
from .lanes import Lane, LingerBackoff
from .route_sinks import RouteSinks, confirmed_ok
from .route_state import (BatchPolicy, BatchTrace, DeadLetterHandler, QueuePolicy, RouteStats, Settled, Sink,
                          Step, Flow, Item, settle)
from .route_steps import RouteSteps

__all__ = ["LINGER_FROM", "MAX_UNCONFIRMED", "BatchPolicy", "BatchTrace", "DeadLetterHandler", "QueuePolicy",
           "RouteRunner", "RouteStats", "Settled", "Sink", "Step"]

log = logging.getLogger("iotwasm.pipeline")

#: batches whose sinks may still be confirming (e.g. waiting for PUBACKs) per route; beyond
#: this a lane waits for the oldest before it goes on
MAX_UNCONFIRMED = 32


class RouteRunner(RouteSteps, RouteSinks):
    def __init__(self, name: str, steps: Sequence[Step], sinks: Sequence[Sink], *,
                 batch: BatchPolicy = BatchPolicy(), queue: QueuePolicy = QueuePolicy(),
                 lanes: int = 1, order_key: str = "device",
                 dead_letter: DeadLetterHandler | None = None):
        self.name = name
        self.steps = list(steps)
        self.sinks = list(sinks)
        self.batch = batch
        self.queue = queue
        self.order_key = order_key
        #: writes a dead letter somewhere durable (the node: its database); see `dead_letter`
        self._on_dead = dead_letter
        self.stats = RouteStats()
        n = max(1, lanes)
        per_lane = max(1, queue.capacity // n)
        self._lanes: list[Lane] = [Lane(per_lane) for _ in range(n)]
        #: one thread per lane runs the lane's guest calls (a lane has one batch at a time)
        self._workers = [Worker(f"route-{name}-lane{i}") for i in range(n)]
        self._tasks: list[asyncio.Task] = []
        #: the route that replaced this one: offers go there (see `hand_over`)
        self._successor: RouteRunner | None = None
        #: batches held for an unavailable step when the route was handed over
        self._returned: list[Item] = []
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._acl_memo: dict = {}
        self._confirming: set[asyncio.Task] = set()
        #: holds batches whose sink or dead-letter write failed on storage
        self.storage = StorageHold(f"route {name}", log)
        self._faults = Repeats(log, f"route {name}: a batch")
        #: spans of each batch when tracing is on; None costs one check per batch
        self.trace: BatchTrace | None = None
        self._span_dead: dict[int, int] = {}   # id(span) → dead letters of its batch so far

    # -- intake ----------------------------------------------------------------------------
    async def offer(self, msg: Message, variables: dict[str, str] | None = None,
                    settled: Settled | None = None, start: int = 0) -> None:
        """Queue one message. Waits when the queue is full and the policy is ``block``.

        `settled`, when given, is resolved once the message is through: its results taken by
        every sink (an uplink's acknowledgement included), or dead-lettered, filtered out, or
        dropped by the overflow policy. A source acknowledges its broker then, so a node
        killed meanwhile gets the message again. It is cancelled if the route stops first
        (the message was not processed: the source gives it back unacknowledged). A route
        that was replaced passes the message on to its successor.

        `start` > 0 enters the message at that step (``len(steps)``: straight to the sinks):
        a replayed dead letter goes on from where it failed."""
        if self._successor is not None:
            await self._successor.offer(msg, variables, settled, start)
            return
        if self.offer_nowait(msg, variables, settled, start):
            return
        variables = variables or {}
        item = Item(msg, variables, time.monotonic(), settled, start)
        lane = self._lane_for(item)
        self.stats.received += 1
        if not await lane.put(item):  # closed while waiting for room
            self.stats.received -= 1
            if self._successor is not None:
                await self._successor.offer(msg, variables, settled, start)
            else:
                settle([item], cancel=True)

    def offer_nowait(self, msg: Message, variables: dict[str, str] | None = None,
                     settled: Settled | None = None, start: int = 0) -> bool:
        """`offer` when it need not wait: True when the message was taken (queued, or settled
        at once: dropped, or given back by a stopping route); False, with nothing done, when
        its lane is full under the ``block`` policy — then `offer` waits for room. A bus
        subscription's fast path (`Subscription.fast`) comes in here."""
        if self._successor is not None:
            return self._successor.offer_nowait(msg, variables, settled, start)
        item = Item(msg, variables or {}, time.monotonic(), settled, start)
        lane = self._lane_for(item)
        if self._stopping or lane.closed:
            settle([item], cancel=True)
            return True
        if self.queue.overflow == "drop-oldest":
            while lane.full():
                settle([lane.get_nowait()])
                self.stats.dropped += 1
        elif not lane.has_room():
            return False
        self.stats.received += 1
        lane.put_nowait(item)
        return True

    def _lane_for(self, item: Item) -> Lane:
        if len(self._lanes) == 1:
            return self._lanes[0]
        key = item.vars.get(self.order_key) or item.msg.topic
        return self._lanes[zlib.crc32(key.encode()) % len(self._lanes)]

    async def hand_over(self, successor: RouteRunner) -> None:
        """Give this route's work to `successor`, a route replacing it that is not started
        yet: stop taking batches, let the batches in flight finish here (their sinks confirm
        them as usual; a batch held for an unavailable step goes over instead), then move
        every queued message — with the acknowledgement its source waits for — to the
        successor, in arrival order and ahead of anything offered to the successor
        meanwhile. From the first moment, offers made here go to the successor. Call `stop`
        afterwards to wait for this route's confirmations."""
        if successor._tasks:
            raise RuntimeError(f"route {self.name}: hand over before the successor starts")
        self._successor = successor
        queued = [lane.close() for lane in self._lanes]
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        items = self._returned + [it for lane in queued for it in lane]
        items += [it for lane in self._lanes for it in lane.close()]  # put while closing
        self._returned = []
        successor._adopt(items)
        if items:
            log.info("route %s: %d queued message(s) handed to the new version", self.name, len(items))

    def _adopt(self, items: list[Item]) -> None:
        """Take a predecessor's queued messages in front of this route's own (each lane
        keeps their order), beyond the queue's capacity if need be: they were admitted."""
        fronts: dict[int, list[Item]] = {}
        for it in items:
            fronts.setdefault(id(self._lane_for(it)), []).append(it)
        for lane in self._lanes:
            front = fronts.get(id(lane))
            if front:
                lane.items.extendleft(reversed(front))
        self.stats.received += len(items)

    def depth(self) -> int:
        return sum(q.qsize() for q in self._lanes)

    # -- running ---------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._lane(q, w), name=f"route-{self.name}-lane{i}")
                       for i, (q, w) in enumerate(zip(self._lanes, self._workers))]

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued message went through; True when fully drained."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.depth() == 0 and self._inflight == 0 and not self._confirming:
                return True
            if self.storage.error is not None:
                return False   # held for storage: waiting longer drains nothing
            await asyncio.sleep(0.005)
        return False

    async def stop(self, drain_timeout: float = 10.0) -> None:
        if drain_timeout:
            await self.drain(drain_timeout)
        self._stopping = True
        for lane in self._lanes:  # not taken in time: given back to the source unacknowledged
            settle(lane.close(), cancel=True)
        await cancel_and_wait(*self._tasks, *self._confirming)
        for w in self._workers:
            w.close()  # a call still running finishes on its thread (bounded by its time limit)

    async def _lane(self, q: Lane, worker: Worker) -> None:
        max_size, linger = self.batch.max_size, self.batch.max_linger_s
        enough = min(max_size, LINGER_ENOUGH)
        backoff = LingerBackoff()
        last = 1
        clock = time.monotonic
        taken = clock()   # when the lane last took a batch
        while True:
            first = await q.get()
            if first is None:
                return  # closed: handed over
            items = [first]
            self._inflight += 1
            try:
                while len(items) < max_size and not q.empty():
                    items.append(q.get_nowait())
                now = clock()
                if (len(items) < enough and linger > 0 and _busy(last, len(items), now - taken, linger)
                        and backoff.allows()):
                    await q.gather(enough - len(items), linger)
                    backoff.gathered(not q.empty())   # the queue was empty when it began
                    while len(items) < max_size and not q.empty():
                        items.append(q.get_nowait())
                taken = now
                last = len(items)
                if any(it.start for it in items):   # replayed dead letters among them
                    for s in sorted({it.start for it in items}):
                        await self._run([it for it in items if it.start == s], worker)
                elif self.trace is None:   # untraced: straight in, not one frame more
                    await self._batch(items, worker, None, None)
                else:
                    await self._run(items, worker)
            except asyncio.CancelledError:
                settle(items, cancel=True)
                raise
            except Exception as e:  # noqa: BLE001 - a bug must not kill the lane and strand the queue
                self._faults.failed(e)
                # kept as dead letters (with the error), not acknowledged as if delivered
                err = IotwasmError(f"route {self.name}: batch failed unexpectedly: {type(e).__name__}: {e}")
                for i, it in enumerate(items):
                    await self.dead_letter("route", DeadLetter(i, it.msg, err), it.vars)
                settle(items)
            finally:
                self._inflight -= 1

    async def _run(self, items: list[Item], worker: Worker) -> None:
        trace = self.trace
        if trace is None:
            await self._batch(items, worker, None, None)
            return
        span = trace.batch(self.name, len(items))
        handed = False
        try:
            handed = await self._batch(items, worker, trace, span)
        finally:
            if not handed:   # no sink confirmation will close it
                trace.end(span, 0, self._span_dead.pop(id(span), 0))

    async def _batch(self, items: list[Item], worker: Worker, trace: BatchTrace | None,
                     span: object | None) -> bool:
        """Run one batch through the steps and hand it to the sinks; True when a confirmation
        task took it over (and with it the batch's span; `trace` and `span` are both None when
        the batch is not traced)."""
        self.stats.batches += 1
        flow = Flow([it.msg for it in items], [it.vars for it in items], [it.arrived for it in items])
        self.stats.processed += len(flow.msgs)
        first, delay = items[0].start, 0.05
        while True:
            # Every step of the batch runs in one hop to the lane's worker thread: never on the
            # loop, whatever the batch's size (a small batch's call may spin to its limit too).
            if first < len(self.steps):
                flow, dead, denied, stopped = await worker.run(self._chain, first, flow, trace, span)
            else:
                flow, dead, denied, stopped = flow, [], 0, None
            self.stats.acl_denied += denied
            if span is not None and dead:
                self._span_dead[id(span)] = self._span_dead.get(id(span), 0) + len(dead)
            for where, dl, variables in dead:
                await self.dead_letter(where, dl, variables)
            if stopped is None:
                break
            first, err = stopped
            if self._successor is not None:  # handed over: the successor runs it from the start
                self._returned.extend(items)
                return False
            if self._stopping:
                settle(items, cancel=True)  # not acknowledged: the broker has it again
                raise err
            # the step's container is unavailable (suspended, restarting): hold the batch
            self.stats.step_retries += 1
            log.info("route %s: %s; holding %d message(s) and retrying", self.name, err, len(flow.msgs))
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
        msgs, variables = flow.msgs, flow.vars
        if not msgs:
            settle(items)
            return False
        # Sinks take the batch in order here; their confirmations (an uplink's acks) are
        # awaited off the lane, so the next batch does not wait for this one's round trip.
        confirms: list[tuple[Sink, Awaitable, object | None]] = []
        for sink in self.sinks:
            sink_span = trace.sink(span, sink.name, len(msgs)) if trace is not None else None
            confirms.append((sink, await self._hand_to(sink, msgs, variables), sink_span))
        if trace is None and all(confirmed_ok(c) for _, c, _ in confirms):
            # every sink has the whole batch for good already (an outbox commit): settled
            # here, without a confirmation task and the loop turns it takes
            self._delivered(flow)
            settle(items)
            return False
        while len(self._confirming) >= MAX_UNCONFIRMED:
            await asyncio.wait(self._confirming, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(self._confirm(flow, confirms, items, trace, span))
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)
        return True


#: a lane lingers once at least this many messages are expected within its linger time
LINGER_FROM = 2
#: a lingering lane goes on as soon as its batch has this many messages: the batch's fixed
#: cost is shared well enough, and waiting longer only adds latency. (With an MQTT broker's
#: reads gathered, ~6 messages at a time every 1–2 ms at 5k msg/s, 16 was reached only by the
#: linger's timer, which asyncio fires up to a millisecond late; 14 is reached by the second
#: read, at the same CPU per message: docs/benchmarks.md, "Gathered reads".)
LINGER_ENOUGH = 14


def _busy(last: int, waiting: int, since: float, linger: float) -> bool:
    """Whether a lane should linger for company before it runs a batch: under load only.

    A batch pays a fixed cost — a hop to the lane's thread and back, a loop turn per sink, an
    outbox commit, a window to the uplink and its acknowledgement — which a batch of one pays
    per message. Under load (the last batch had company, or this one has, or messages came in
    at a rate that brings at least `LINGER_FROM` within the linger time: 1,000/s for the
    default 2 ms) waiting up to the linger time shares that cost among the batch; a quiet
    route's lone message goes through at once. At a steady 5k msg/s every batch was of one
    message, as each went through before the next arrived; lingering there adds at most the
    linger time to a message's latency (docs/benchmarks.md, "Batching under moderate load").
    A source that sends no more until its message is through also looks busy here; the
    lane's `LingerBackoff` notices that its lingers gather nothing and stops paying them."""
    if last > 1 or waiting > 1:
        return True
    return waiting * linger >= LINGER_FROM * since
