from __future__ import annotations

from pathlib import Path

import pytest

from iotwasm.engine import Runtime

# the broker fixtures (`mosquitto`, `nats_server`) and the browser's (`browser`, `page`) for every
# test module
pytest_plugins = ["brokers", "dashboard"]

ROOT = Path(__file__).resolve().parent.parent
TEST_MODULES = ROOT / "tests" / "modules"
EXAMPLES = ROOT / "examples" / "modules"


@pytest.fixture(scope="session")
def runtime():
    rt = Runtime()
    yield rt
    rt.close()


def module_path(name: str) -> Path:
    return TEST_MODULES / name


# A minimal iotwasm-v1 echo module in WAT, independent of the SDK: each input comes back
# unchanged on its own topic; a payload starting with '!' traps, one starting with '?' is
# rejected with an error record. It keeps the output header current, as docs/abi.md asks.
# What every WAT test module of the v1 ABI starts with: its memory, the ABI version, and a
# bump allocator that grows memory as it needs to (returns 0 when it cannot).
V1_WAT_PRELUDE = r'''
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "iot_abi_version") (result i32) i32.const 1)
  (func (export "iot_alloc") (param $n i32) (result i32)
    (local $p i32) (local $need i32)
    global.get $heap local.set $p
    local.get $p local.get $n i32.add local.set $need
    (block $ok
      (loop $g
        local.get $need memory.size i32.const 65536 i32.mul i32.le_u br_if $ok
        i32.const 1 memory.grow i32.const -1 i32.eq (if (then i32.const 0 return))
        br $g))
    local.get $need global.set $heap
    local.get $p)
'''

ECHO_WAT = "(module" + V1_WAT_PRELUDE + r'''
  (func (export "iot_process") (param $in i32) (param $len i32) (param $count i32)
        (param $out i32) (param $cap i32) (result i32)
    (local $i i32) (local $p i32) (local $tl i32) (local $pl i32) (local $w i32) (local $pay i32)
    (local $kind i32) (local $first i32)
    local.get $in local.set $p
    local.get $out i32.const 8 i32.add local.set $w
    (block $done (loop $l
      local.get $i local.get $count i32.ge_u br_if $done
      local.get $p i32.load offset=8 local.set $tl
      local.get $p i32.load offset=12 local.set $pl
      local.get $p i32.const 16 i32.add local.get $tl i32.add local.set $pay
      i32.const 0 local.set $first
      local.get $pl (if (then local.get $pay i32.load8_u local.set $first))
      local.get $first i32.const 33 i32.eq (if (then unreachable))
      local.get $first i32.const 63 i32.eq local.set $kind
      ;; record = 16-byte header + topic + payload; OUTPUT_FULL when it does not fit
      local.get $w i32.const 16 i32.add local.get $tl i32.add local.get $pl i32.add
      local.get $out local.get $cap i32.add i32.gt_u (if (then i32.const 1 return))
      local.get $w local.get $i i32.store
      local.get $w local.get $kind i32.store offset=4
      local.get $w local.get $tl i32.store offset=8
      local.get $w local.get $pl i32.store offset=12
      local.get $w i32.const 16 i32.add local.get $p i32.const 16 i32.add local.get $tl memory.copy
      local.get $w i32.const 16 i32.add local.get $tl i32.add local.get $pay local.get $pl memory.copy
      local.get $w i32.const 16 i32.add local.get $tl i32.add local.get $pl i32.add local.set $w
      local.get $out local.get $w local.get $out i32.sub i32.const 8 i32.sub i32.store
      local.get $i i32.const 1 i32.add local.set $i
      local.get $out local.get $i i32.store offset=4
      local.get $pay local.get $pl i32.add local.set $p
      br $l))
    i32.const 0))
'''


@pytest.fixture(params=["native", "python"])
def both_outbox_writes(request, monkeypatch):
    """The outbox's group commit both ways: the native one (pipeline/outbox_native.py, what a
    node built by setup.sh uses) and the Python one it stands in for. "native" fails, never
    skips, when the extension is not built."""
    from iotwasm.pipeline import outbox, outbox_native

    monkeypatch.setattr(outbox, "use_native", lambda kind: outbox_native.use_native(request.param))
    return request.param
