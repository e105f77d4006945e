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
from iotwasm.engine.fastcall import FUNC, MEMORY, Exports, GuestMemory, RawFunc, StoreControl
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
    c = held_container(rt, held, clock).start()
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
    c = held_container(rt, held, clock).start()
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
    c = held_container(rt, held, clock, replicas=2).start()
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
    c = held_container(rt, held, clock).start()
    t, out = start_held_batch(c, held)
    stopper = threading.Thread(target=c.stop, args=("test",))
    stopper.start()
    finish(t, out, held)
    stopper.join(60)
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


def test_stop_during_a_batch_waits_for_it():
    run_scenario("stop_waits_for_the_batch")


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
