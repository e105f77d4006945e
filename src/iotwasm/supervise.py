"""Work that must go on: background tasks restarted after failures, and storage failures held.

Two helpers, for the two ways a node keeps going when something below it fails (and
`cancel_and_wait`, for stopping the tasks they run, and `until_beat`, for pacing them):

* `supervise` runs a background task that must live as long as its owner (an outbox
  forwarder, the manifest watch, the rules' worker and clock, the metric alerts). An
  unexpected exception is logged once with its traceback, the same failure again only as a
  periodic count (`Repeats`), and the task is started again after a `Backoff` — it never
  silently stays dead, and a failure that repeats every millisecond does not fill the log.
* `StorageHold` retries one piece of work (a sink taking a batch, a dead-letter write, an
  outbox delete) for as long as it fails with a `StorageError`, and says meanwhile why: a
  full disk is backpressure, never an acknowledgement and never a loss. The work goes on by
  itself once the space is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .backoff import Backoff
from .errors import IotwasmError, StorageError

T = TypeVar("T")

_log = logging.getLogger("iotwasm.supervise")


async def cancel_and_wait(*tasks: asyncio.Task | None) -> None:
    """Cancel `tasks` and return once every one of them has ended (None entries are skipped).

    Why: whoever stops its tasks goes on to close what they use (a client, a connection, a
    database) or to report itself stopped. A task that was only asked to stop could still be
    running then; waiting makes a stopped thing stopped.

    A task that ended by cancellation is what was asked for. One that ended with an exception
    (before it was cancelled, or while it wound down) is logged with its traceback and not
    raised: the caller still has things to close, and the failure was the task's, not the
    stop's. If the caller itself is cancelled while waiting, that cancellation propagates
    (`await task` inside ``except CancelledError: pass`` swallowed it).
    """
    running = [t for t in tasks if t is not None]
    for t in running:
        t.cancel()
    if not running:
        return
    await asyncio.wait(running)
    for t in running:
        if t.cancelled():
            continue
        e = t.exception()
        if e is not None:
            _log.error("task %s had ended with an error when it was stopped: %s: %s",
                       t.get_name(), type(e).__name__, e, exc_info=e)


def until_beat(period_s: float) -> float:
    """Seconds from now to the next whole multiple of `period_s` on the running loop's clock.

    Why: a node's periodic jobs (the manifest sync and instance upkeep, the dashboard's
    samples, the alert evaluation) each kept a timer of its own, and a quiet node woke once
    per job per second. Jobs that sleep this long fall due at the same instant, and the loop
    runs them in one turn: one wake-up per period between them all. A period that is not
    positive is no wait (as `asyncio.sleep(0)` was)."""
    if not period_s > 0:
        return 0.0
    return period_s - asyncio.get_running_loop().time() % period_s


class Repeats:
    """Logs failures without flooding: the first of a kind once (with its traceback when it
    is not one of iotwasm's own one-line errors), repeats of the same kind (type and
    message) as one count per `every` seconds."""

    def __init__(self, log: logging.Logger, what: str, *, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.what = what
        self.every = every
        self.clock = clock
        #: kind -> [time of the last line about it, repeats not yet reported]
        self._seen: dict[tuple[str, str], list] = {}

    def failed(self, e: BaseException) -> None:
        kind = (type(e).__name__, str(e))
        now = self.clock()
        seen = self._seen.get(kind)
        if seen is None:
            if len(self._seen) >= 64:    # bounded: the oldest kinds are forgotten
                self._seen.pop(next(iter(self._seen)))
            self._seen[kind] = [now, 0]
            if isinstance(e, IotwasmError):   # one line by design: no traceback
                self.log.error("%s failed: %s", self.what, e)
            else:
                self.log.error("%s failed: %s: %s", self.what, kind[0], e, exc_info=e)
            return
        seen[1] += 1
        if now - seen[0] >= self.every:
            self.log.warning("%s failed again %d time(s) in the last %.0fs: %s: %s",
                             self.what, seen[1], now - seen[0], kind[0], e)
            seen[0], seen[1] = now, 0


def supervise(name: str, run: Callable[[], Awaitable[None]], *, log: logging.Logger,
              backoff: Backoff | None = None, healthy_after: float = 30.0,
              summary_every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> asyncio.Task:
    """Start `run()` as a task that is started again whenever it raises.

    A run that returns ends the task; cancelling the task stops it. After a run that lasted
    `healthy_after` seconds the backoff starts from its initial delay again.
    """
    backoff = backoff or Backoff(0.1, 30.0)
    repeats = Repeats(log, name, every=summary_every, clock=clock)

    async def supervised() -> None:
        while True:
            started = clock()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - what supervision is for
                if clock() - started >= healthy_after:
                    backoff.reset()
                repeats.failed(e)
            await asyncio.sleep(backoff.next())

    return asyncio.get_running_loop().create_task(supervised(), name=name)


class StorageHold:
    """Retries work while it fails on storage; `error` says why while anything is held.

    One per holder (a route, a forwarder, the rules): `error` is the last `StorageError`
    seen while some work of this holder waits, None otherwise — what readiness reports.
    """

    def __init__(self, who: str, log: logging.Logger, *, initial: float = 0.05, maximum: float = 2.0):
        self.who = who
        self.log = log
        self.initial = initial
        self.maximum = maximum
        self.error: StorageError | None = None
        #: attempts that failed on storage, over the holder's life
        self.retries = 0
        self._held = 0

    async def run(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`await attempt()`, again and again while it raises `StorageError`."""
        backoff: Backoff | None = None
        done = False
        try:
            while True:
                try:
                    result = await attempt()
                    done = True
                    return result
                except StorageError as e:
                    if backoff is None:
                        backoff = Backoff(self.initial, self.maximum)
                        self._held += 1
                        if self.error is None:
                            self.log.warning("%s: %s; holding the work and retrying until it can be stored",
                                             self.who, e)
                    self.error = e
                    self.retries += 1
                    await asyncio.sleep(backoff.next())
        finally:
            if backoff is not None:
                self._held -= 1
                if not self._held and self.error is not None:
                    self.error = None
                    if done:
                        self.log.warning("%s: storage writable again; held work goes on", self.who)
