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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError, ContainerUnavailable

if TYPE_CHECKING:
    from .container import WasmContainer

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

    Containers register when made and leave when stopped. `admit` is called before a container
    instantiates (with its reservation already counted, see `WasmContainer._grow`); it evicts
    least-recently-used idle instances of other containers until the new one fits. Lock order:
    the budget's lock, then a container's — a container never calls the budget while it holds
    its own lock.
    """

    def __init__(self, max_instances: int | None = None, max_memory: int | None = None):
        self.max_instances = max_instances
        self.max_memory = max_memory
        self._lock = threading.Lock()
        self._containers: list[WasmContainer] = []
        self.evictions = 0
        self.refusals = 0

    def register(self, c: WasmContainer) -> None:
        with self._lock:
            if c not in self._containers:
                self._containers.append(c)

    def unregister(self, c: WasmContainer) -> None:
        with self._lock:
            if c in self._containers:
                self._containers.remove(c)

    def usage(self) -> tuple[int, int]:
        """(instances, bytes of linear memory) held now, reservations included."""
        with self._lock:
            return self._usage()

    def _usage(self) -> tuple[int, int]:
        n = mem = 0
        for c in self._containers:
            k, m = c.holding()
            n, mem = n + k, mem + m
        return n, mem

    def admit(self, c: WasmContainer, need_bytes: int) -> None:
        """Make room for one more instance of `c` (already reserved in its count) of about
        `need_bytes` of memory, evicting idle instances elsewhere; BudgetSpent when it cannot."""
        if self.max_instances is None and self.max_memory is None:
            return
        with self._lock:
            while True:
                n, mem = self._usage()
                over_n = self.max_instances is not None and n > self.max_instances
                over_m = self.max_memory is not None and mem + need_bytes > self.max_memory
                if not over_n and not over_m:
                    return
                if not self._evict_one(exclude=c):
                    self.refusals += 1
                    what = (f"{n - 1} of {self.max_instances} instances" if over_n else
                            f"{mem:,} of {self.max_memory:,} bytes of memory")
                    raise BudgetSpent(f"the node's instance budget is spent ({what} in use) and no idle "
                                      "instance of another deployment may be evicted", module=c.name)

    def _evict_one(self, exclude: WasmContainer) -> bool:
        """Close the least recently used idle instance above its container's min, anywhere but
        in `exclude`. False when there is none."""
        while True:
            best = None
            for c in self._containers:
                if c is exclude:
                    continue
                when = c.evictable()
                if when is not None and (best is None or when < best[0]):
                    best = (when, c)
            if best is None:
                return False
            if best[1].evict_idle():
                self.evictions += 1
                return True
            # taken by a batch meanwhile: look again
