"""Hostile modules of every kind are contained: typed error, one line, the process lives on.

Each case runs in this very process: if containment failed (a segfault, a hang, an
uncaught exception), the test run itself would die or time out.
"""

from __future__ import annotations

import pytest

from iotwasm.container import State, WasmContainer
from iotwasm.engine import Capabilities, HostContext, Limits, prepare
from iotwasm.errors import (AbiError, ConfigError, FuelExhausted, GuestTrap, InitError, InvalidModule,
                            MemoryLimitExceeded, OutputLimitExceeded, StackLimitExceeded,
                            TimeoutExceeded)
from iotwasm.message import Message

from conftest import ECHO_WAT, module_path

MSGS = [Message("t", b'{"value": 1}')]


def run_one(runtime, name, limits, caps=None):
    compiled = runtime.load(module_path(f"{name}.wat"), limits=limits)
    g = prepare(compiled, limits, HostContext(name, caps or Capabilities())).new_guest()
    result = g.process(MSGS)
    assert not result.outputs
    assert len(result.dead_letters) == 1
    return result.dead_letters[0].error


def one_line(err):
    text = str(err)
    assert "\n" not in text, text
    return text


def test_infinite_loop_hits_timeout(runtime):
    err = run_one(runtime, "infinite_loop", Limits(timeout_ms=30))
    assert isinstance(err, TimeoutExceeded)
    assert one_line(err) == "infinite_loop:iot_process: timeout 30ms exceeded"


def test_a_call_without_a_timeout_gets_the_runtime_maximum():
    from iotwasm.engine import Runtime

    with Runtime(max_timeout_ms=40) as rt:
        err = run_one(rt, "infinite_loop", Limits(timeout_ms=None))
        assert isinstance(err, TimeoutExceeded)
        assert one_line(err) == "infinite_loop:iot_process: timeout 40ms exceeded"
        c = WasmContainer("greedy", module_path("infinite_loop.wat"), runtime=rt,
                          limits=Limits(timeout_ms=41))
        with pytest.raises(ConfigError, match="^greedy: timeout 41ms is above the maximum of 40ms per call$"):
            c.start()
        assert c.state == State.ERROR and c.restart_due_in() is None   # permanent: not retried


def test_infinite_loop_hits_fuel(runtime):
    err = run_one(runtime, "infinite_loop", Limits(fuel=5_000_000, timeout_ms=None))
    assert isinstance(err, FuelExhausted)
    assert one_line(err) == "infinite_loop:iot_process: fuel limit 5,000,000 exhausted"


def test_memory_bomb_hits_memory_limit(runtime):
    err = run_one(runtime, "memory_bomb", Limits(memory=2 * 1024 * 1024))
    assert isinstance(err, MemoryLimitExceeded)
    assert one_line(err).startswith("memory_bomb:iot_process: memory limit 2Mi reached")


def test_deep_recursion_hits_stack_limit(runtime):
    err = run_one(runtime, "deep_recursion", Limits(stack=64 * 1024))
    assert isinstance(err, StackLimitExceeded)
    assert one_line(err) == "deep_recursion:iot_process: wasm stack limit 64Ki exceeded"


def test_out_of_bounds_access_is_a_trap(runtime):
    err = run_one(runtime, "oob_access", Limits())
    assert isinstance(err, GuestTrap)
    assert one_line(err) == "oob_access:iot_process: trap: out-of-bounds memory access"


def test_output_flood_is_capped(runtime):
    err = run_one(runtime, "output_flood", Limits(max_output=256 * 1024))
    assert isinstance(err, OutputLimitExceeded)
    assert "max_output 256Ki" in one_line(err)


def test_trap_during_init(runtime):
    c = WasmContainer("init_trap", module_path("init_trap.wat"), runtime=runtime)
    with pytest.raises(InitError) as e:
        c.start()
    assert one_line(e.value) == "init_trap:iot_init: trap: unreachable executed"
    assert c.state == State.ERROR


def test_malformed_binaries(runtime):
    for blob, why in [(b"", "not a wasm binary"), (b"\x00asm", "not a wasm binary"),
                      (b"\x00asm\x02\x00\x00\x00", "unsupported wasm binary version"),
                      (b"\x00asm\x01\x00\x00\x00\x0a\xff\xff", "invalid wasm")]:
        with pytest.raises(InvalidModule, match=why):
            runtime.load(blob, name="junk")


def test_missing_export(runtime):
    c = WasmContainer("missing_export", module_path("missing_export.wat"), runtime=runtime)
    with pytest.raises(AbiError) as e:
        c.start()
    assert one_line(e.value) == "missing_export: missing export 'iot_process' required by iotwasm-v1"


def test_wrong_abi_version(runtime):
    c = WasmContainer("wrong_abi_version", module_path("wrong_abi_version.wat"), runtime=runtime)
    with pytest.raises(AbiError) as e:
        c.start()
    assert one_line(e.value) == "wrong_abi_version: speaks iotwasm ABI v2; this host supports v1"


def test_module_speaking_no_abi(runtime):
    c = WasmContainer("not_abi", module_path("not_abi.wat"), runtime=runtime)
    with pytest.raises(AbiError, match="exports neither iot_process"):
        c.start()


def test_wrong_export_signature(runtime):
    wat = ECHO_WAT.replace('(func (export "iot_abi_version") (result i32) i32.const 1)',
                           '(func (export "iot_abi_version") (result i64) i64.const 1)')
    with pytest.raises(AbiError, match=r"export iot_abi_version has type \(\) -> \(i64\)"):
        WasmContainer("badsig", wat, runtime=runtime).start()


def test_process_survives_every_hostile_module_in_a_row(runtime):
    """After all of the above the runtime still runs a well-behaved module correctly."""
    for name, limits in [("infinite_loop", Limits(timeout_ms=20)), ("memory_bomb", Limits(memory=1 << 20)),
                         ("deep_recursion", Limits(stack=32 * 1024)), ("oob_access", Limits()),
                         ("output_flood", Limits(max_output=64 * 1024))]:
        run_one(runtime, name, limits)
    with WasmContainer("echo", ECHO_WAT, runtime=runtime) as c:
        assert c.process([Message("t", b"alive")]).outputs[0].payload == b"alive"
