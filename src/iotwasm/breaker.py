"""A circuit breaker: stop calling an uplink that keeps failing, probe it now and then.

Retries with backoff (`backoff.Backoff`) make one caller wait between attempts; a breaker
makes every caller of the same uplink stop at once, and says so: its state is visible in the
metrics and in `describe`, so an operator sees "webhook open since 12:03, 41 calls refused"
rather than a log full of timeouts.

    closed ──(N consecutive failures, or a failure rate over the last W calls)──▶ open
    open ──(open_for elapsed)──▶ half-open: up to `probes` calls go through
    half-open ──(a probe succeeds)──▶ closed      half-open ──(a probe fails)──▶ open, longer

Each time it opens again without having closed in between, the open period doubles up to
`max_open_for`; closing resets it. What a refused call does is the caller's choice (the
pipeline's sinks keep the messages in the outbox, or dead-letter them when there is none).

The clock is injectable: tests pass their own and step it instead of sleeping.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from .backoff import Backoff
from .errors import IotwasmError

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
#: the number metrics export for each state
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitOpen(IotwasmError):
    """A call refused because the breaker in front of its target is open."""

    kind = "circuit_open"
    status_code = 503
    title = "Circuit open"


class CircuitBreaker:
    """Counts outcomes of calls to one target; `allow()` before a call, then `success()` or
    `failure(err)` after it. Not thread-safe: use it from one event loop."""

    def __init__(self, name: str, *, failures: int = 5, failure_rate: float | None = None,
                 window: int = 20, open_for: float = 1.0, max_open_for: float = 30.0,
                 probes: int = 1, clock: Callable[[], float] = time.monotonic):
        if failures < 1:
            raise ValueError(f"breaker {name}: failures {failures} must be at least 1")
        if failure_rate is not None and not 0 < failure_rate <= 1:
            raise ValueError(f"breaker {name}: failure rate {failure_rate} must be in (0, 1]")
        if window < 1 or probes < 1:
            raise ValueError(f"breaker {name}: window and probes must be at least 1")
        self.name = name
        self.threshold = failures
        self.failure_rate = failure_rate
        self.probes = probes
        self.clock = clock
        self._open_for = Backoff(open_for, max_open_for, jitter=0)
        self._recent: deque[bool] = deque(maxlen=window)   # True: a failure
        self.state = CLOSED
        self.consecutive = 0
        self.retry_at = 0.0
        self._probing = 0
        # counters (metrics)
        self.opened = 0
        self.rejected = 0
        self.successes = 0
        self.failures = 0
        self.last_error: str | None = None
        self.changed_at = clock()

    # -- the protocol --------------------------------------------------------------------
    def allow(self) -> bool:
        """Whether a call may go out now; counts a refusal when not."""
        if self.state == OPEN and self.clock() >= self.retry_at:
            self._set(HALF_OPEN)
            self._probing = 0
        if self.state == CLOSED:
            return True
        if self.state == HALF_OPEN and self._probing < self.probes:
            self._probing += 1
            return True
        self.rejected += 1
        return False

    def success(self) -> None:
        self.successes += 1
        self.consecutive = 0
        self._recent.append(False)
        if self.state != CLOSED:
            self._set(CLOSED)
            self._open_for.reset()
            self._recent.clear()

    def failure(self, error: object = None) -> None:
        self.failures += 1
        self.consecutive += 1
        self._recent.append(True)
        if error is not None:
            self.last_error = str(error)[:500]
        if self.state == HALF_OPEN or (self.state == CLOSED and self._tripped()):
            self._open()

    def refusal(self) -> CircuitOpen:
        """The error a refused call reports: what is open, why, and until when."""
        left = max(0.0, self.retry_at - self.clock())
        return CircuitOpen(f"circuit of {self.name} is open after {self.consecutive} failure(s) "
                           f"(last: {self.last_error or 'unknown'}); next probe in {left:.1f}s")

    def wait_s(self) -> float:
        """How long until a call may go out again (0 when one may now)."""
        if self.state == OPEN:
            return max(0.0, self.retry_at - self.clock())
        if self.state == HALF_OPEN and self._probing >= self.probes:
            return self._open_for.initial   # a probe is out: its outcome decides
        return 0.0

    # -- internals -----------------------------------------------------------------------
    def _tripped(self) -> bool:
        if self.consecutive >= self.threshold:
            return True
        r = self._recent
        return (self.failure_rate is not None and len(r) == r.maxlen
                and sum(r) / len(r) >= self.failure_rate)

    def _open(self) -> None:
        self.opened += 1
        self.retry_at = self.clock() + self._open_for.next()
        self._set(OPEN)

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.changed_at = self.clock()

    def describe(self) -> dict:
        return {"state": self.state, "consecutive_failures": self.consecutive, "opened": self.opened,
                "rejected": self.rejected, "successes": self.successes, "failures": self.failures,
                "last_error": self.last_error, "retry_in_s": round(self.wait_s(), 3)
                if self.state != CLOSED else None}
