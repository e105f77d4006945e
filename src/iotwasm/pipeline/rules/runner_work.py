"""The rules' message path: the queue's worker, the clock, checkpoints, and the emissions out
to actions and alerts.

Split from `runner` (`RuleRunner`: life, rule changes, views). `RunnerWork` is a mixin of
`RuleRunner`: it owns the hop to the runner's thread (`offload`, and `_engine_call` for the
engine's turns there), takes what is queued in batches to that thread, runs the clock's
ticks and checkpoints, and hands what the engine emits to each rule's actions and alert,
holding them while the storage fails. It stands alone as the part of the runner every
message goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any, Callable

from ...errors import IotwasmError, StorageError
from ...message import Message
from .engine import Emission
from .runner_state import RunnerState, policy_digest

log = logging.getLogger("iotwasm.rules")


class RunnerWork(RunnerState):
    """The message path of `RuleRunner` (a mixin: the state lives on the runner)."""

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
                store.save([(f"alert:{n}", policy_digest(rt.tracker.policy), rt.tracker.dump())
                            for n, rt in list(self.rules.items()) if rt.tracker is not None])

    def _process(self, by_filter: dict[str, list[Message]]) -> list[Emission]:
        out: list[Emission] = []
        with self._lock:
            for f, msgs in by_filter.items():
                out += self.engine.process(msgs, only=f)
        return out

    async def _clock(self) -> None:
        """Close windows that are due every `tick_s`, and checkpoint every `checkpoint_s`.
        With no rule deployed it sleeps until one is (`_deployed`); with rules but none that
        has windows it makes no tick (no hop to the engine's thread), only the checkpoints."""
        last_cp = time.monotonic()
        while True:
            deployed = self._deployed
            if deployed is not None and not self.rules:
                await deployed.wait()
                last_cp = time.monotonic()
            await asyncio.sleep(self.tick_s)
            if self.engine.needs_ticks():
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
