"""Fault injection: delay or fail a share of a route's step calls or sink deliveries, on
purpose, to see what a pipeline does when things go wrong (breakers, dead letters, replay,
alerts) before the field shows it.

Off unless a route's manifest asks for it (`faults:`); the node records an event and logs a
warning whenever such a route starts, so injected failures are never mistaken for real ones,
and every injected failure says so (`fault_injected: ...`).

- a step: each call is delayed with probability `delay_rate` (the sleep runs on the lane's
  worker thread, like the call it delays, and counts against nothing but the lane's time);
  each message fails with probability `fail_rate` and becomes a dead letter, the others go
  through the step as usual;
- a sink: each batch handed to it is delayed with probability `delay_rate` (on the loop,
  without blocking it) and fails as a whole with probability `fail_rate` (its messages become
  dead letters, as a sink refusing them would make them).

The draws come from a generator of the fault's own, seeded when `seed` is given.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import IotwasmError
from ..message import BatchResult, DeadLetter, Message
from ..messaging.bus import settled
from .split import merge_share


class FaultInjected(IotwasmError):
    kind = "fault_injected"


@dataclass(frozen=True)
class Faults:
    delay_s: float = 0.0
    delay_rate: float = 0.0
    fail_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for what, v in (("delay share", self.delay_rate), ("failure share", self.fail_rate)):
            if not 0 <= v <= 1:
                raise ValueError(f"fault {what} {v} is not between 0 and 1")
        if self.delay_s < 0:
            raise ValueError(f"fault delay {self.delay_s} is negative")

    def describe(self) -> str:
        parts = []
        if self.delay_rate and self.delay_s:
            parts.append(f"delay {self.delay_s * 1000:g}ms on {self.delay_rate:.0%} of calls")
        if self.fail_rate:
            parts.append(f"fail {self.fail_rate:.0%}")
        return ", ".join(parts) or "none"


class _Injector:
    """What a step and a sink with injected faults share: the thing wrapped, its faults, a
    random source seeded by them (a seed makes a run repeatable) and what was injected."""

    def __init__(self, inner: Any, faults: Faults):
        self.inner = inner
        self.faults = faults
        self.name = inner.name
        self._rng = random.Random(faults.seed)
        self.stats = {"delayed": 0, "failed": 0}

    def describe(self) -> dict:
        return {"faults": self.faults.describe(), **self.stats}


class FaultyStep(_Injector):
    """A route step with injected delays and failures in front of it."""

    @property
    def acl(self):
        return self.inner.acl

    def process(self, messages: Sequence[Message]) -> BatchResult:
        f, rng = self.faults, self._rng
        if f.delay_rate and rng.random() < f.delay_rate:
            self.stats["delayed"] += 1
            time.sleep(f.delay_s)   # on the lane's worker thread, as the call itself
        if not f.fail_rate:
            return self.inner.process(messages)
        fail = [rng.random() < f.fail_rate for _ in messages]
        result = BatchResult()
        for i, m in enumerate(messages):
            if fail[i]:
                result.dead_letters.append(DeadLetter(i, m, FaultInjected(
                    f"step {self.name}: injected failure ({f.describe()})")))
        self.stats["failed"] += sum(fail)
        keep = [i for i, x in enumerate(fail) if not x]
        if keep:
            merge_share(result, self.inner.process([messages[i] for i in keep]), keep)
        return result


class FaultySink(_Injector):
    """A sink with injected delays and failures in front of it; everything else (start,
    stop, backlog, breaker) is the sink's own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _inject(self, messages: list[Message]) -> list | None:
        f, rng = self.faults, self._rng
        if f.delay_rate and rng.random() < f.delay_rate:
            self.stats["delayed"] += 1
            await asyncio.sleep(f.delay_s)
        if f.fail_rate and rng.random() < f.fail_rate:
            self.stats["failed"] += len(messages)
            err = FaultInjected(f"sink {self.name}: injected failure ({f.describe()})")
            return [(i, err) for i in range(len(messages))]
        return None

    async def deliver(self, messages: list[Message], variables: list[dict]) -> list:
        failed = await self._inject(messages)
        if failed is not None:
            return failed
        return await self.inner.deliver(messages, variables)

    async def submit(self, messages: list[Message], variables: list[dict]):
        failed = await self._inject(messages)
        if failed is not None:
            return settled(failed)
        submit = getattr(self.inner, "submit", None)
        if submit is None:
            return settled(await self.inner.deliver(messages, variables))
        return await submit(messages, variables)
