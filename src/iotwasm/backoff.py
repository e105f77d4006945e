"""Exponential backoff with jitter: how long a retry loop waits before its next attempt.

Every loop that retries something that failed (reconnecting to a broker, forwarding the
outbox, restarting a container, re-sending an alert) waits the same way: the delay starts
at `initial`, grows by `factor` per consecutive failure up to `maximum`, and goes back to
`initial` after a success. Jitter takes a random share of each delay away, so that many
nodes (or many routes of one node) that lost the same broker at the same moment do not all
come back in lock-step and knock it over again.

The random source is injectable: tests pass a seeded `random.Random` (or `jitter=0`) and
get delays they can state exactly.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays for consecutive failures: ``initial · factor^(n-1)``, capped, minus jitter.

    With ``jitter=j`` each delay is drawn uniformly from ``[d·(1-j), d]``: never longer than
    the plain exponential delay, never shorter than ``(1-j)`` of it.
    """

    __slots__ = ("initial", "maximum", "factor", "jitter", "_rng", "failures")

    def __init__(self, initial: float, maximum: float, *, factor: float = 2.0,
                 jitter: float = 0.2, rng: random.Random | None = None):
        if initial <= 0 or maximum < initial:
            raise ValueError(f"backoff needs 0 < initial ({initial}) <= maximum ({maximum})")
        if factor < 1:
            raise ValueError(f"backoff factor {factor} must be at least 1")
        if not 0 <= jitter <= 1:
            raise ValueError(f"backoff jitter {jitter} must be between 0 and 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        #: consecutive failures since the last success
        self.failures = 0

    def ceiling(self, failures: int) -> float:
        """The delay after `failures` consecutive failures, before jitter."""
        if failures <= 0:
            return 0.0
        # cap the exponent: past the maximum the power only risks an overflow
        step = min(failures - 1, 64)
        return min(self.maximum, self.initial * self.factor ** step)

    def next(self) -> float:
        """Count one more failure and return how long to wait before the next attempt."""
        self.failures += 1
        d = self.ceiling(self.failures)
        if self.jitter:
            d -= d * self.jitter * self._rng.random()
        return d

    def reset(self) -> None:
        """A success: the next failure waits `initial` again."""
        self.failures = 0
