"""RuleRunner: the rules engine on a bus, with actions and alerts.

One subscription per distinct topic filter of the enabled rules feeds a bounded queue; one
worker takes what is queued (up to `batch` messages), runs the engine over it on the runner's
own thread (WASM functions release the GIL), then hands the emissions to each rule's actions and
alert. Window state is checkpointed every `checkpoint_s` and at stop.

Everything that touches the engine (batches, clock ticks, checkpoints, rule changes) and every
`invoke` action runs on that one thread, never on the event loop: a WASM function spinning to
its time limit delays the rules, not the node. `status()` never waits for a batch either: while
the engine is busy it answers with the counters of the last clock tick (every `tick_s`).

Actions, per emitted row (templates take `{name}` from the output row, then the message):
  publish  topic and payload templates, via the store-and-forward outbox (QoS 1)
  command  the same, meant for a device's command topic (default devices/{device}/commands)
  webhook  POST the row as JSON, via the outbox
  store    insert into the node's local store (a table)
  invoke   hand the row to a deployment; its outputs are published

The worker and the clock are supervised tasks (restarted after an unexpected failure, logged
once). A storage error (disk full) holds the action or alert that met it and retries it,
so the worker stops taking and the queue fills (backpressure) instead of emissions being
dropped; a checkpoint that cannot be written is tried again at the next interval.
`storage_problems()` says what is held and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ...errors import ConfigError, IotwasmError, StorageError
from ...message import Message
from ...supervise import Repeats, StorageHold, cancel_and_wait, supervise
from ..outbox import Outbox
from ..sinks import BusSink, LocalStore, StoreSink, WebhookSink
from ..worker import Worker
from .alerts import AlertDispatcher, AlertPolicy, AlertTracker, fill
from .engine import Emission, RuleEngine, RuleSpec

log = logging.getLogger("iotwasm.rules")


@dataclass
class Action:
    type: str                     # publish command webhook store invoke
    topic: str = ""
    payload: str = ""             # template; empty = the output row as JSON
    qos: int = 1
    url: str = ""
    table: str = "rules"
    deployment: str = ""
    #: a ``sink`` action: makes the sink (a connector, docs/connectors.md) given its name
    build: Callable[[str], Awaitable[Any]] | None = None


@dataclass
class RuleDefinition:
    spec: RuleSpec
    actions: list[Action] = field(default_factory=list)
    alert: AlertPolicy | None = None
    tags: list[str] = field(default_factory=list)
    enabled: bool = True


class _ActionRunner:
    def __init__(self, rule: str, i: int, action: Action, runner: "RuleRunner"):
        self.runner = runner
        self.action = action
        self.rule = rule
        self.sent = 0
        self.failed = 0
        name = self.name = f"rule:{rule}/{i}:{action.type}"
        self.sink: Any = None
        if action.type in ("publish", "command"):
            topic = action.topic or ("devices/{device}/commands" if action.type == "command" else "")
            if not topic:
                raise ConfigError(f"rule {rule}: action {i} ({action.type}) needs a topic")
            self.sink = BusSink(name, runner.bus, "{topic}", qos=action.qos, outbox=runner.outbox)
            self.topic = topic
        elif action.type == "webhook":
            self.sink = WebhookSink(name, action.url, outbox=runner.outbox)
            self.topic = f"rules/{rule}"
        elif action.type == "store":
            if runner.store is None:
                raise ConfigError(f"rule {rule}: action {i}: no local store on this node")
            self.sink = StoreSink(name, runner.store, action.table, f"rule:{rule}")
            self.topic = f"rules/{rule}"
        elif action.type == "sink":
            if action.build is None:
                raise ConfigError(f"rule {rule}: action {i} (sink) has no connector")
            self.topic = action.topic or f"rules/{rule}"   # the sink is made in `build_sink`
        elif action.type == "invoke":
            self.processor = runner.processors(action.deployment)
            if self.processor is None:
                raise ConfigError(f"rule {rule}: action {i}: deployment {action.deployment!r} is not on this node")
            self.sink = BusSink(name, runner.bus, "{topic}", qos=action.qos, outbox=runner.outbox)
            self.topic = action.topic or f"rules/{rule}/{action.deployment}"
        else:
            raise ConfigError(f"rule {rule}: unknown action type {action.type!r}")

    async def build_sink(self) -> None:
        if self.action.type == "sink" and self.sink is None and self.action.build is not None:
            self.sink = await self.action.build(self.name)

    async def start(self) -> None:
        if hasattr(self.sink, "start"):
            await self.sink.start()

    async def stop(self, drain: float) -> None:
        if hasattr(self.sink, "stop"):
            await self.sink.stop(drain_timeout=drain)

    def backlog(self) -> int:
        return self.sink.backlog() if hasattr(self.sink, "backlog") else 0

    async def run(self, emissions: list[Emission]) -> None:
        a = self.action
        msgs: list[Message] = []
        variables: list[dict[str, str]] = []
        for em in emissions:
            values = {**{k: v for k, v in (em.source or {}).items() if k[:1] != "\x00"}, **em.row,
                      "rule": self.rule}
            payload = fill(a.payload, values).encode() if a.payload else \
                json.dumps(em.row, separators=(",", ":")).encode()
            topic = fill(self.topic, values)
            msgs.append(Message(topic, payload, em.ts))
            variables.append({})
        if a.type == "invoke":
            result = await self.runner.offload(self.processor.process, msgs)
            self.failed += len(result.dead_letters)
            outs = [Message(o.topic or msgs[o.index].topic, o.payload, msgs[o.index].timestamp_ms)
                    for o in result.outputs]
            msgs, variables = outs, [{} for _ in outs]
            if not msgs:
                return
        failures = await self.sink.deliver(msgs, variables)
        self.failed += len(failures)
        self.sent += len(msgs) - len(failures)
        for _, err in failures[:1]:
            log.warning("rule %s: %s action failed: %s", self.rule, a.type, err)


def _policy_digest(policy: AlertPolicy) -> str:
    return json.dumps(policy.__dict__, sort_keys=True)


class _RuleRuntime:
    def __init__(self, definition: RuleDefinition):
        self.definition = definition
        self.actions: list[_ActionRunner] = []
        self.tracker: AlertTracker | None = None
        self.dispatcher: AlertDispatcher | None = None


class RuleRunner:
    def __init__(self, bus, *, outbox: Outbox, store: LocalStore | None = None, state=None,
                 processors: Callable[[str], Any] = lambda name: None, batch: int = 1000,
                 queue: int = 10_000, checkpoint_s: float = 1.0, tick_s: float = 0.1,
                 alert_publish_timeout: float = 2.0):
        self.bus = bus
        self.outbox = outbox
        self.store = store
        self.processors = processors
        self.engine = RuleEngine(state)
        self.batch = batch
        self.checkpoint_s = checkpoint_s
        self.tick_s = tick_s
        self.alert_publish_timeout = alert_publish_timeout
        self.rules: dict[str, _RuleRuntime] = {}
        self._queue: asyncio.Queue = asyncio.Queue(queue)
        self._subs: dict[str, Any] = {}
        self._tasks: list[asyncio.Task] = []
        self.action_errors = 0
        self._busy = False
        #: holds actions and alerts that failed on storage
        self.storage = StorageHold("rules", log)
        #: the last checkpoint that could not be written, until one is
        self.checkpoint_error: StorageError | None = None
        self._faults = Repeats(log, "rules")
        # the engine is single-threaded: batches, clock ticks, checkpoints and rule changes
        # take turns on the runner's worker thread (the lock guards direct callers too)
        self._lock = threading.Lock()
        self._worker = Worker("rules")
        self._engine_stats: dict[str, dict] = {}

    # -- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [supervise("rules worker", self._work, log=log),
                       supervise("rules clock", self._clock, log=log)]

    async def stop(self, drain_timeout: float = 2.0) -> None:
        # detach, not unsubscribe: a persistent session keeps the rules' topics while away
        for f in list(self._subs):
            try:
                await self._subs.pop(f).detach()
            except IotwasmError as e:
                log.warning("rules: detaching %s: %s", f, e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_timeout)
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        try:
            await self.offload(self._checkpoint)
        except StorageError as e:
            log.warning("rules: window state not saved at stop (windows start empty next time): %s", e)
        for name in list(self.rules):
            await self._teardown(self.rules.pop(name), drain_timeout)
        self._worker.close()
        self._worker = Worker("rules")  # a runner started again gets a fresh thread

    def offload(self, fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
        """Run `fn(*args)` on the runner's thread (guest code and the engine never run on the
        loop); await the result."""
        return self._worker.run(fn, *args)

    def _engine_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """On the runner's thread: `fn` with the engine to itself, then note its counters for
        `status()` (rule changes and clock ticks; batches leave that to the next tick)."""
        with self._lock:
            out = fn(*args)
            self._engine_stats = self.engine.stats()
            return out

    # -- management --------------------------------------------------------------------------
    async def put(self, d: RuleDefinition) -> None:
        """Create or update a rule (compiled first: a rule that does not compile changes nothing)."""
        name = d.spec.name
        d.spec.alert = d.alert is not None
        rt = _RuleRuntime(d)
        for i, a in enumerate(d.actions):
            rt.actions.append(_ActionRunner(name, i, a, self))
        for ar in rt.actions:   # a connector's sink is made here, before anything changed
            await ar.build_sink()
        # raises RuleSyntaxError before anything changed
        await self.offload(self._engine_call, self.engine.add, d.spec)
        old = self.rules.get(name)
        if old is not None:
            await self._teardown(old, 1.0)
        if d.alert is not None:
            rt.tracker = AlertTracker(name, d.alert)
            if old is not None and old.tracker is not None and old.definition.alert == d.alert:
                rt.tracker.keys = old.tracker.keys
            elif old is None and self.engine.store is not None:
                saved = self.engine.store.load(f"alert:{name}")
                if saved is not None and saved[0] == _policy_digest(d.alert):
                    rt.tracker.load(saved[1])
            rt.dispatcher = AlertDispatcher(name, d.alert, self.outbox, self.bus,
                                            publish_timeout=self.alert_publish_timeout)
            rt.dispatcher.start()
        for ar in rt.actions:
            await ar.start()
        self.rules[name] = rt
        await self.offload(self._engine_call, self.engine.set_enabled, name, d.enabled)
        await self._resubscribe()

    async def remove(self, name: str) -> None:
        rt = self.rules.pop(name, None)
        await self.offload(self._engine_call, self.engine.remove, name)
        if rt is not None:
            await self._teardown(rt, 1.0)
        await self._resubscribe()

    async def set_enabled(self, enabled: bool, *, names: list[str] | None = None,
                          tag: str | None = None) -> list[str]:
        """Enable or disable rules by name or by tag; returns the rules changed."""
        changed = []
        for name, rt in self.rules.items():
            if (names is not None and name in names) or (tag is not None and tag in rt.definition.tags):
                rt.definition.enabled = enabled
                changed.append(name)

        def switch() -> None:
            for name in changed:
                self.engine.set_enabled(name, enabled)
        await self.offload(self._engine_call, switch)
        await self._resubscribe()
        return changed

    async def _teardown(self, rt: _RuleRuntime, drain: float) -> None:
        for a in rt.actions:
            await a.stop(drain)
        if rt.dispatcher is not None:
            await rt.dispatcher.stop()

    async def _resubscribe(self) -> None:
        want = {r.filter for n, r in self.engine.rules.items() if r.enabled}
        for f in [f for f in self._subs if f not in want]:
            await self._unsubscribe(f)
        queue = self._queue
        for f in want - set(self._subs):

            async def handler(msg: Message, f=f) -> None:
                await queue.put((f, msg))
            self._subs[f] = await self.bus.subscribe(f, handler, qos=1)

    async def _unsubscribe(self, f: str) -> None:
        sub = self._subs.pop(f, None)
        if sub is not None:
            try:
                await sub.unsubscribe()
            except IotwasmError as e:
                log.warning("rules: unsubscribing %s: %s", f, e)

    # -- work --------------------------------------------------------------------------------
    async def offer(self, msg: Message) -> None:
        """Feed a message that did not come from the bus (a local source): every enabled
        rule whose FROM matches it sees it once."""
        for f in self.engine.filters_for(msg.topic):
            await self._queue.put((f, msg))

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until everything queued was evaluated and dispatched."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)

    async def _work(self) -> None:
        q = self._queue
        while True:
            first = await q.get()
            self._busy = True
            items = [first]
            while len(items) < self.batch and not q.empty():
                items.append(q.get_nowait())
            by_filter: dict[str, list[Message]] = {}
            for f, m in items:
                by_filter.setdefault(f, []).append(m)
            try:
                out = await self.offload(self._process, by_filter)
                await self.dispatch(out)
            except Exception as e:  # noqa: BLE001 - logged once (repeats counted); the worker goes on
                self._faults.failed(e)
            finally:
                self._busy = False
                for _ in items:
                    q.task_done()

    def _checkpoint(self) -> None:
        """Window state and alert state (dedup, FOR and cooldown clocks) to SQLite."""
        with self._lock:
            self.engine.checkpoint()
            store = self.engine.store
            if store is not None:
                store.save([(f"alert:{n}", _policy_digest(rt.tracker.policy), rt.tracker.dump())
                            for n, rt in list(self.rules.items()) if rt.tracker is not None])

    def _process(self, by_filter: dict[str, list[Message]]) -> list[Emission]:
        out: list[Emission] = []
        with self._lock:
            for f, msgs in by_filter.items():
                out += self.engine.process(msgs, only=f)
        return out

    async def _clock(self) -> None:
        last_cp = time.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            out = await self.offload(self._engine_call, self.engine.tick)
            if out:
                await self.dispatch(out)
            if time.monotonic() - last_cp >= self.checkpoint_s:
                last_cp = time.monotonic()
                try:
                    await self.offload(self._checkpoint)
                except StorageError as e:   # the state stays in memory; tried again next time
                    if self.checkpoint_error is None:
                        log.warning("rules: checkpoint not written (tried again every %ss): %s",
                                    self.checkpoint_s, e)
                    self.checkpoint_error = e
                else:
                    if self.checkpoint_error is not None:
                        log.warning("rules: checkpoints written again")
                    self.checkpoint_error = None

    async def dispatch(self, emissions: list[Emission]) -> None:
        by_rule: dict[str, list[Emission]] = {}
        for em in emissions:
            by_rule.setdefault(em.rule, []).append(em)
        for name, ems in by_rule.items():
            rt = self.rules.get(name)
            if rt is None:
                continue
            ok = [e for e in ems if e.ok]
            for a in rt.actions:
                if ok:
                    try:   # a full disk holds the action (backpressure), it does not drop it
                        await self.storage.run(functools.partial(a.run, ok))
                    except IotwasmError as e:
                        a.failed += len(ok)
                        self.action_errors += 1
                        log.warning("rule %s: %s action failed: %s", name, a.action.type, e)
            if rt.tracker is not None:
                alerts = [x for x in (rt.tracker.observe(e.ok, e.ts, e.row, e.source) for e in ems) if x]
                if alerts:
                    dispatcher = rt.dispatcher
                    assert dispatcher is not None  # put() makes it with the tracker
                    await self.storage.run(functools.partial(dispatcher.raise_alerts, alerts))

    # -- views -------------------------------------------------------------------------------
    def storage_problems(self) -> list[str]:
        """What the rules hold or could not save because the storage fails, and why."""
        out = []
        if self.storage.error is not None:
            out.append(f"rules hold actions or alerts: {self.storage.error}")
        if self.checkpoint_error is not None:
            out.append(f"rule checkpoints not saved: {self.checkpoint_error}")
        for rt in self.rules.values():
            forwarders = [getattr(a.sink, "forwarder", None) for a in rt.actions]
            if rt.dispatcher is not None:
                forwarders.append(rt.dispatcher.forwarder)
            out += [f"outbox forwarder {f.sink} cannot delete delivered messages: {f.storage.error}"
                    for f in forwarders if f is not None and f.storage.error is not None]
        return out

    def status(self) -> dict[str, dict]:
        if self._lock.acquire(blocking=False):   # the engine is idle: fresh counters
            try:
                stats = self._engine_stats = self.engine.stats()
            finally:
                self._lock.release()
        else:                                    # a batch is running: never wait for it
            stats = self._engine_stats
        out = {}
        for name, rt in self.rules.items():
            s = dict(stats.get(name, {}))
            s["tags"] = list(rt.definition.tags)
            s["actions"] = [{"type": a.action.type, "sent": a.sent, "failed": a.failed,
                             "backlog": a.backlog()} for a in rt.actions]
            if rt.tracker is not None:
                d = rt.dispatcher
                assert d is not None  # put() makes it with the tracker
                s["alerts"] = {"fired": rt.tracker.fired, "suppressed": rt.tracker.suppressed,
                               "via_mqtt": d.via_mqtt, "via_webhook": d.via_webhook,
                               "pending": d.pending(), "delivery_failures": d.failures}
            funcs = rt.definition.spec.functions
            if funcs:
                s["functions"] = {n: {"calls": f.calls, "errors": f.errors, "last_error": f.last_error}
                                  for n, f in funcs.items()}
            out[name] = s
        return out
