"""Instances on demand: how many instances a container may keep (`Scaling`) and the node-wide
budget they share (`InstanceBudget`).

A container keeps between `min` and `max` instances. It grows on demand — a batch that finds
every instance busy (or none at all: scale from zero) instantiates a new one, up to `max`, on
the caller's thread, never on an event loop — and shrinks when instances idle: `maintain()`
closes those unused for `cooldown_s` down to `min` (with `min: 0`, to none at all) while it
keeps `prewarm` spares instantiated beyond the instances in use, so that the next batch after
idling does not pay instantiation. A fixed `replicas: N` is `min = max = N`.

The budget caps the instances (and their linear memory) of every container of a node. A
container that needs an instance while the budget is spent evicts the least recently used idle
instance of another container — never a busy one (an instance in use is never closed) and
never below that container's `min`. When nothing can be evicted the batch waits for an
instance of its own container, or, with none, is refused (`ContainerUnavailable`, nothing
consumed): its route holds the messages and tries again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from ..errors import ConfigError, ContainerUnavailable


class Evictable(Protocol):
    """What the budget needs of a container (`WasmContainer`, through its pool)."""

    name: str

    def evict_idle(self) -> bool: ...

#: how long an instance above `min` may idle before it is closed, unless a manifest says otherwise
DEFAULT_COOLDOWN_S = 30.0


@dataclass(frozen=True)
class Scaling:
    min: int
    max: int
    prewarm: int = 0
    cooldown_s: float = DEFAULT_COOLDOWN_S

    @classmethod
    def fixed(cls, n: int) -> Scaling:
        return cls(n, n)

    def check(self, max_instances: int, name: str) -> None:
        if not 0 <= self.min <= self.max:
            raise ConfigError(f"replicas min {self.min} must be between 0 and max {self.max}", module=name)
        if not 1 <= self.max <= max_instances:
            raise ConfigError(f"replicas {self.max} must be between 1 and max_instances {max_instances}",
                              module=name)
        if not 0 <= self.prewarm <= self.max:
            raise ConfigError(f"prewarm {self.prewarm} must be between 0 and replicas max {self.max}",
                              module=name)
        if self.cooldown_s < 0:
            raise ConfigError(f"cooldown {self.cooldown_s}s must not be negative", module=name)

    @property
    def elastic(self) -> bool:
        return self.min != self.max


class BudgetSpent(ContainerUnavailable):
    """The node's instance budget is spent and no idle instance elsewhere may be evicted."""


class InstanceBudget:
    """The instances (and linear memory) every container of a node may hold together.

    Kept as running totals, so that an admission costs the same with ten deployments or a
    hundred thousand: containers add and remove what they hold (`add`), and put themselves at
    the back of a least-recently-used order when one of their instances goes idle (`touch`).
    `admit` is called before a container instantiates; it reserves the instance and, while the
    budget is spent, evicts an idle instance of the container at the front of that order —
    the one whose instances were used least recently — skipping (and dropping from the order)
    containers with none to give, until the new one fits.

    Locks: admissions take `_lock`, one at a time, and may then take a container's lock to
    evict; the totals and the order have a lock of their own (`_acct`) under which nothing
    else is ever taken, so containers update them while holding their own lock.
    """

    def __init__(self, max_instances: int | None = None, max_memory: int | None = None):
        self.max_instances = max_instances
        self.max_memory = max_memory
        self._lock = threading.Lock()
        self._acct = threading.Lock()
        self.instances = 0
        self.memory = 0
        self._lru: OrderedDict[Evictable, None] = OrderedDict()
        self.evictions = 0
        self.refusals = 0

    @property
    def limited(self) -> bool:
        return self.max_instances is not None or self.max_memory is not None

    def add(self, instances: int, memory: int) -> None:
        with self._acct:
            self.instances += instances
            self.memory += memory

    def touch(self, c: Evictable) -> None:
        """`c` has an idle instance now: it goes to the back of the eviction order."""
        with self._acct:
            self._lru[c] = None
            self._lru.move_to_end(c)

    def forget(self, c: Evictable) -> None:
        with self._acct:
            self._lru.pop(c, None)

    def usage(self) -> tuple[int, int]:
        """(instances, bytes of linear memory) held now, reservations included."""
        with self._acct:
            return self.instances, self.memory

    def admit(self, c: Evictable, need_bytes: int) -> None:
        """Reserve one more instance of `c` of about `need_bytes` of memory, evicting idle
        instances elsewhere while the budget is spent; BudgetSpent when nothing can go."""
        with self._lock:
            while True:
                with self._acct:
                    n, mem = self.instances, self.memory
                    over_n = self.max_instances is not None and n + 1 > self.max_instances
                    over_m = self.max_memory is not None and mem + need_bytes > self.max_memory
                    if not over_n and not over_m:
                        self.instances += 1
                        self.memory += need_bytes
                        return
                if not self._evict_one(exclude=c):
                    self.refusals += 1
                    what = (f"{n} of {self.max_instances} instances" if over_n else
                            f"{mem:,} of {self.max_memory:,} bytes of memory")
                    raise BudgetSpent(f"the node's instance budget is spent ({what} in use) and no idle "
                                      "instance of another deployment may be evicted", module=c.name)

    def _evict_one(self, exclude: Evictable) -> bool:
        """Evict the least recently used idle instance of a container other than `exclude`
        (never a busy one, never below its min). False when there is none."""
        passed: list[Evictable] = []
        try:
            while True:
                with self._acct:
                    if not self._lru:
                        return False
                    c, _ = self._lru.popitem(last=False)
                if c is exclude:
                    passed.append(c)
                    continue
                if c.evict_idle():
                    self.evictions += 1
                    passed.append(c)   # it may have more to give: it keeps its place
                    return True
                # nothing to give now: out of the order until one of its instances idles again
        finally:
            with self._acct:
                for c in reversed(passed):
                    if c not in self._lru:
                        self._lru[c] = None
                        self._lru.move_to_end(c, last=False)
