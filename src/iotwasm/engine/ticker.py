"""The epoch ticker: the thread that advances every engine's epoch, and sleeps between calls.

A call's time limit is an epoch deadline: `StoreControl.set_deadline` tells wasmtime to trap
the guest once its engine's epoch has advanced that many ticks past its value at the arm.
The ticker increments every engine's epoch once per `epoch_tick_ms` (1 ms). Only a running
call needs those ticks, and a node that handles a message now and then runs guest code for
microseconds a second: ticking all the time woke its process 1,000 times a second, which at
10 messages a second was most of the node's CPU.

So the ticker knows which calls are running. Every call into a guest is bracketed by
`enter` and `leave` (`StoreControl.enter`/`leave`; the native batch call does the same in C),
and the ticker has two modes:

- **normal**: one increment per `period` (`epoch_tick_ms`), while a call is running or one
  was armed or started within the last `idle_after` (`IDLE_AFTER_TICKS` periods: none, so
  the ticker slows at the first tick that finds no call running and none started since the
  tick before; a wake costs no more than the ticks it saves, docs/benchmarks.md, "The ticker
  slows at the first quiet tick");
- **idle**: one increment per `idle_period` (1 s by default), once no call is running
  and none was armed or started for `idle_after`.

No call can be running while the ticker is idle: it goes idle only when it sees none
running, and a call's `enter` brings it back. Every `enter` (and every arm) sets `armed`
and reads `idle`; the ticker clears the flag when it takes note of it. One that finds the
ticker idle wakes it at once (`wake`), so the call's deadline counts normal ticks from its
start. The ticker publishes `idle = True` before it looks at `armed` and `running` one last
time, and an `enter` stores both before it reads `idle`: one of the two always sees the
other, so no call is left with the ticker asleep. The idle ticks are a second line of
defence: an idle ticker that finds a call running at its next idle tick goes back to normal.

Slowing down never makes a deadline fire early. A deadline counts increments, not time: in
idle mode the epoch advances by exactly one per idle period, never in a burst to catch up
with the wall clock, so idle epoch time simply runs slow. Were the ticker to add the ticks
it skipped (say 100 at once), a deadline armed just before would see its epoch jump and
trap its call long before its time limit. Waking does not increment either: the first
normal tick comes one period after the wake, and `Runtime.timeout_ticks` already counts the
current tick as partly over.

The thread starts with the first store (`StoreControl`, `start`), not with the runtime: a
process that only loads and inspects modules (the CLI, an upload's validation) never starts
one, and a load is not slowed by a thread that ticks beside it (changing code mappings
interrupts the process's other running threads; docs/benchmarks.md, "Cached load").

Two implementations follow these rules. `NativeTicker` (the default) runs them in a thread
of its own written in C (`native/epoch_ticker.c`, built by scripts/setup.sh into
`native/libiotwasm_ticker.so`): it never takes the GIL, so its ticks neither wake the
interpreter nor force the event loop's thread to hand the GIL over. `ThreadTicker` is the
same in a Python thread, used when the library is not built (a package installed without
scripts/setup.sh) or when asked for (`Runtime(ticker="thread")`). Both read the idle window
on `time.monotonic` or on a `ManualClock` a test moves by hand.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time
from pathlib import Path
from typing import Callable, Protocol

import wasmtime
from wasmtime import _ffi

from ..errors import ConfigError

#: normal periods without a call before the ticker slows down (`idle_after`): none, it slows
#: at the first tick with no call running and none armed or started since the tick before
IDLE_AFTER_TICKS = 0
#: the period of one increment while idle
DEFAULT_IDLE_TICK_MS = 1000.0
#: the native ticker's library, built from native/epoch_ticker.c by scripts/setup.sh
NATIVE_LIBRARY = Path(__file__).parent / "native" / "libiotwasm_ticker.so"
TICKER_KINDS = ("auto", "native", "thread")


class ManualClock:
    """A monotonic clock (seconds) that only moves when told: tests measure the idle window
    on it. Its time lives in a native cell, so the native ticker reads it too."""

    def __init__(self, now: float = 0.0):
        self.cell = ctypes.c_int64(round(now * 1e9))

    @property
    def now(self) -> float:
        return self.cell.value / 1e9

    @now.setter
    def now(self, value: float) -> None:
        self.cell.value = round(value * 1e9)

    def __call__(self) -> float:
        return self.now


class EpochTicker(Protocol):
    """What the runtime and every store's control need of a ticker."""

    #: the number of increments so far, bumped after every engine's
    epoch_cell: ctypes.c_int64
    idle_after: float
    #: set once the ticker's thread has been told to stop
    stopped: threading.Event

    @property
    def idle(self) -> bool: ...

    @property
    def running(self) -> int:
        """Calls between `enter` and `leave` now."""

    @property
    def native_hooks(self) -> tuple[int, int, int] | None:
        """For native code that calls guests itself: the addresses of the shared state and
        of `iw_ticker_enter` and `iw_ticker_leave` (engine/native/epoch_ticker.c); None for a
        ticker that is not native (the caller then brackets its calls in Python)."""

    def start(self) -> None:
        """Start the thread, if it has not started (or been stopped) yet."""

    def add_engine(self, engine: wasmtime.Engine) -> None: ...

    def arm(self) -> None: ...

    def enter(self) -> None: ...

    def leave(self) -> None: ...

    def stop(self) -> None: ...


def make_ticker(kind: str, *, period_s: float, idle_period_s: float, idle_after_s: float,
                 clock: Callable[[], float]) -> EpochTicker:
    """The native ticker when built (`kind` "auto" or "native"), else the Python thread; its
    thread starts with `start`."""
    if kind not in TICKER_KINDS:
        raise ConfigError(f"ticker {kind!r} must be one of {', '.join(TICKER_KINDS)}")
    native_clock = clock is time.monotonic or isinstance(clock, ManualClock)
    lib = None if kind == "thread" else _native_library()
    if kind == "native" and (lib is None or not native_clock):
        why = (f"{NATIVE_LIBRARY} is not built (run scripts/setup.sh)" if lib is None
               else "its idle clock must be time.monotonic or a ManualClock")
        raise ConfigError(f"native epoch ticker unavailable: {why}")
    if lib is None or not native_clock:
        return ThreadTicker(period_s=period_s, idle_period_s=idle_period_s,
                            idle_after_s=idle_after_s, clock=clock)
    return NativeTicker(lib, period_s=period_s, idle_period_s=idle_period_s,
                        idle_after_s=idle_after_s, clock=clock)


class ThreadTicker:
    """The ticker as a Python daemon thread; see the module docstring."""

    #: calls bracket themselves in Python (`enter`, `leave`)
    native_hooks = None

    def __init__(self, *, period_s: float, idle_period_s: float, idle_after_s: float,
                 clock: Callable[[], float] = time.monotonic):
        """`clock` (seconds, monotonic) measures the idle window only; tests inject one."""
        self.epoch_cell = ctypes.c_int64(0)
        #: set by every arm and every call's start, cleared when the ticker notes it
        self.armed = False
        #: calls running now (`enter` to `leave`); `+=` is no atomic step between threads,
        #: so both change it under `_count`
        self.running = 0
        self._count = threading.Lock()
        #: True while the ticker runs at `idle_period`
        self.idle = False
        self.period = period_s
        self.idle_period = idle_period_s
        self.idle_after = idle_after_s
        self._clock = clock
        self._engines: list[wasmtime.Engine] = []
        self._wake = threading.Event()
        self.stopped = threading.Event()
        self._seen_at = clock()
        self._starting = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="iotwasm-epoch", daemon=True)

    def start(self) -> None:
        if self.thread.ident is not None or self.stopped.is_set():
            return
        with self._starting:
            if self.thread.ident is None and not self.stopped.is_set():
                # a new ticker counts as just armed: it starts at the normal period
                self._seen_at = self._clock()
                self.thread.start()

    def add_engine(self, engine: wasmtime.Engine) -> None:
        self._engines.append(engine)

    def arm(self) -> None:
        """A deadline was armed: note it, and back to the normal period now if idle."""
        self.armed = True
        if self.idle:
            self._wake.set()

    def enter(self) -> None:
        """A call into a guest starts: it counts as running until `leave`."""
        with self._count:
            self.running += 1
        self.arm()

    def leave(self) -> None:
        with self._count:
            self.running -= 1

    def stop(self) -> None:
        self.stopped.set()
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        stop, wake, cell, engines = self.stopped, self._wake, self.epoch_cell, self._engines
        while True:
            if self.idle:
                woken = wake.wait(self.idle_period)
                if stop.is_set():
                    return
                if woken or self.armed or self.running:
                    wake.clear()
                    self.idle = False
                    self._note_arm()  # the arm that woke us, not yet noted
                    continue  # no increment: the next comes one normal period from now
            elif stop.wait(self.period):
                return
            for engine in engines:
                engine.increment_epoch()
            cell.value += 1
            if self.idle:
                continue
            if self.armed or self.running:
                self._note_arm()
            elif self._clock() - self._seen_at > self.idle_after:
                wake.clear()
                self.idle = True
                if self.armed or self.running:  # a start that read `idle` before it was set
                    self.idle = False

    def _note_arm(self) -> None:
        self.armed = False
        self._seen_at = self._clock()


class _Library:
    """native/epoch_ticker.c's functions, and its `iw_shared` as a ctypes structure."""

    def __init__(self, path: Path):
        cdll = ctypes.CDLL(str(path))  # releases the GIL: stop waits for the thread
        size = cdll.iw_shared_size
        size.restype = ctypes.c_size_t
        public = [("epoch", ctypes.c_int64), ("armed", ctypes.c_int32), ("idle", ctypes.c_int32),
                  ("running", ctypes.c_int32), ("reserved", ctypes.c_int32),
                  ("manual_clock", ctypes.c_void_p)]
        # owned by Python: the epoch stays readable and an arm safe once the ticker is freed
        self.Shared = type("Shared", (ctypes.Structure,), {"_fields_": public + [
            ("private", ctypes.c_byte * (size() - 32))]})
        self.start = cdll.iw_ticker_start
        self.start.restype = ctypes.c_void_p
        self.start.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 3
        self.add_engine = cdll.iw_ticker_add_engine
        self.add_engine.restype = ctypes.c_int
        self.add_engine.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.stop = cdll.iw_ticker_stop
        self.stop.restype = None
        self.stop.argtypes = [ctypes.c_void_p]
        # keep the GIL: an arm, an enter or a leave is a few atomic operations, cheaper than
        # releasing it
        pydll = ctypes.PyDLL(str(path))
        self.arm, self.enter, self.leave = pydll.iw_ticker_arm, pydll.iw_ticker_enter, pydll.iw_ticker_leave
        for fn in (self.arm, self.enter, self.leave):
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p]
        #: for the native batch call, which brackets its calls itself
        self.enter_address = ctypes.cast(self.enter, ctypes.c_void_p).value or 0
        self.leave_address = ctypes.cast(self.leave, ctypes.c_void_p).value or 0
        self.increment = ctypes.cast(_ffi.dll.wasmtime_engine_increment_epoch, ctypes.c_void_p)


@functools.cache
def _native_library() -> _Library | None:
    """The library, loaded once per process; None when it is not built or will not load."""
    try:
        return _Library(NATIVE_LIBRARY) if NATIVE_LIBRARY.exists() else None
    except (OSError, AttributeError):
        return None  # built for another machine, or from an older source


class NativeTicker:
    """The ticker as a native thread that never takes the GIL; see the module docstring."""

    def __init__(self, lib: _Library, *, period_s: float, idle_period_s: float,
                 idle_after_s: float, clock: Callable[[], float] = time.monotonic):
        """`clock` is `time.monotonic` or a `ManualClock` (`make_ticker` checks)."""
        self._lib = lib
        self._shared = shared = lib.Shared()
        # a pointer object keeps `shared` alive as long as anything holds `arm` (a store's
        # control may outlive this ticker: its arms then still write to live memory)
        self._shared_ptr = ctypes.pointer(shared)
        self._clock = clock  # a ManualClock's cell must outlive the thread reading it
        if isinstance(clock, ManualClock):
            shared.manual_clock = ctypes.addressof(clock.cell)
        self.epoch_cell = ctypes.c_int64.from_buffer(shared)  # `epoch` is the first field
        self.idle_after = idle_after_s
        self.stopped = threading.Event()
        self._engines: list[wasmtime.Engine] = []  # kept alive until the thread has ended
        self._lock = threading.Lock()
        self._periods = (round(period_s * 1e9), round(idle_period_s * 1e9), round(idle_after_s * 1e9))
        #: the native ticker once started, None before and after
        self._ptr: ctypes.c_void_p | None = None
        self.arm = functools.partial(lib.arm, self._shared_ptr)
        self.enter = functools.partial(lib.enter, self._shared_ptr)
        self.leave = functools.partial(lib.leave, self._shared_ptr)
        self.native_hooks = (ctypes.addressof(shared), lib.enter_address, lib.leave_address)

    @property
    def idle(self) -> bool:
        return bool(self._shared.idle)

    @property
    def armed(self) -> bool:
        return bool(self._shared.armed)

    @property
    def running(self) -> int:
        return int(self._shared.running)

    @property
    def alive(self) -> bool:
        return self._ptr is not None

    def start(self) -> None:
        if self._ptr is not None or self.stopped.is_set():
            return
        with self._lock:
            if self._ptr is not None or self.stopped.is_set():
                return
            ptr = self._lib.start(self._shared_ptr, self._lib.increment, *self._periods)
            if not ptr:
                raise ConfigError("native epoch ticker: its thread could not be started")
            self._ptr = ctypes.c_void_p(ptr)
            for engine in self._engines:   # made before the first store
                self._add(engine)

    def add_engine(self, engine: wasmtime.Engine) -> None:
        with self._lock:
            if self.stopped.is_set():
                return
            self._engines.append(engine)
            if self._ptr is not None:
                self._add(engine)

    def _add(self, engine: wasmtime.Engine) -> None:
        if self._lib.add_engine(self._ptr, ctypes.cast(engine.ptr(), ctypes.c_void_p)):
            raise MemoryError("native epoch ticker: no memory for another engine")

    def stop(self) -> None:
        """Ends the thread (waiting for it): no engine is touched after this returns."""
        with self._lock:
            ptr, self._ptr = self._ptr, None
            self.stopped.set()
            if ptr is not None:
                self._lib.stop(ptr)
            self._engines.clear()
