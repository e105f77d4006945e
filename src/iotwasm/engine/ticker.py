"""The epoch ticker: the thread that advances every engine's epoch, and slows down when idle.

A call's time limit is an epoch deadline: `StoreControl.set_deadline` tells wasmtime to trap
the guest once its engine's epoch has advanced that many ticks past its value at the arm.
The ticker normally increments every engine's epoch once per `epoch_tick_ms` (1 ms), which
costs a few per cent of a core on a node doing nothing.

So it has two modes:

- **normal**: one increment per `period` (`epoch_tick_ms`), as long as any guest call might
  be running;
- **idle**: one increment per `idle_period` (100 ms by default), once no deadline has been
  armed for longer than the runtime's maximum call time plus a margin (`idle_after`) *and*
  the epoch has advanced by at least the largest deadline (`max_ticks`) since the last arm
  it saw. Every call's deadline is at most `max_ticks` (`Runtime.bounded` refuses longer
  limits), so by then every call armed before has either returned or been trapped: the epoch
  is past its deadline and only ever grows, so a guest that is still in a host function
  traps as soon as it is back in wasm. The count of ticks matters as well as the wall clock
  because the epoch runs slower than wall time when the thread is scheduled late.

Every arm stores `armed = True` (one attribute store) and reads `idle` (one bool check);
the ticker clears the flag when it takes note of the arm. An arm that finds the ticker idle
wakes it at once (`wake`), so the new call's deadline counts normal ticks from its start.
The ticker publishes `idle = True` before it looks at `armed` one last time, and an arm
stores `armed` before it reads `idle`: one of the two always sees the other, so an arm never
leaves the ticker asleep.

Slowing down never makes a deadline fire early. A deadline counts increments, not time: in
idle mode the epoch advances by exactly one per idle period, never in a burst to catch up
with the wall clock, so idle epoch time simply runs slow. Were the ticker to add the ticks
it skipped (say 100 at once), a deadline armed just before would see its epoch jump and
trap its call long before its time limit. Waking does not increment either: the first
normal tick comes one period after the wake, and `Runtime.timeout_ticks` already counts the
current tick as partly over.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .runtime import Runtime

#: added to the maximum call time before the ticker may slow down
IDLE_MARGIN_MS = 1000.0
#: the period of one increment while idle
DEFAULT_IDLE_TICK_MS = 100.0


class EpochTicker:
    """The daemon thread that advances a runtime's epochs; see the module docstring."""

    def __init__(self, runtime: Runtime, *, period_s: float, idle_period_s: float,
                 idle_after_s: float, max_ticks: int,
                 clock: Callable[[], float] = time.monotonic):
        """`clock` (seconds, monotonic) measures the idle window only; tests inject one.
        The thread holds the runtime weakly: an abandoned Runtime is collected and the
        thread then ends."""
        #: set by every arm (StoreControl.set_deadline), cleared when the ticker notes it
        self.armed = False
        #: True while the ticker runs at `idle_period`
        self.idle = False
        self.period = period_s
        self.idle_period = idle_period_s
        self.idle_after = idle_after_s
        self.max_ticks = max_ticks
        self._clock = clock
        self._wake = threading.Event()
        #: set once the ticker is told to stop (`stop`)
        self.stopped = threading.Event()
        # a new runtime counts as just armed: it starts at the normal period
        self._seen_at = clock()
        self._seen_epoch = runtime.epoch
        self.thread = threading.Thread(target=self._run, args=(weakref.ref(runtime),),
                                       name="iotwasm-epoch", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        """Back to the normal period now (an arm found the ticker idle)."""
        self._wake.set()

    def stop(self) -> None:
        self.stopped.set()
        self._wake.set()

    def _run(self, runtime_ref: weakref.ref[Runtime]) -> None:
        stop, wake = self.stopped, self._wake
        while True:
            if self.idle:
                woken = wake.wait(self.idle_period)
                if stop.is_set():
                    return
                if woken or self.armed:
                    wake.clear()
                    self.idle = False
                    self._note_arm(runtime_ref)  # the arm that woke us, not yet noted
                    continue  # no increment: the next comes one normal period from now
            elif stop.wait(self.period):
                return
            rt = runtime_ref()
            if rt is None:
                return
            rt._increment_all()
            epoch = rt.epoch
            del rt  # never held across a wait: an abandoned Runtime is collected
            if self.idle:
                continue
            if self.armed:
                self.armed = False
                self._seen_at, self._seen_epoch = self._clock(), epoch
            elif (self._clock() - self._seen_at > self.idle_after
                  and epoch - self._seen_epoch >= self.max_ticks):
                wake.clear()
                self.idle = True
                if self.armed:  # an arm that read `idle` before it was set: stay normal
                    self.idle = False

    def _note_arm(self, runtime_ref: weakref.ref[Runtime]) -> None:
        rt = runtime_ref()
        self.armed = False
        self._seen_at = self._clock()
        if rt is not None:
            self._seen_epoch = rt.epoch
