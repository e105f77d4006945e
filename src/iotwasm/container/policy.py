"""What a container is told about failures: its restart policy.

Plain data, kept apart from the lifecycle logic of container.py (what a container tells, its
statistics, is in container/stats.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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
        if isinstance(self.crash_loop_batches, bool) or not isinstance(self.crash_loop_batches, int) \
                or self.crash_loop_batches < 1:
            raise ConfigError(f"restart policy: crash_loop_batches {self.crash_loop_batches!r} "
                              "must be a whole number of batches, at least 1")
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

