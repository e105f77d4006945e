"""The `iot` host functions, defined through the raw (unchecked) path of engine/fastcall.py.

Each function is called from wasm with chosen pointers, so what it reads and writes in guest
memory is checked byte for byte, including the refusals of ranges outside memory and what a
failing host callback does to the calling guest.
"""

from __future__ import annotations

import time

import pytest
import wasmtime

from iotwasm.engine import Capabilities, HostContext, Limits, MemoryKeyValue, prepare
from iotwasm.engine.fastcall import CallFailed, RawFunc, take_host_failure
from iotwasm.engine.host import define_host
from iotwasm.engine.traps import classify
from iotwasm.errors import AbiError, GuestTrap, InitError
from iotwasm.message import Message

# every host function re-exported with its own signature, so a test can call it from wasm
CALLER = """
(module
  (import "iot" "log" (func $log (param i32 i32 i32)))
  (import "iot" "now_ms" (func $now_ms (result i64)))
  (import "iot" "random_fill" (func $random_fill (param i32 i32)))
  (import "iot" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "iot" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (import "iot" "kv_delete" (func $kv_delete (param i32 i32) (result i32)))
  (import "iot" "config_get" (func $config_get (param i32 i32 i32 i32) (result i32)))
  (import "iot" "metric" (func $metric (param i32 i32 i32 f64)))
  (memory (export "memory") 1)
  (func (export "log") (param i32 i32 i32) local.get 0 local.get 1 local.get 2 call $log)
  (func (export "now_ms") (result i64) call $now_ms)
  (func (export "random_fill") (param i32 i32) local.get 0 local.get 1 call $random_fill)
  (func (export "kv_get") (param i32 i32 i32 i32) (result i32)
    local.get 0 local.get 1 local.get 2 local.get 3 call $kv_get)
  (func (export "kv_set") (param i32 i32 i32 i32) (result i32)
    local.get 0 local.get 1 local.get 2 local.get 3 call $kv_set)
  (func (export "kv_delete") (param i32 i32) (result i32) local.get 0 local.get 1 call $kv_delete)
  (func (export "config_get") (param i32 i32 i32 i32) (result i32)
    local.get 0 local.get 1 local.get 2 local.get 3 call $config_get)
  (func (export "metric") (param i32 i32 i32 f64)
    local.get 0 local.get 1 local.get 2 local.get 3 call $metric)
)
"""
ALL = ("log", "clock", "random", "kv", "config", "metrics")


@pytest.fixture()
def guest():
    """(store, exports, memory, records) for CALLER linked against one host context."""
    logs, metrics = [], []
    ctx = HostContext("hc", Capabilities.grant(*ALL, config={"min": "10", "label": "héllo"}),
                      kv=MemoryKeyValue(quota=64),
                      on_log=lambda n, lvl, text: logs.append((n, lvl, text)),
                      on_metric=lambda n, kind, name, v: metrics.append((n, kind, name, v)))
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    define_host(linker, ctx)
    store = wasmtime.Store(engine)
    inst = linker.instantiate(store, wasmtime.Module(engine, CALLER))
    ex = inst.exports(store)
    mem = ex["memory"]

    def put(ptr: int, data: bytes) -> None:
        mem.write(store, data, ptr)

    def get(ptr: int, n: int) -> bytes:
        return bytes(mem.read(store, ptr, ptr + n))

    return store, ex, put, get, {"logs": logs, "metrics": metrics, "ctx": ctx}


def test_config_get_copies_the_value_when_it_fits_and_reports_its_length(guest):
    store, ex, put, get, _ = guest
    put(0, b"label")
    value = "héllo".encode()
    assert ex["config_get"](store, 0, 5, 100, 64) == len(value)
    assert get(100, len(value)) == value
    # too small a buffer: the length comes back, nothing is written
    put(200, b"\xaa" * 8)
    assert ex["config_get"](store, 0, 5, 200, 3) == len(value)
    assert get(200, 8) == b"\xaa" * 8
    put(0, b"nope!")
    assert ex["config_get"](store, 0, 5, 100, 64) == -1


def test_kv_round_trip_quota_and_delete(guest):
    store, ex, put, get, rec = guest
    put(0, b"k1")
    put(16, b"value-1")
    assert ex["kv_set"](store, 0, 2, 16, 7) == 0
    assert rec["ctx"].kv.get(b"k1") == b"value-1"
    assert ex["kv_get"](store, 0, 2, 300, 32) == 7
    assert get(300, 7) == b"value-1"
    assert ex["kv_set"](store, 0, 2, 16, 100) == -1  # over the 64-byte quota
    assert ex["kv_delete"](store, 0, 2) == 0
    assert ex["kv_delete"](store, 0, 2) == -1
    assert ex["kv_get"](store, 0, 2, 300, 32) == -1


def test_log_metric_clock_and_random_reach_the_host(guest):
    store, ex, put, get, rec = guest
    put(0, "ça va".encode())
    ex["log"](store, 2, 0, len("ça va".encode()))
    assert rec["logs"] == [("hc", 2, "ça va")]
    put(32, b"temp")
    ex["metric"](store, 1, 32, 4, 21.5)
    assert rec["metrics"] == [("hc", 1, "temp", 21.5)]
    before = int(time.time() * 1000)
    assert before - 1000 <= ex["now_ms"](store) <= int(time.time() * 1000) + 1000
    put(400, bytes(64))
    ex["random_fill"](store, 400, 64)
    assert get(400, 64) != bytes(64) and get(464, 8) == bytes(8)


@pytest.mark.parametrize("call, args, what", [
    ("config_get", (65530, 16, 0, 8), "iot.config_get key: range 65530+16"),
    ("kv_get", (-1, 2, 0, 8), "iot.kv key: range 4294967295+2"),
    ("random_fill", (65536 - 8, 16), "iot.random_fill: range 65528+16"),
    ("log", (1, 65535, 8), "iot.log: range 65535+8"),
])
def test_a_range_outside_memory_traps_the_guest_with_an_abi_error(guest, call, args, what):
    store, ex, put, _, _ = guest
    put(0, b"label")
    raw = RawFunc(store, ex[call], call, len(args), results=() if call in ("log", "random_fill")
                  else ("i32",))
    with pytest.raises(CallFailed) as e:
        raw(*args)
    err = classify(e.value.cause, module="hc", function=call, limits=Limits())
    assert isinstance(err, AbiError)
    assert what in str(err) and "outside guest memory (65536 bytes)" in str(err)
    assert take_host_failure() is None  # consumed by classify


def test_a_value_too_big_for_memory_is_refused_not_written(guest):
    store, ex, put, get, _ = guest
    put(0, b"label")
    raw = RawFunc(store, ex["config_get"], "config_get", 4)
    with pytest.raises(CallFailed) as e:
        raw(0, 5, 65533, 64)  # the buffer claims 64 bytes, memory ends 3 bytes later
    err = classify(e.value.cause, module="hc", function="config_get", limits=Limits())
    assert "iot.config_get: buffer 65533+6 is outside guest memory" in str(err)


def test_a_failing_host_callback_traps_only_the_guest_and_names_the_function():
    def bad_log(name, level, text):
        raise RuntimeError("log sink is gone")

    ctx = HostContext("hc", Capabilities.grant(*ALL), on_log=bad_log)
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    define_host(linker, ctx)
    store = wasmtime.Store(engine)
    ex = linker.instantiate(store, wasmtime.Module(engine, CALLER)).exports(store)
    raw = RawFunc(store, ex["log"], "log", 3, results=())
    with pytest.raises(CallFailed) as e:
        raw(1, 0, 4)
    err = classify(e.value.cause, module="hc", function="log", limits=Limits())
    assert isinstance(err, GuestTrap)
    assert "host function iot.log failed: RuntimeError: log sink is gone" in str(err)
    # the instance is still usable
    assert isinstance(ex["now_ms"](store), int)


def test_a_guest_whose_init_reads_config_out_of_bounds_fails_to_start(runtime):
    wat = """
    (module
      (import "iot" "config_get" (func $cg (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "iot_abi_version") (result i32) i32.const 1)
      (func (export "iot_alloc") (param i32) (result i32) i32.const 1024)
      (func (export "iot_init") (result i32)
        (drop (call $cg (i32.const 70000) (i32.const 4) (i32.const 0) (i32.const 8))) i32.const 0)
      (func (export "iot_process") (param i32 i32 i32 i32 i32) (result i32) i32.const 0))
    """
    factory = prepare(runtime.load(wat, name="cfg"), Limits(),
                      HostContext("cfg", Capabilities.grant("config", config={"a": "b"})))
    with pytest.raises(InitError, match=r"iot_init.*range 70000\+4 is outside guest memory"):
        factory.new_guest()


def test_host_calls_from_a_batch_see_the_config_and_count(runtime):
    """A v1 guest whose every input calls several host functions: the batch gives the same
    outputs as the host-side meaning of those calls."""
    from conftest import module_path

    ctx = HostContext("host_calls", Capabilities.grant(*ALL, config={"label": "x"}))
    factory = prepare(runtime.load(module_path("host_calls.wat")), Limits(), ctx)
    out = factory.new_guest().process([Message("t", bytes([i])) for i in range(50)])
    assert [o.payload for o in out.outputs] == [str(i).encode() for i in range(1, 51)]
    assert not out.dead_letters


def test_host_functions_of_dropped_factories_are_released(runtime):
    """wasmtime's finalizer drops each raw host function's entry with the last linker or
    instance that holds it, so containers started and stopped for days do not leak them."""
    import gc

    from conftest import module_path

    from iotwasm.engine import hostcall

    compiled = runtime.load(module_path("host_calls.wat"))
    gc.collect()  # entries of earlier tests' linkers still awaiting collection go first
    before = len(hostcall._raw_functions)
    factory = prepare(compiled, Limits(), HostContext("h", Capabilities.grant(*ALL)))
    guest = factory.new_guest()
    # one per function host_calls.wat imports: kv_delete, defined but not imported, went with
    # the linker at the end of prepare()
    assert len(hostcall._raw_functions) == before + 7
    guest.close()
    del factory, guest
    gc.collect()
    assert len(hostcall._raw_functions) == before
