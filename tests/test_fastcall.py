"""The fast call path must agree with wasmtime-py's public API, and never touch memory unchecked."""

from __future__ import annotations

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st

from iotwasm.engine.fastcall import WASMTIME_VERSION, CallFailed, RawFunc
from iotwasm.engine.guest_memory import GuestMemory
from iotwasm.errors import AbiError

WAT = """
(module
  (memory (export "memory") 1 4)
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "mix") (param i32 i32 i32 i32 i32) (result i32)
    local.get 0 local.get 1 i32.mul local.get 2 i32.xor local.get 3 i32.sub local.get 4 i32.rotl)
  (func (export "div") (param i32 i32) (result i32) local.get 0 local.get 1 i32.div_s)
  (func (export "grow") (param i32) (result i32) local.get 0 memory.grow)
  (func (export "load") (param i32) (result i32) local.get 0 i32.load8_u)
  (func (export "noop") (param i32 i32))
)
"""
I32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@pytest.fixture()
def inst():
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, WAT), [])
    return store, instance.exports(store)


def test_pinned_wasmtime_version():
    from importlib.metadata import version

    assert version("wasmtime") == WASMTIME_VERSION


@settings(max_examples=200, deadline=None)
@given(args=st.lists(I32, min_size=5, max_size=5))
def test_raw_call_agrees_with_public_call(args):
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    ex = wasmtime.Instance(store, wasmtime.Module(engine, WAT), []).exports(store)
    mix = RawFunc(store, ex["mix"], "mix", 5)
    add = RawFunc(store, ex["add"], "add", 2)
    assert mix(*args) == ex["mix"](store, *args)
    assert add(args[0], args[1]) == ex["add"](store, args[0], args[1])


def test_raw_call_traps_like_public_call(inst):
    store, ex = inst
    div = RawFunc(store, ex["div"], "div", 2)
    with pytest.raises(wasmtime.Trap) as public:
        ex["div"](store, 1, 0)
    with pytest.raises(CallFailed) as raw:
        div(1, 0)
    assert isinstance(raw.value.cause, wasmtime.Trap)
    assert raw.value.cause.trap_code == public.value.trap_code == wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO
    # the entry is still usable after a trap
    assert div(10, 3) == 3


def test_signature_is_checked_when_binding(inst):
    store, ex = inst
    with pytest.raises(AbiError, match="signature"):
        RawFunc(store, ex["add"], "add", 5)
    with pytest.raises(AbiError, match="signature"):
        RawFunc(store, ex["noop"], "noop", 2)  # has no result
    noop = RawFunc(store, ex["noop"], "noop", 2, ())
    assert noop(1, 2) is None


def test_guest_memory_agrees_and_checks_bounds(inst):
    store, ex = inst
    mem = GuestMemory(store, ex["memory"])
    assert mem.size() == 65536 == ex["memory"].data_len(store)
    mem.write(100, b"hello")
    assert bytes(ex["memory"].read(store, 100, 105)) == b"hello" == mem.read(100, 5)
    for off, data in ((65535, b"xy"), (-1, b"a"), (70000, b"")):
        with pytest.raises(AbiError, match="outside guest memory"):
            mem.write(off, data)
    with pytest.raises(AbiError):
        mem.read(65530, 10)


def test_guest_memory_follows_growth(inst):
    store, ex = inst
    mem = GuestMemory(store, ex["memory"])
    grow = RawFunc(store, ex["grow"], "grow", 1)
    load = RawFunc(store, ex["load"], "load", 1)
    assert grow(2) == 1
    with pytest.raises(AbiError):  # not refreshed yet: the old size still bounds access
        mem.write(70000, b"z")
    assert mem.refresh() == 3 * 65536
    mem.write(3 * 65536 - 1, b"\x7f")
    assert load(3 * 65536 - 1) == 0x7F
    assert grow(5) == -1  # over the max of 4 pages
