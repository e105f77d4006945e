"""Deny by default: host functions, WASI args/env/dirs exist only when granted."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotwasm.container import WasmContainer
from iotwasm.engine import Capabilities, HostContext, Limits, MemoryKeyValue, Preopen, prepare
from iotwasm.engine.capabilities import HOST_CAPABILITIES
from iotwasm.errors import CapabilityDenied, GuestError
from iotwasm.message import Message

from conftest import ECHO_WAT, EXAMPLES, module_path

ALL_HOST = ("log", "clock", "random", "kv", "config", "metrics")


@pytest.mark.parametrize("missing", ALL_HOST)
def test_each_host_capability_is_denied_unless_granted(runtime, missing):
    granted = [c for c in ALL_HOST if c != missing]
    c = WasmContainer("host_calls", module_path("host_calls.wat"), runtime=runtime,
                      capabilities=Capabilities.grant(*granted))
    with pytest.raises(CapabilityDenied) as e:
        c.start()
    fn = HOST_CAPABILITIES[missing][0] if missing != "kv" else "kv_get"
    assert str(e.value) == f"host_calls: imports iot.{fn}, which needs capability {missing!r} (not granted)"


def test_granted_host_functions_work_and_kv_survives_a_fresh_instance(runtime):
    logs, metrics = [], []
    kv = MemoryKeyValue()
    ctx = HostContext("host_calls", Capabilities.grant(*ALL_HOST, config={"label": "x"}), kv=kv,
                      on_log=lambda n, lvl, text: logs.append((n, lvl, text)),
                      on_metric=lambda n, kind, name, v: metrics.append((name, kind, v)))
    factory = prepare(runtime.load(module_path("host_calls.wat")), Limits(), ctx)
    g = factory.new_guest()
    out = g.process([Message("t", b"a"), Message("t", b"b")])
    assert [o.payload for o in out.outputs] == [b"1", b"2"]
    # a brand-new instance continues the count: the state lives in the host's kv
    out = factory.new_guest().process([Message("t", b"c")])
    assert [o.payload for o in out.outputs] == [b"3"]
    assert kv.get(b"count") == b"3"
    assert logs and all(n == "host_calls" and "input counted" in t for n, _, t in logs)
    assert ("inputs", 0, 1.0) in metrics


def test_in_memory_state_is_lost_with_the_instance_but_kv_is_not(runtime):
    factory = prepare(runtime.load(module_path("counter_state.wat")), Limits(), HostContext("c"))
    g = factory.new_guest()
    assert [o.payload for o in g.process([Message("t", b"x")] * 3).outputs][-1] != \
        [o.payload for o in factory.new_guest().process([Message("t", b"x")]).outputs][-1]


def test_kv_quota_is_enforced():
    kv = MemoryKeyValue(quota=10)
    assert kv.set(b"k", b"123456789") is True   # 1 + 9 bytes
    assert kv.set(b"k2", b"x") is False
    assert kv.set(b"k", b"1") is True            # shrinking is fine
    assert kv.delete(b"k") and not kv.delete(b"k")


def test_unknown_import_module_is_denied(runtime):
    wat = ECHO_WAT.replace("(memory", '(import "env" "system" (func (param i32)))\n  (memory')
    with pytest.raises(CapabilityDenied, match="imports env.system, which no capability provides"):
        WasmContainer("sneaky", wat, runtime=runtime).start()


@pytest.fixture(scope="module")
def wasi_csv() -> Path:
    path = EXAMPLES / "wasi_csv.wasm"
    assert path.is_file(), "examples/modules/wasi_csv.wasm is missing: run `make examples`"
    return path


def test_wasi_command_gets_no_env_unless_granted(runtime, wasi_csv):
    plain = WasmContainer("csv", wasi_csv, runtime=runtime).start()
    out = plain.process([Message("t", b"dev-1,temperature,21.5\n")])
    assert [o.payload for o in out.outputs] == [b'{"device":"dev-1","sensor":"temperature","value":21.5}']
    granted = WasmContainer("csv", wasi_csv, runtime=runtime,
                            capabilities=Capabilities(env={"UNIT": "C"})).start()
    out = granted.process([Message("t", b"dev-1,temperature,21.5\n")])
    assert b'"unit":"C"' in out.outputs[0].payload


def test_wasi_command_stderr_is_logged_and_bad_lines_reported(runtime, wasi_csv):
    logs = []
    c = WasmContainer("csv", wasi_csv, runtime=runtime,
                      on_log=lambda n, lvl, text: logs.append(text)).start()
    out = c.process([Message("t", b"dev-1,temperature,21.5\ndev-2,humidity,40\n"),
                     Message("t", b"dev-1,temperature,21.5\nnot a csv line\n")])
    assert [o.index for o in out.outputs] == [0, 0]
    assert [d.index for d in out.dead_letters] == [1]
    assert str(out.dead_letters[0].error).startswith("csv:_start: exited with code 1: line 2:")
    assert any("line 2" in line for line in logs), logs


WASI_FS_WAT = r'''
(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; prints "dir" when fd 3 is a preopened directory, "nodir" otherwise, then the argc digit
  (data (i32.const 200) "dir\n") (data (i32.const 210) "nodir\n")
  (func (export "_start")
    (local $n i32)
    (if (i32.eqz (call $prestat (i32.const 3) (i32.const 100)))
      (then (i32.store (i32.const 0) (i32.const 200)) (i32.store (i32.const 4) (i32.const 4)))
      (else (i32.store (i32.const 0) (i32.const 210)) (i32.store (i32.const 4) (i32.const 6))))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 52)))
    (drop (call $args (i32.const 60) (i32.const 64)))
    (i32.store8 (i32.const 300) (i32.add (i32.const 48) (i32.load (i32.const 60))))
    (i32.store8 (i32.const 301) (i32.const 10))
    (i32.store (i32.const 0) (i32.const 300)) (i32.store (i32.const 4) (i32.const 2))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 52)))))
'''


def test_wasi_dirs_and_args_only_as_granted(runtime, tmp_path):
    plain = WasmContainer("fs", WASI_FS_WAT, runtime=runtime).start()
    assert [o.payload for o in plain.process([Message("t", b"")]).outputs] == [b"nodir", b"1"]
    caps = Capabilities(dirs=(Preopen(str(tmp_path), "/data"),), args=("--fast",))
    granted = WasmContainer("fs", WASI_FS_WAT, runtime=runtime, capabilities=caps).start()
    assert [o.payload for o in granted.process([Message("t", b"")]).outputs] == [b"dir", b"2"]


def test_wasi_nonzero_exit_is_a_dead_letter(runtime):
    wat = '''(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 3))))'''
    c = WasmContainer("exit3", wat, runtime=runtime).start()
    r = c.process([Message("t", b"x")])
    assert isinstance(r.dead_letters[0].error, GuestError)
    assert str(r.dead_letters[0].error) == "exit3:_start: exited with code 3"
