"""A Store outlives every call into it: restarts, scaling and stops that run while a batch is
inside an instance on another thread never free that instance's Store under it.

Freeing a Store while a call runs in it makes wasmtime abort the whole process, so each
scenario runs in a child process: an abort shows as a failed test, not as a dead pytest.
The batch is held inside the guest by the module's host call (tests/modules/log_then_echo.wat
logs each payload through iot.log before echoing it); the log callback blocks until the
scenario has done its damage and releases it.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import wasmtime

from iotwasm.container import RestartPolicy, State, WasmContainer
from iotwasm.engine import Capabilities, Runtime
from iotwasm.engine.fastcall import FUNC, MEMORY, Exports, RawFunc, StoreControl
from iotwasm.engine.guest_memory import GuestMemory
from iotwasm.message import Message

HERE = Path(__file__).resolve().parent
LOG_ECHO = HERE / "modules" / "log_then_echo.wat"


class Held:
    """A log callback that holds each batch logging `hold` inside the guest until released."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def __call__(self, container: str, level: int, text: str) -> None:
        if text == "hold":
            self.entered.release()
            assert self.release.wait(60), "never released"


class Clock:
    """An injected monotonic clock: restart backoff is due when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def held_container(rt: Runtime, held: Held, clock: Clock, replicas: int = 2) -> WasmContainer:
    return WasmContainer("held", LOG_ECHO, runtime=rt, replicas=replicas,
                         capabilities=Capabilities(host=frozenset({"log"})), on_log=held,
                         restart=RestartPolicy(backoff_s=0.5, crash_loop_batches=1), clock=clock)


def warm(c: WasmContainer) -> WasmContainer:
    """Every instance makes its buffers, and with them its native batch call, before the
    scenario (a fresh instance's first batch takes the Python path): the held batches then run
    through the native call, the GIL released while the guest waits in its host call."""
    for slot in c._slots:   # idle, and nobody else uses the container yet
        assert [o.payload for o in slot.guest.process([Message("t", b"warm")]).outputs] == [b"warm"]
        assert slot.guest._native is not None
    return c


def start_held_batch(c: WasmContainer, held: Held) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        out["result"] = c.process([Message("t", b"hold"), Message("t", b"after")])

    t = threading.Thread(target=run)
    t.start()
    assert held.entered.acquire(timeout=30), "the batch never reached the guest's host call"
    return t, out


def finish(t: threading.Thread, out: dict, held: Held) -> None:
    held.release.set()
    t.join(60)
    assert not t.is_alive()
    r = out["result"]
    # the batch that was inside the instance completed on it
    assert [o.payload for o in r.outputs] == [b"hold", b"after"], r
    assert not r.dead_letters, r.dead_letters


# -- scenarios (each runs in a child process) ------------------------------------------------

def scenario_crash_loop_restart_by_tick() -> None:
    """replicas: 2; one replica traps (crash loop) while the other is inside a batch; the
    node's periodic tick restarts the container."""
    rt, held, clock = Runtime(), Held(), Clock()
    c = warm(held_container(rt, held, clock).start())
    t, out = start_held_batch(c, held)
    crashed = c.process([Message("t", b"!boom")])   # runs on the other replica
    assert [d.error.kind for d in crashed.dead_letters] == ["trap"]
    assert c.state == State.ERROR, c.state
    clock.now += 60                                  # the restart backoff is over
    c.tick()
    assert c.state == State.RUNNING and c.restarts == 1
    finish(t, out, held)
    assert [o.payload for o in c.process([Message("t", b"x")]).outputs] == [b"x"]
    c.stop()


def scenario_manual_restart_during_batch() -> None:
    rt, held, clock = Runtime(), Held(), Clock()
    c = warm(held_container(rt, held, clock).start())
    t, out = start_held_batch(c, held)
    c.restart("operator")
    assert c.state == State.RUNNING and c.restarts == 1
    finish(t, out, held)
    assert [o.payload for o in c.process([Message("t", b"x")]).outputs] == [b"x"]
    c.stop()


def scenario_scale_down_during_batch() -> None:
    """Scaling down while every instance is busy: it neither waits for them nor closes one
    under its batch; the removed one is closed once its batch is over."""
    rt, held, clock = Runtime(), Held(), Clock()
    c = warm(held_container(rt, held, clock, replicas=2).start())
    batches = [start_held_batch(c, held) for _ in range(2)]
    scaler = threading.Thread(target=c.scale, args=(1,))
    scaler.start()
    scaler.join(30)
    assert not scaler.is_alive(), "scaling down waited for a busy instance"
    assert len(c.stats().instances) == 1
    for t, out in batches:
        finish(t, out, held)
    assert [o.payload for o in c.process([Message("t", b"x")]).outputs] == [b"x"]
    c.stop()


def scenario_stop_waits_for_the_batch() -> None:
    rt, held, clock = Runtime(), Held(), Clock()
    c = warm(held_container(rt, held, clock).start())
    t, out = start_held_batch(c, held)
    stopper = threading.Thread(target=c.stop, args=("test",))
    stopper.start()
    finish(t, out, held)
    stopper.join(60)
    assert c.state == State.TERMINATED


def scenario_idling_and_eviction_spare_busy_instances() -> None:
    """Instances on demand: while every instance of a container is inside a batch, neither its
    cool-down reaping nor another container's need under a spent budget closes one; the
    batches finish on their instances, which go afterwards."""
    from iotwasm.container import BudgetSpent, InstanceBudget, Scaling

    rt, held, clock = Runtime(), Held(), Clock()
    budget = InstanceBudget(max_instances=2)
    c = WasmContainer("held", LOG_ECHO, runtime=rt, scaling=Scaling(0, 2, cooldown_s=1), budget=budget,
                      capabilities=Capabilities(host=frozenset({"log"})), on_log=held, clock=clock).start()
    batches = [start_held_batch(c, held) for _ in range(2)]
    assert len(c.stats().instances) == 2
    clock.now += 3600
    c.maintain()
    assert len(c.stats().instances) == 2, "reaped a busy instance"
    other = WasmContainer("other", LOG_ECHO, runtime=rt, scaling=Scaling(0, 1), budget=budget,
                          capabilities=Capabilities(host=frozenset({"log"})), clock=clock).start()
    try:
        other.process([Message("t", b"x")])
        raise AssertionError("evicted a busy instance")
    except BudgetSpent:
        pass
    for t, out in batches:
        finish(t, out, held)
    assert [o.payload for o in other.process([Message("t", b"x")]).outputs] == [b"x"]
    clock.now += 3600
    c.maintain()
    assert len(c.stats().instances) == 0 and c.stats().scaling.evictions == 1
    c.stop(), other.stop()


# Logs its first input's payload, then traps; its iot_init refuses to run a second time (it
# marks itself in kv), so the instance that trapped cannot be replaced.
ONCE_WAT = """(module
  (import "iot" "log" (func $log (param i32 i32 i32)))
  (import "iot" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "iot" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  (data (i32.const 16) "started")
  (global $heap (mut i32) (i32.const 4096))
  (func (export "iot_abi_version") (result i32) i32.const 1)
  (func (export "iot_alloc") (param $n i32) (result i32)
    (local $p i32)
    global.get $heap local.set $p
    global.get $heap local.get $n i32.add global.set $heap
    local.get $p)
  (func (export "iot_init") (result i32)
    (if (i32.ge_s (call $kv_get (i32.const 16) (i32.const 7) (i32.const 64) (i32.const 8)) (i32.const 0))
      (then unreachable))
    (drop (call $kv_set (i32.const 16) (i32.const 7) (i32.const 16) (i32.const 1)))
    i32.const 0)
  (func (export "iot_process") (param $in i32) (param $len i32) (param $count i32)
        (param $out i32) (param $cap i32) (result i32)
    (call $log (i32.const 1)
               (i32.add (i32.add (local.get $in) (i32.const 16)) (i32.load offset=8 (local.get $in)))
               (i32.load offset=12 (local.get $in)))
    unreachable))"""


def scenario_stop_while_a_broken_instance_cannot_be_replaced() -> None:
    """stop() waits for the batch; the batch's instance traps and no new one can be made,
    which fails the container: neither waits for the other."""
    rt, held, clock = Runtime(), Held(), Clock()
    c = WasmContainer("once", ONCE_WAT, runtime=rt, on_log=held, clock=clock,
                      capabilities=Capabilities(host=frozenset({"log", "kv"}))).start()
    out: dict = {}
    # daemon threads: if they wait for each other for ever, the assertion below still ends
    # this process with its message
    t = threading.Thread(target=lambda: out.setdefault("r", c.process([Message("t", b"hold")])),
                         daemon=True)
    t.start()
    assert held.entered.acquire(timeout=30)
    stopper = threading.Thread(target=c.stop, args=("test",), daemon=True)
    stopper.start()
    held.release.set()
    t.join(30)
    stopper.join(30)
    assert not t.is_alive() and not stopper.is_alive(), "stop() and the failing batch waited for each other"
    assert [d.error.kind for d in out["r"].dead_letters] == ["trap"]
    assert c.state == State.TERMINATED


def run_scenario(name: str) -> None:
    """Run `scenario_<name>` in a fresh interpreter; its exit status is the verdict."""
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_store_lifetime as t; "
            f"t.scenario_{name}(); print('scenario passed')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "scenario passed" in p.stdout, (
        f"scenario {name} ended with exit status {p.returncode}"
        f"{' (killed by signal %d)' % -p.returncode if p.returncode < 0 else ''}\n"
        f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-4000:]}")


def test_a_crash_loop_restart_by_tick_leaves_the_busy_replica_its_batch():
    run_scenario("crash_loop_restart_by_tick")


def test_a_manual_restart_during_a_batch_leaves_it_its_instance():
    run_scenario("manual_restart_during_batch")


def test_scale_down_during_a_batch_retires_the_busy_instance():
    run_scenario("scale_down_during_batch")


def test_idling_and_eviction_leave_busy_instances_their_batches():
    run_scenario("idling_and_eviction_spare_busy_instances")


def test_stop_during_a_batch_waits_for_it():
    run_scenario("stop_waits_for_the_batch")


def test_stop_and_a_batch_whose_instance_cannot_be_replaced_do_not_wait_for_each_other():
    run_scenario("stop_while_a_broken_instance_cannot_be_replaced")


# -- raw handles -----------------------------------------------------------------------------

ADD_WAT = """(module (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))"""


def test_raw_handles_keep_their_store_alive():
    engine = wasmtime.Engine(wasmtime.Config())
    module = wasmtime.Module(engine, ADD_WAT)
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, module, [])
    exports = Exports(store, instance)
    add = RawFunc(store, exports.get(b"add", FUNC), "add", 2)
    mem = GuestMemory(store, exports.get(b"memory", MEMORY))
    ctl = StoreControl(store)
    alive = weakref.ref(store)
    del store, instance
    gc.collect()
    assert alive() is not None, "the raw handles hold the Store"
    assert add(2, 3) == 5
    mem.write(0, b"abc")
    assert mem.read(0, 3) == b"abc" and mem.refresh() == 65536
    ctl.set_deadline(10)
    del add, mem, ctl
    gc.collect()
    assert alive() is not None, "Exports holds it too"
    del exports
    gc.collect()
    assert alive() is None, "released with the last handle"
