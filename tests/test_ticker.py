"""The epoch ticker slows down when no call is running, and never lets a deadline slip.

Every test runs against both tickers: the native thread (the default) and the Python one.
The idle window is measured on an injected clock, so no test waits for it to pass; the waits
below are for the ticker thread to act, with generous limits, and nothing asserts a duration.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections.abc import Callable

import pytest
import wasmtime

from iotwasm.engine import Capabilities, HostContext, Limits, Runtime, prepare
from iotwasm.engine.fastcall import StoreControl
from iotwasm.engine.ticker import NATIVE_LIBRARY, ManualClock, NativeTicker, ThreadTicker
from iotwasm.errors import ConfigError, InitError, TimeoutExceeded
from iotwasm.message import Message

from components import component
from conftest import module_path

#: an idle period no test outlives: only a wake brings the ticker back before it is over
HOUR_MS = 3_600_000.0

WASI_SPIN_WAT = '(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'
#: an iotwasm-v1 module whose start function (run by instantiation) never returns
START_SPIN_WASM = wasmtime.wat2wasm(module_path("infinite_loop.wat").read_text().replace(
    '(func (export "iot_process")', '(func $spin (loop $l (br $l))) (start $spin)\n  (func (export "iot_process")'))
#: an iotwasm-v1 module that echoes, and spins on a payload starting with '!'
SPIN_ON_MARKER_WASM = wasmtime.wat2wasm(module_path("trap_on_marker.wat").read_text().replace(
    "(then unreachable)", "(then (loop $spin (br $spin)))"))
#: enough increments to tell that the ticker runs at its normal period
TICKS = 50


@pytest.fixture(params=["native", "thread"])
def kind(request) -> str:
    return request.param


def wait_for(cond, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.001)


def make_runtime(kind: str, **kw) -> tuple[Runtime, ManualClock]:
    clock = ManualClock()
    kw.setdefault("max_timeout_ms", 20)
    rt = Runtime(idle_clock=clock, ticker=kind, **kw)
    rt.engine(rt.settings_for(Limits()))  # something to tick
    rt.ticker.start()  # what the first store does
    return rt, clock


def go_idle(rt: Runtime, clock: ManualClock) -> None:
    """Move the clock past the idle window and wait for the ticker to slow down.

    The ticker dates an arm when it notices it, at its next tick, so the clock is moved on
    at every look: an arm noticed after the first move is left behind by the next."""
    def idle() -> bool:
        clock.now += rt.ticker.idle_after + 1
        return rt.ticker.idle

    wait_for(idle, "the ticker to go idle")


def arm(rt: Runtime) -> None:
    store = wasmtime.Store(rt.engine(rt.settings_for(Limits())))
    StoreControl(store, ticker=rt.ticker).set_deadline(5)


def test_a_fresh_runtime_goes_idle_only_after_the_window(kind):
    rt, clock = make_runtime(kind)
    with rt:
        assert not rt.ticker.idle
        # many ticks, but the clock has not left the window
        wait_for(lambda: rt.epoch > TICKS, "ticks")
        assert not rt.ticker.idle
        go_idle(rt, clock)


def test_a_running_call_keeps_the_normal_period_however_long_it_takes(kind):
    rt, clock = make_runtime(kind, idle_tick_ms=HOUR_MS)
    with rt:
        rt.ticker.enter()
        assert rt.ticker.running == 1
        epoch = rt.epoch

        def ticking_past_the_window() -> bool:
            clock.now += rt.ticker.idle_after + 1
            return rt.epoch > epoch + TICKS

        # with the clock far past the window at every look, only the running call keeps the
        # ticker at its normal period (an idle tick is an hour)
        wait_for(ticking_past_the_window, "normal ticks while the call runs")
        assert not rt.ticker.idle
        rt.ticker.leave()
        assert rt.ticker.running == 0
        go_idle(rt, clock)


def wakes_an_idle_ticker(rt, clock, wake: Callable[[], None], what: str) -> None:
    """Send the ticker idle, `wake()` it, and see it woken and back at its normal period (an
    idle period is an hour here: only the wake can bring the normal period back)."""
    go_idle(rt, clock)
    epoch = rt.epoch
    wake()
    wait_for(lambda: not rt.ticker.idle, f"{what} to wake the ticker")
    wait_for(lambda: rt.epoch > epoch + TICKS, "normal ticks again")


def test_a_call_that_starts_wakes_an_idle_ticker(kind):
    rt, clock = make_runtime(kind, idle_tick_ms=HOUR_MS)
    with rt:
        try:
            wakes_an_idle_ticker(rt, clock, rt.ticker.enter, "the start")
        finally:
            rt.ticker.leave()
        go_idle(rt, clock)


def test_an_arm_wakes_an_idle_ticker_and_restarts_the_window(kind):
    rt, clock = make_runtime(kind, idle_tick_ms=HOUR_MS)
    with rt:
        wakes_an_idle_ticker(rt, clock, lambda: arm(rt), "the arm")
        assert not rt.ticker.idle  # the clock has not moved since the arm
        go_idle(rt, clock)


@pytest.mark.parametrize("guest_kind", ["iotwasm-v1", "wasi-command"])
def test_a_spinning_guest_armed_while_idle_is_stopped_by_its_timeout(kind, guest_kind):
    rt, clock = make_runtime(kind, idle_tick_ms=HOUR_MS, max_timeout_ms=200)
    with rt:
        limits = Limits(timeout_ms=30)
        source = module_path("infinite_loop.wat") if guest_kind == "iotwasm-v1" else WASI_SPIN_WAT
        compiled = rt.load(source, name="spin", limits=limits)
        assert compiled.info.abi == guest_kind
        guest = prepare(compiled, limits, HostContext("spin")).new_guest()  # arms: wakes
        go_idle(rt, clock)
        results: list = []
        call = threading.Thread(target=lambda: results.append(guest.process([Message("t", b"x")])),
                                daemon=True)
        call.start()
        call.join(60)  # a guard against a hang only: with the ticker asleep it would spin on
        assert not call.is_alive(), "the spinning call was never stopped"
        (result,) = results
        assert not result.outputs
        assert isinstance(result.dead_letters[0].error, TimeoutExceeded)
        assert "timeout 30ms exceeded" in str(result.dead_letters[0].error)


def with_the_clock_running(rt: Runtime, clock: ManualClock, fn):
    """`fn()` on a thread of its own while the clock is moved past the idle window at every
    look: a call the ticker did not know to be running would see it go idle (an hour a tick)
    and spin on. Returns what `fn` returned, raises what it raised."""
    out: list = []

    def call() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out.append(e)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    give_up = time.monotonic() + 60   # a guard against a hang only
    while thread.is_alive() and time.monotonic() < give_up:
        clock.now += rt.ticker.idle_after + 1
        time.sleep(0.001)
    assert not thread.is_alive(), "the spinning call was never stopped"
    assert rt.ticker.running == 0, "a call left without telling the ticker"
    (result,) = out
    if isinstance(result, BaseException):
        raise result
    return result


SPINNERS = ["iotwasm-v1 native batch", "iotwasm-v1 python batch", "iotwasm-v1 start function",
            "wasi-command", "component"]


@pytest.mark.parametrize("spinner", SPINNERS)
def test_every_kind_of_call_keeps_the_ticker_awake_until_its_limit(kind, spinner):
    # every way into guest code brackets itself as running: with the clock far past the
    # idle window, a spinning call still ends at its time limit, not an idle hour a tick later
    rt, clock = make_runtime(kind, idle_tick_ms=HOUR_MS, max_timeout_ms=1000,
                             batch_calls="python" if spinner == "iotwasm-v1 python batch" else "auto")
    with rt:
        # room for the calls that must not time out (set-up, a first batch) on a loaded
        # machine, where the calling thread may wait its turn while the epoch ticks on
        limits = Limits(timeout_ms=300)
        if spinner == "iotwasm-v1 start function":
            factory = prepare(rt.load(START_SPIN_WASM, name="spin", limits=limits), limits,
                              HostContext("spin"))
            with pytest.raises(InitError, match="timeout 300ms exceeded"):
                with_the_clock_running(rt, clock, factory.new_guest)
            return
        if spinner == "component":
            compiled = rt.load(component("python", "misbehave"), limits=limits)
            guest = prepare(compiled, limits, HostContext(
                "spin", Capabilities.grant("log", "kv", "config"))).new_guest()
            message = Message("in/d1", b"loop")
        elif spinner == "wasi-command":
            guest = prepare(rt.load(WASI_SPIN_WAT, name="spin", limits=limits), limits,
                            HostContext("spin")).new_guest()
            message = Message("t", b"x")
        else:
            guest = prepare(rt.load(SPIN_ON_MARKER_WASM, name="spin", limits=limits), limits,
                            HostContext("spin")).new_guest()
            # a first batch grows the buffers: the next goes the way the spinner names
            assert [o.payload for o in guest.process([Message("t", b"ok")]).outputs] == [b"ok"]
            assert (guest._native is not None) == (spinner == "iotwasm-v1 native batch")
            message = Message("t", b"!spin")
        go_idle(rt, clock)   # the call has to wake the ticker, then keep it awake
        result = with_the_clock_running(rt, clock, lambda: guest.process([message]))
        assert not result.outputs
        assert isinstance(result.dead_letters[0].error, TimeoutExceeded)
        assert "timeout 300ms exceeded" in str(result.dead_letters[0].error)


def test_calls_on_two_lanes_at_once_are_counted_not_flagged(kind):
    # two lanes' calls overlap: the short one ends first, and the ticker must go on counting
    # the long one as running (a flag cleared by the first leave would let it sleep)
    rt, clock = make_runtime(kind, idle_tick_ms=HOUR_MS, max_timeout_ms=2000)
    with rt:
        guests = {}
        for ms in (200, 1000):
            limits = Limits(timeout_ms=ms)
            guests[ms] = prepare(rt.load(module_path("infinite_loop.wat"), name=f"spin{ms}", limits=limits),
                                 limits, HostContext("spin")).new_guest()
        go_idle(rt, clock)
        out: dict[int, object] = {}
        short = threading.Thread(target=lambda: out.__setitem__(
            200, guests[200].process([Message("t", b"x")])), daemon=True)
        short.start()
        result = with_the_clock_running(rt, clock, lambda: guests[1000].process([Message("t", b"x")]))
        short.join(60)
        assert "timeout 1000ms exceeded" in str(result.dead_letters[0].error)
        assert "timeout 200ms exceeded" in str(out[200].dead_letters[0].error)  # type: ignore[attr-defined]


@pytest.mark.parametrize("idle", [False, True])
def test_close_stops_the_thread(kind, idle):
    rt, clock = make_runtime(kind, idle_tick_ms=HOUR_MS)
    if idle:
        go_idle(rt, clock)
    epoch = rt.epoch
    rt.close()
    ticker = rt.ticker
    if isinstance(ticker, ThreadTicker):
        ticker.thread.join(30)
    assert ticker.stopped.is_set() and not ticker.alive
    arm(rt)  # an arm after the end is harmless, and the epoch stays readable
    assert rt.epoch >= epoch


def test_an_abandoned_idle_runtime_is_collected_and_its_thread_ends(kind):
    rt, clock = make_runtime(kind, idle_tick_ms=5)
    go_idle(rt, clock)
    ticker, alive = rt.ticker, weakref.ref(rt)
    del rt
    wait_for(lambda: gc.collect() is not None and alive() is None, "the runtime to be collected")
    if isinstance(ticker, ThreadTicker):
        ticker.thread.join(30)
    assert ticker.stopped.is_set() and not ticker.alive


def test_an_idle_tick_must_be_positive():
    with pytest.raises(ConfigError, match="idle tick 0 must be a positive number of ms"):
        Runtime(idle_tick_ms=0)


def test_the_native_ticker_is_built_and_the_default():
    # scripts/setup.sh builds it: a checkout whose default fell back to the Python thread
    # would pass every other test here while paying the GIL on every tick
    assert NATIVE_LIBRARY.exists(), f"{NATIVE_LIBRARY} missing: run scripts/setup.sh"
    with Runtime() as rt:
        assert isinstance(rt.ticker, NativeTicker)
        arm(rt)
        wait_for(lambda: rt.epoch > 3, "native ticks")


def test_the_thread_starts_with_the_first_store_not_with_the_runtime(kind):
    # a process that only loads modules (the CLI, an upload's check) runs no ticker thread
    def os_threads() -> set[str]:   # the native ticker's thread is not in `threading`
        return set(os.listdir("/proc/self/task"))

    before = os_threads()
    with Runtime(ticker=kind) as rt:
        rt.load(module_path("infinite_loop.wat"), name="spin")
        assert not rt.ticker.alive and rt.epoch == 0
        assert not os_threads() - before   # none started (one ending meanwhile is no matter)
        arm(rt)   # a store: from now on its deadlines must come
        assert rt.ticker.alive
        wait_for(lambda: rt.epoch > 3, "ticks after the first store")
        rt.ticker.start()   # a second start changes nothing
    ticker = rt.ticker
    if isinstance(ticker, ThreadTicker):
        ticker.thread.join(30)
    assert ticker.stopped.is_set() and not ticker.alive


def test_first_stores_made_at_once_start_one_thread(kind):
    # lanes start their guests on their own threads: racing first stores share one ticker
    before = set(os.listdir("/proc/self/task"))
    with Runtime(ticker=kind) as rt:
        rt.engine(rt.settings_for(Limits()))
        go = threading.Barrier(8)
        errors: list[BaseException] = []

        def first_store() -> None:
            go.wait()
            try:
                arm(rt)
            except BaseException as e:   # noqa: BLE001 - a racer's failure is the test's
                errors.append(e)

        racers = [threading.Thread(target=first_store) for _ in range(8)]
        for t in racers:
            t.start()
        for t in racers:
            t.join(30)
        # a joined racer may linger in /proc a moment while its OS thread exits
        new = set(os.listdir("/proc/self/task")) - before - {str(t.native_id) for t in racers}
        assert not errors and len(new) == 1 and rt.ticker.alive
        wait_for(lambda: rt.epoch > 3, "ticks")


def test_a_runtime_closed_before_any_store_never_starts_its_thread(kind):
    rt = Runtime(ticker=kind)
    rt.engine(rt.settings_for(Limits()))
    rt.close()
    arm(rt)   # a store made after the close: the ticker stays stopped
    assert rt.ticker.stopped.is_set() and not rt.ticker.alive


def test_a_ticker_kind_is_checked():
    with pytest.raises(ConfigError, match="ticker 'fast' must be one of auto, native, thread"):
        Runtime(ticker="fast")
    with pytest.raises(ConfigError, match="idle clock must be time.monotonic or a ManualClock"):
        Runtime(ticker="native", idle_clock=lambda: 0.0)
    with Runtime(ticker="auto", idle_clock=lambda: 0.0) as rt:  # any other clock: the thread
        assert isinstance(rt.ticker, ThreadTicker)


def test_engines_made_later_are_ticked_too(kind):
    rt, _ = make_runtime(kind)
    with rt:
        # metered limits need a second engine (fuel on), made after the ticker started
        guest = prepare(rt.load(module_path("infinite_loop.wat"), name="spin",
                                limits=Limits(fuel=10**15, timeout_ms=10)),
                        Limits(fuel=10**15, timeout_ms=10), HostContext("spin")).new_guest()
        results: list = []
        call = threading.Thread(target=lambda: results.append(guest.process([Message("t", b"x")])),
                                daemon=True)
        call.start()
        call.join(60)  # a guard against a hang only: an engine not ticked spins on
        assert not call.is_alive(), "the spinning call on the later engine was never stopped"
        (dead,) = results[0].dead_letters
        assert isinstance(dead.error, TimeoutExceeded)


def test_an_arm_held_past_its_runtime_keeps_the_memory_it_writes_to():
    # a store's control keeps `ticker.arm`, and may outlive the runtime and its ticker: what
    # the arm writes to must stay allocated for as long as the arm exists
    rt = Runtime(ticker="native")
    arm = rt.ticker.arm
    shared = weakref.ref(rt.ticker._shared)
    rt.close()
    del rt
    gc.collect()
    assert shared() is not None
    arm()   # after the thread ended: sets the flag, wakes nobody
    del arm
    gc.collect()
    assert shared() is None   # and it is freed once nothing can arm any more
