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

The runner is in four files: its life, rule changes and views here; the message path (the
hop to the runner's thread, the queue's worker, the clock and checkpoints, emissions out to
actions and alerts) in `runner_work`; the actions in `actions`; and what they share (a rule's
definition and what runs of it, the runner's state) in `runner_state`. This module
re-exports their public names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any, Callable

from ...errors import IotwasmError, StorageError
from ...message import Message
from ...supervise import Repeats, StorageHold, cancel_and_wait, supervise
from ..outbox import Outbox
from ..sinks import LocalStore
from ..worker import Worker
from .actions import Action, ActionRunner
from .alerts import AlertDispatcher, AlertTracker
from .engine import RuleEngine
from .runner_state import RuleDefinition, RuleRuntime, policy_digest
from .runner_work import RunnerWork

__all__ = ["Action", "RuleDefinition", "RuleRunner"]

log = logging.getLogger("iotwasm.rules")


class RuleRunner(RunnerWork):
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
        self.rules: dict[str, RuleRuntime] = {}
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
        #: set while any rule is deployed: without one the clock has nothing to tick or to
        #: checkpoint, and waits on this instead of waking ten times a second (made by `start`,
        #: on the loop that runs the clock)
        self._deployed: asyncio.Event | None = None

    # -- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        self._deployed = asyncio.Event()   # set by the next rule deployed; `_clock` looks at `rules`
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

    # -- management --------------------------------------------------------------------------
    async def put(self, d: RuleDefinition) -> None:
        """Create or update a rule (compiled first: a rule that does not compile changes nothing)."""
        name = d.spec.name
        d.spec.alert = d.alert is not None
        rt = RuleRuntime(d)
        for i, a in enumerate(d.actions):
            rt.actions.append(ActionRunner(name, i, a, self))
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
                if saved is not None and saved[0] == policy_digest(d.alert):
                    rt.tracker.load(saved[1])
            rt.dispatcher = AlertDispatcher(name, d.alert, self.outbox, self.bus,
                                            publish_timeout=self.alert_publish_timeout)
            rt.dispatcher.start()
        for ar in rt.actions:
            await ar.start()
        self.rules[name] = rt
        self._rules_changed()
        await self.offload(self._engine_call, self.engine.set_enabled, name, d.enabled)
        await self._resubscribe()

    async def remove(self, name: str) -> None:
        rt = self.rules.pop(name, None)
        self._rules_changed()
        await self.offload(self._engine_call, self.engine.remove, name)
        if rt is not None:
            await self._teardown(rt, 1.0)
        await self._resubscribe()

    def _rules_changed(self) -> None:
        """Wake the clock when the first rule comes, let it sleep when the last one goes."""
        if self._deployed is not None:
            if self.rules:
                self._deployed.set()
            else:
                self._deployed.clear()

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

    async def _teardown(self, rt: RuleRuntime, drain: float) -> None:
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
