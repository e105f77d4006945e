"""What a container is told (its restart policy) and what it tells (its statistics).

Plain data, kept apart from the pool and lifecycle logic of container.py.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from ..backoff import Backoff
from ..errors import ConfigError


@dataclass(frozen=True)
class RestartPolicy:
    """When and how fast a container in error is brought back.

    - ``on-failure`` (default): restart after runtime failures (init trap, crash loop), not
      after permanent ones (invalid module, ABI or capability errors), at most `max_restarts`.
    - ``always``: restart after any error, permanent ones included.
    - ``never``: stay in error until someone calls `restart()`.

    Backoff starts at `backoff_s`, doubles per consecutive failed attempt up to
    `max_backoff_s`, and resets after `reset_after_s` of healthy running. Each wait is the
    shared `iotwasm.backoff.Backoff`: up to `jitter` (a share) shorter than that, so the
    containers of many nodes that failed together do not all come back at the same moment.
    """

    mode: str = "on-failure"
    backoff_s: float = 0.5
    max_backoff_s: float = 60.0
    max_restarts: int | None = None
    reset_after_s: float = 60.0
    #: consecutive batches in which every message failed by trap or limit = a crash loop
    crash_loop_batches: int = 10
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.mode not in ("always", "on-failure", "never"):
            raise ConfigError(f"restart policy {self.mode!r} is not one of always, on-failure, never")
        try:
            self.backoff(random.Random(0))
        except ValueError as e:
            raise ConfigError(f"restart policy: {e}") from None

    def backoff(self, rng: random.Random | None = None) -> Backoff:
        """The retry delays this policy asks for (one per container: it counts failures)."""
        return Backoff(self.backoff_s, self.max_backoff_s, jitter=self.jitter, rng=rng)

    def delay(self, attempt: int) -> float:
        """The longest wait before restart attempt `attempt` (1 = after the first failure)."""
        return self.backoff(random.Random(0)).ceiling(attempt)


@dataclass
class InstanceStats:
    index: int
    calls: int = 0
    messages: int = 0
    outputs: int = 0
    dead_letters: int = 0
    faults: int = 0                  # dead letters the sandbox caused: traps and limits
    errors: Counter = field(default_factory=Counter)
    fuel_used: int = 0
    memory_pages: int = 0
    recycles: int = 0
    last_latency_ms: float = 0.0
    total_latency_ms: float = 0.0

    @property
    def avg_latency_ms(self) -> float:
        return self.total_latency_ms / self.calls if self.calls else 0.0

    def to_dict(self) -> dict:
        return {
            "index": self.index, "calls": self.calls, "messages": self.messages,
            "outputs": self.outputs, "dead_letters": self.dead_letters, "faults": self.faults,
            "errors": dict(self.errors), "fuel_used": self.fuel_used,
            "memory_pages": self.memory_pages, "recycles": self.recycles,
            "last_latency_ms": round(self.last_latency_ms, 4),
            "avg_latency_ms": round(self.avg_latency_ms, 4),
        }


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

    def totals(self) -> dict:
        t = Counter()
        errors: Counter = Counter()
        for s in self.instances:
            t.update(calls=s.calls, messages=s.messages, outputs=s.outputs,
                     dead_letters=s.dead_letters, faults=s.faults, fuel_used=s.fuel_used,
                     recycles=s.recycles)
            errors.update(s.errors)
        return {**t, "errors": dict(errors)}
