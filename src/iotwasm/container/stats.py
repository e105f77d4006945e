"""What a container counts: per instance (calls, messages, errors, execution time, memory, when
it was made and last used) and for the whole container (scaling and evictions)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..engine import Guest

PAGE = 65536


@dataclass
class InstanceStats:
    index: int
    calls: int = 0
    messages: int = 0
    outputs: int = 0
    dead_letters: int = 0
    faults: int = 0                  # dead letters the sandbox caused: traps and limits
    errors: Counter[str] = field(default_factory=Counter)
    fuel_used: int = 0
    memory_pages: int = 0
    peak_memory_pages: int = 0
    recycles: int = 0
    last_latency_ms: float = 0.0
    total_latency_ms: float = 0.0
    #: wall-clock time (epoch seconds) the instance was made, and its last batch ended (None: never used)
    created: float = field(default_factory=time.time)
    last_used: float | None = None

    @property
    def avg_latency_ms(self) -> float:
        return self.total_latency_ms / self.calls if self.calls else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "calls": self.calls, "messages": self.messages,
            "outputs": self.outputs, "dead_letters": self.dead_letters, "faults": self.faults,
            "errors": dict(self.errors), "fuel_used": self.fuel_used,
            "memory_pages": self.memory_pages, "memory_bytes": self.memory_pages * PAGE,
            "peak_memory_bytes": self.peak_memory_pages * PAGE, "recycles": self.recycles,
            "last_latency_ms": round(self.last_latency_ms, 4),
            "avg_latency_ms": round(self.avg_latency_ms, 4),
            "execution_ms": round(self.total_latency_ms, 3),
            "created": self.created, "last_used": self.last_used,
        }


class Slot:
    """One instance in the pool; the attributes the balancing strategies read."""

    __slots__ = ("index", "guest", "weight", "current_weight", "busy", "retired", "busy_seconds",
                 "last_used", "stats", "counted")

    def __init__(self, index: int, guest: Guest, weight: int, now: float = 0.0):
        self.index = index
        self.guest = guest
        self.weight = weight
        self.current_weight = 0
        self.busy = False
        #: taken out of the pool while busy: its guest is closed when its batch releases it
        self.retired = False
        self.busy_seconds = 0.0
        #: the container's clock when it last finished a batch (or was made): idle time and LRU order
        self.last_used = now
        self.stats = InstanceStats(index)
        #: bytes this instance is counted with in the node's budget (None: not counted)
        self.counted: int | None = None
        pages = guest.memory_pages()   # not in use by anyone yet: safe to look at
        self.stats.memory_pages = self.stats.peak_memory_pages = pages

    def memory_pages(self) -> int:
        return self.guest.memory_pages()


def add_up(into: InstanceStats, s: InstanceStats) -> None:
    """Add the counters of an instance that leaves the pool to the container's past."""
    for k in ("calls", "messages", "outputs", "dead_letters", "faults", "fuel_used", "recycles",
              "total_latency_ms"):
        setattr(into, k, getattr(into, k) + getattr(s, k))
    into.errors.update(s.errors)


@dataclass
class ScalingStats:
    """How the pool changed: instances made on demand (`scale_ups`, `from_zero` of them with
    none there), as spares (`prewarmed`), reaped after idling (`scale_downs`), evicted for
    another deployment (`evictions`), and batches that found a spare ready (`warm_hits`)."""
    scale_ups: int = 0
    from_zero: int = 0
    prewarmed: int = 0
    scale_downs: int = 0
    evictions: int = 0
    warm_hits: int = 0
    cold_starts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ContainerStats:
    name: str
    state: str
    module: str
    digest: str
    replicas: int
    restarts: int
    instances: tuple[InstanceStats, ...]
    last_error: str | None
    min_replicas: int = 0
    max_replicas: int = 0
    prewarm: int = 0
    scaling: ScalingStats = field(default_factory=ScalingStats)
    #: what instances no longer in the pool (scaled down, evicted, replaced) did, summed
    past: InstanceStats | None = None

    def totals(self) -> dict[str, Any]:
        """Counters over the container's life: instances that are gone still count."""
        t: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for s in (*self.instances, *([self.past] if self.past else [])):
            t.update(calls=s.calls, messages=s.messages, outputs=s.outputs,
                     dead_letters=s.dead_letters, faults=s.faults, fuel_used=s.fuel_used,
                     recycles=s.recycles)
            errors.update(s.errors)
        return {**t, "errors": dict(errors)}
