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
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol, Sequence, Union

from ..errors import CapabilityDenied, ContainerUnavailable, IotwasmError, StorageError
from ..message import BatchResult, DeadLetter, Message
from ..messaging.acl import TopicACL
from ..messaging.bus import Settlement, settled
from ..supervise import Repeats, StorageHold, cancel_and_wait
from .worker import Worker
from .lanes import Lane

log = logging.getLogger("iotwasm.pipeline")

#: batches whose sinks may still be confirming (e.g. waiting for PUBACKs) per route; beyond
#: this a lane waits for the oldest before it goes on
MAX_UNCONFIRMED = 32


class Step(Protocol):
    """What a route needs of a deployment: a name, topic grants and a (blocking) batch call."""

    name: str
    acl: TopicACL

    def process(self, messages: Sequence[Message]) -> BatchResult: ...


class Sink(Protocol):
    """Where a route's results go. A sink may also offer ``submit(messages, variables)``:
    hand the batch on in order and return an awaitable of `deliver`'s result, so the lane
    can process its next batch while an uplink is still acknowledging this one."""

    name: str

    async def deliver(self, messages: list[Message], variables: list[dict[str, str]]
                      ) -> list[tuple[int, IotwasmError]]:
        """Take the messages; return the ones it could not take, with the reason."""
        ...


DeadLetterHandler = Callable[[str, str, DeadLetter, dict[str, str]], Awaitable[None]]


class BatchTrace(Protocol):
    """Spans of a route's batches (`api.tracing` makes them; the pipeline stays free of any
    tracing library). A batch's span is opened when its lane takes it and closed when its
    sinks confirmed it; its steps run inside it on the lane's thread (`enter`/`leave`), and
    each sink's hand-over and confirmation is a span of its own under it."""

    def batch(self, route: str, messages: int) -> object: ...
    def enter(self, span: object) -> object: ...
    def leave(self, token: object) -> None: ...
    def sink(self, span: object, sink: str, messages: int) -> object: ...
    def end_sink(self, span: object, failures: int) -> None: ...
    def end(self, span: object, delivered: int, dead: int) -> None: ...


@dataclass(frozen=True)
class BatchPolicy:
    max_size: int = 100
    max_linger_s: float = 0.001


@dataclass(frozen=True)
class QueuePolicy:
    capacity: int = 10_000
    overflow: str = "block"  # or "drop-oldest"


@dataclass
class RouteStats:
    received: int = 0
    dropped: int = 0
    processed: int = 0
    delivered: int = 0
    dead_letters: int = 0
    acl_denied: int = 0
    batches: int = 0
    step_retries: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=10_000))
    #: dead letters by where they arose (a step's deployment, a sink, or "route"), and the
    #: (wall-clock time, error) of the latest there: what failed, counted per dead letter
    dead_by: Counter = field(default_factory=Counter)
    last_dead: dict = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        if not data:
            return 0.0
        return data[min(len(data) - 1, int(q * len(data)))]


@dataclass(slots=True)
class _Flow:
    """A batch between steps: messages with their topic variables and arrival times."""

    msgs: list[Message]
    vars: list[dict[str, str]]
    arrived: list[float]


#: how a message's source hears that the route is through with it: a future, or a bus's
#: `Settlement` (the same calls, reported at once)
Settled = Union[asyncio.Future, Settlement]


@dataclass(slots=True)
class _Item:
    msg: Message
    vars: dict[str, str]
    arrived: float
    settled: Settled | None = None
    start: int = 0     # the step it enters at: 0, or later for a replayed dead letter


class RouteRunner:
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
        self._returned: list[_Item] = []
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
        item = _Item(msg, variables, time.monotonic(), settled, start)
        lane = self._lane_for(item)
        self.stats.received += 1
        if not await lane.put(item):  # closed while waiting for room
            self.stats.received -= 1
            if self._successor is not None:
                await self._successor.offer(msg, variables, settled, start)
            else:
                _settle([item], cancel=True)

    def offer_nowait(self, msg: Message, variables: dict[str, str] | None = None,
                     settled: Settled | None = None, start: int = 0) -> bool:
        """`offer` when it need not wait: True when the message was taken (queued, or settled
        at once: dropped, or given back by a stopping route); False, with nothing done, when
        its lane is full under the ``block`` policy — then `offer` waits for room. A bus
        subscription's fast path (`Subscription.fast`) comes in here."""
        if self._successor is not None:
            return self._successor.offer_nowait(msg, variables, settled, start)
        item = _Item(msg, variables or {}, time.monotonic(), settled, start)
        lane = self._lane_for(item)
        if self._stopping or lane.closed:
            _settle([item], cancel=True)
            return True
        if self.queue.overflow == "drop-oldest":
            while lane.full():
                _settle([lane.get_nowait()])
                self.stats.dropped += 1
        elif not lane.has_room():
            return False
        self.stats.received += 1
        lane.put_nowait(item)
        return True

    def _lane_for(self, item: _Item) -> Lane:
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

    def _adopt(self, items: list[_Item]) -> None:
        """Take a predecessor's queued messages in front of this route's own (each lane
        keeps their order), beyond the queue's capacity if need be: they were admitted."""
        fronts: dict[int, list[_Item]] = {}
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
            _settle(lane.close(), cancel=True)
        await cancel_and_wait(*self._tasks, *self._confirming)
        for w in self._workers:
            w.close()  # a call still running finishes on its thread (bounded by its time limit)

    async def _lane(self, q: Lane, worker: Worker) -> None:
        max_size, linger = self.batch.max_size, self.batch.max_linger_s
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
                if len(items) < max_size and linger > 0 and _busy(last, len(items), now - taken, linger):
                    await asyncio.sleep(linger)
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
                _settle(items, cancel=True)
                raise
            except Exception as e:  # noqa: BLE001 - a bug must not kill the lane and strand the queue
                self._faults.failed(e)
                # kept as dead letters (with the error), not acknowledged as if delivered
                err = IotwasmError(f"route {self.name}: batch failed unexpectedly: {type(e).__name__}: {e}")
                for i, it in enumerate(items):
                    await self.dead_letter("route", DeadLetter(i, it.msg, err), it.vars)
                _settle(items)
            finally:
                self._inflight -= 1

    async def _run(self, items: list[_Item], worker: Worker) -> None:
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

    async def _batch(self, items: list[_Item], worker: Worker, trace: BatchTrace | None,
                     span: object | None) -> bool:
        """Run one batch through the steps and hand it to the sinks; True when a confirmation
        task took it over (and with it the batch's span; `trace` and `span` are both None when
        the batch is not traced)."""
        self.stats.batches += 1
        flow = _Flow([it.msg for it in items], [it.vars for it in items], [it.arrived for it in items])
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
                _settle(items, cancel=True)  # not acknowledged: the broker has it again
                raise err
            # the step's container is unavailable (suspended, restarting): hold the batch
            self.stats.step_retries += 1
            log.info("route %s: %s; holding %d message(s) and retrying", self.name, err, len(flow.msgs))
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
        msgs, variables = flow.msgs, flow.vars
        if not msgs:
            _settle(items)
            return False
        # Sinks take the batch in order here; their confirmations (an uplink's acks) are
        # awaited off the lane, so the next batch does not wait for this one's round trip.
        confirms: list[tuple[Sink, Awaitable, object | None]] = []
        for sink in self.sinks:
            sink_span = trace.sink(span, sink.name, len(msgs)) if trace is not None else None
            confirms.append((sink, await self._hand_to(sink, msgs, variables), sink_span))
        if trace is None and all(_kept(c) for _, c, _ in confirms):
            # every sink has the whole batch for good already (an outbox commit): settled
            # here, without a confirmation task and the loop turns it takes
            self._delivered(flow)
            _settle(items)
            return False
        while len(self._confirming) >= MAX_UNCONFIRMED:
            await asyncio.wait(self._confirming, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(self._confirm(flow, confirms, items, trace, span))
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)
        return True

    async def _hand_to(self, sink: Sink, msgs: list[Message], variables: list[dict[str, str]]):
        """Give the batch to one sink; returns what confirms it. A storage error holds the
        batch right here and retries this sink (not those that took it already) until it
        took the batch; any other error of the sink fails the batch's messages there."""
        submit = getattr(sink, "submit", None)

        async def attempt():
            if submit is None:
                return settled(await sink.deliver(msgs, variables))
            return await submit(msgs, variables)

        try:
            return await self.storage.run(attempt)
        except IotwasmError as e:
            return settled([(i, e) for i in range(len(msgs))])

    async def _taken(self, sink: Sink, msgs: list[Message], variables: list[dict[str, str]]):
        return await (await self._hand_to(sink, msgs, variables))

    async def _confirm(self, flow: "_Flow", confirms: list, items: list[_Item], trace: BatchTrace | None,
                       span: object | None) -> None:
        try:
            await self._confirmed(flow, confirms, trace)
        except asyncio.CancelledError:
            _settle(items, cancel=True)
            raise
        finally:
            if trace is not None:
                trace.end(span, len(flow.msgs), self._span_dead.pop(id(span), 0))
        _settle(items)

    async def _confirmed(self, flow: "_Flow", confirms: list, trace: BatchTrace | None = None) -> None:
        msgs, variables = flow.msgs, flow.vars
        for sink, confirm, sink_span in confirms:
            try:
                try:
                    failures = await confirm
                except StorageError:   # the sink could not keep it after all: again, held
                    failures = await self.storage.run(functools.partial(self._taken, sink, msgs, variables))
            except IotwasmError as e:
                failures = [(i, e) for i in range(len(msgs))]
            except Exception as e:  # noqa: BLE001 - kept as dead letters, not counted as delivered
                self._faults.failed(e)
                err = IotwasmError(f"sink {sink.name} failed unexpectedly: {type(e).__name__}: {e}")
                failures = [(i, err) for i in range(len(msgs))]
            if trace is not None:
                trace.end_sink(sink_span, len(failures))
            for i, failure in failures:
                log.warning("route %s: sink %s: %s", self.name, sink.name, failure)
                await self.dead_letter(sink.name, DeadLetter(i, msgs[i], failure), variables[i])
        self._delivered(flow)

    def _delivered(self, flow: "_Flow") -> None:
        self.stats.delivered += len(flow.msgs)
        now = time.monotonic()
        self.stats.latencies_ms.extend((now - a) * 1000 for a in flow.arrived)

    def _chain(self, first: int, flow: "_Flow", trace: BatchTrace | None = None, span: object | None = None):
        """Run steps[first:] on a batch (on the lane's worker thread, never on the loop),
        inside the batch's span when it is traced, so each step's span is a child of it.

        Returns the final flow, the dead letters to report, the number of ACL denials, and
        (step index, error) when a step was unavailable — the flow is then that step's input.
        """
        if trace is None:
            return self._steps(first, flow)
        token = trace.enter(span)
        try:
            return self._steps(first, flow)
        finally:
            trace.leave(token)

    def _steps(self, first: int, flow: "_Flow"):
        dead: list[tuple[str, DeadLetter, dict]] = []
        denied = 0
        for k in range(first, len(self.steps)):
            if not flow.msgs:
                break
            step = self.steps[k]
            acl = step.acl
            can_receive = self._checker(step, "subscribe")
            can_emit = self._checker(step, "publish")
            msgs, variables, arrived = flow.msgs, flow.vars, flow.arrived
            keep = [i for i, m in enumerate(msgs) if can_receive(m.topic)]
            if len(keep) != len(msgs):
                for i in sorted(set(range(len(msgs))) - set(keep)):
                    denied += 1
                    acl.stats.subscribe_denied += 1
                    err = CapabilityDenied(f"may not receive {msgs[i].topic!r} (subscribe grants: "
                                           f"{', '.join(acl.subscribe) or 'none'})", module=step.name)
                    log.warning("route %s: %s", self.name, err)
                    dead.append((step.name, DeadLetter(i, msgs[i], err), variables[i]))
                flow = _Flow([msgs[i] for i in keep], [variables[i] for i in keep], [arrived[i] for i in keep])
                msgs, variables, arrived = flow.msgs, flow.vars, flow.arrived
                if not msgs:
                    break
            try:
                result = step.process(msgs)
            except ContainerUnavailable as e:
                return flow, dead, denied, (k, e)
            for d in result.dead_letters:
                dead.append((step.name, d, variables[d.index]))
            out = _Flow([], [], [])
            for o in result.outputs:
                src = msgs[o.index]
                topic = o.topic or src.topic
                if not can_emit(topic):
                    denied += 1
                    acl.stats.publish_denied += 1
                    err = CapabilityDenied(f"may not emit on {topic!r} (publish grants: "
                                           f"{', '.join(acl.publish) or 'none'})", module=step.name)
                    log.warning("route %s: %s", self.name, err)
                    dead.append((step.name, DeadLetter(o.index, Message(topic, o.payload, src.timestamp_ms), err),
                                 variables[o.index]))
                    continue
                # the envelope (headers, MQTT 5 properties) of the input goes with what it
                # produced: a route passes a device's headers on to its sinks unchanged
                out.msgs.append(Message(topic, o.payload, src.timestamp_ms, src.envelope))
                out.vars.append(variables[o.index])
                out.arrived.append(arrived[o.index])
            flow = out
        return flow, dead, denied, None

    def _checker(self, step: Step, direction: str) -> Callable[[str], bool]:
        """A per-step, per-direction memo of ACL decisions: devices repeat their topics, and
        matching every message against every grant would cost more than the wasm call."""
        key = (id(step.acl), direction)
        entry = self._acl_memo.get(key)
        if entry is None or entry[0] is not step.acl:
            check = step.acl.can_subscribe if direction == "subscribe" else step.acl.can_publish
            memo: dict[str, bool] = {}

            def allowed(topic: str) -> bool:
                hit = memo.get(topic)
                if hit is None:
                    if len(memo) > 50_000:
                        memo.clear()
                    hit = memo[topic] = _allowed(check, topic)
                return hit

            entry = self._acl_memo[key] = (step.acl, allowed)
        return entry[1]

    async def dead_letter(self, where: str, dl: DeadLetter, variables: dict[str, str]) -> None:
        """Make `dl` a dead letter of this route that arose at `where` (a step's deployment, a
        sink, or "route"): counted once in `stats`, then written by the route's handler —
        held and retried while that fails on storage, as a sink's batch is. The route's own
        dead letters come here, and so do (through the node) the messages an uplink refused
        for good after they were stored in the outbox."""
        self.stats.dead_letters += 1
        self.stats.dead_by[where] += 1
        self.stats.last_dead[where] = (time.time(), str(dl.error))
        handler = self._on_dead
        if handler is not None:
            try:   # a dead letter that cannot be written yet holds the batch, as a sink would
                await self.storage.run(lambda: handler(self.name, where, dl, variables))
            except Exception as e:  # noqa: BLE001 - logged once; the batch goes on
                self._faults.failed(e)


def _settle(items: list[_Item], cancel: bool = False) -> None:
    for it in items:
        fut = it.settled
        if fut is not None and not fut.done():
            if cancel:
                fut.cancel()
            else:
                fut.set_result(True)


#: a lane lingers once at least this many messages are expected within its linger time
LINGER_FROM = 2


def _busy(last: int, waiting: int, since: float, linger: float) -> bool:
    """Whether a lane should linger for company before it runs a batch: under load only.

    A batch pays a fixed cost — a hop to the lane's thread and back, a loop turn per sink, an
    outbox commit, a window to the uplink and its acknowledgement — which a batch of one pays
    per message. Under load (the last batch had company, or this one has, or messages came in
    at a rate that brings at least `LINGER_FROM` within the linger time: 2,000/s for the
    default 1 ms) waiting up to the linger time shares that cost among the batch; a quiet
    route's lone message goes through at once. At a steady 5k msg/s every batch was of one
    message, as each went through before the next arrived; lingering there adds at most the
    linger time to a message's latency (docs/benchmarks.md, "Batching under moderate load")."""
    if last > 1 or waiting > 1:
        return True
    return waiting * linger >= LINGER_FROM * since


def _kept(confirm: Awaitable) -> bool:
    """Whether a sink's confirmation is already in, without a failure (`Sink.submit`)."""
    return (isinstance(confirm, asyncio.Future) and confirm.done() and not confirm.cancelled()
            and confirm.exception() is None and not confirm.result())


def _allowed(check: Callable[[str], bool], topic: str) -> bool:
    """An ACL check where a malformed topic (a module can emit anything) counts as denied."""
    try:
        return check(topic)
    except IotwasmError:
        return False
