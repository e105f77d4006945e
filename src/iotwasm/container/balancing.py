"""Load-balancing strategies: which idle instance of a container takes the next batch.

An instance runs one batch at a time (a wasmtime store is single-threaded), so strategies
choose among the idle instances. They differ in what they optimise:

- round-robin: spread batches evenly in order.
- weighted: smooth weighted round-robin (as nginx does); weights per replica.
- least-in-flight: the instance that has spent the least time busy so far (all idle
  instances have nothing in flight; this keeps long-running work from piling on one).
- least-memory: the instance with the fewest linear-memory pages.
- random: uniform among idle instances.
"""

from __future__ import annotations

import random
from typing import Callable, Protocol, Sequence, TypeVar

from ..errors import ConfigError


class Candidate(Protocol):
    index: int
    weight: int
    current_weight: int
    busy_seconds: float

    def memory_pages(self) -> int: ...


#: the pool's own instance type: a strategy hands back one of the candidates it was given
C = TypeVar("C", bound=Candidate)


class Strategy(Protocol):
    name: str

    def pick(self, idle: Sequence[C], total: int) -> C: ...


class RoundRobin:
    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def pick(self, idle: Sequence[C], total: int) -> C:
        # the first idle instance at or after the cursor, in ring order
        best = min(idle, key=lambda c: (c.index - self._next) % total)
        self._next = (best.index + 1) % total
        return best


class Weighted:
    name = "weighted"

    def pick(self, idle: Sequence[C], total: int) -> C:
        for c in idle:
            c.current_weight += c.weight
        best = max(idle, key=lambda c: c.current_weight)
        best.current_weight -= sum(c.weight for c in idle)
        return best


class LeastInFlight:
    name = "least-in-flight"

    def pick(self, idle: Sequence[C], total: int) -> C:
        return min(idle, key=lambda c: (c.busy_seconds, c.index))


class LeastMemory:
    name = "least-memory"

    def pick(self, idle: Sequence[C], total: int) -> C:
        return min(idle, key=lambda c: (c.memory_pages(), c.index))


class Random:
    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def pick(self, idle: Sequence[C], total: int) -> C:
        return self._rng.choice(list(idle))


STRATEGIES: dict[str, Callable[[], Strategy]] = {cls.name: cls for cls in (RoundRobin, Weighted, LeastInFlight, LeastMemory, Random)}


def make_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ConfigError(f"unknown load-balancing strategy {name!r} "
                          f"(known: {', '.join(STRATEGIES)})") from None
