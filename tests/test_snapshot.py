"""Ready guests from a snapshot of an initialised instance (engine/snapshot.py, wasm_scan.py).

Each test compares guests that got init's state copied in with guests that ran init
themselves: same outputs, same memory size, and init run once per factory only where
its outcome cannot differ between instances."""

from __future__ import annotations

import wasmtime
import pytest

from iotwasm.engine import Capabilities, HostContext, Limits, Runtime, prepare
from iotwasm.engine.wasm_scan import EXPORT_PREFIX, Unplannable, plan
from iotwasm.errors import GuestTrap, InitError
from iotwasm.message import Message

from conftest import ECHO_WAT, ROOT, module_path

CAPS = Capabilities.grant("config", "clock", "log", config={"greeting": "hello"})
_TEXT = module_path("init_state.wat").read_text()
INIT_STATE = _TEXT[_TEXT.index("(module"):]  # the text itself, without its leading comment


def factory(runtime: Runtime, wat: str = INIT_STATE, caps: Capabilities = CAPS, name: str = "state"):
    return prepare(runtime.load(wat, name=name), Limits(), HostContext(name, caps))


def outputs(guest, payloads=(b"a", b"b")) -> list[bytes]:
    return [o.payload for o in guest.process([Message("t", p) for p in payloads]).outputs]


def runs_init_itself(f, why: str, n: int = 3) -> None:
    """Every guest of `f` ran init itself (no snapshot, for `why`) and answers as init made it."""
    guests = [f.new_guest() for _ in range(n)]
    assert f.snapshots.snapshot is None and f.snapshots.why_not == why
    for g in guests:
        assert outputs(g) == [b"hello5", b"hello5"]


def test_later_guests_get_the_state_init_made_without_running_it(runtime):
    f = factory(runtime)
    first = f.new_guest()  # runs init, and is recorded
    snap = f.snapshots.snapshot
    assert snap is not None and f.snapshots.why_not is None
    assert snap.pages == 3  # init grew memory from 1 page
    # the greeting past the first page, and the two globals init set (not the heap pointer)
    assert any(off <= 0x20000 < off + len(d) for off, d in snap.ranges)
    assert len(snap.globals) == 2
    later = [f.new_guest() for _ in range(3)]
    for g in [first, *later]:
        assert outputs(g) == [b"hello5", b"hello5"]
        assert g.memory_pages() == first.memory_pages()


def test_a_guest_replaced_after_a_trap_starts_from_the_snapshot(runtime):
    f = factory(runtime)
    f.new_guest()
    g = f.new_guest()
    result = g.process([Message("t", b"!boom"), Message("t", b"x")])
    assert isinstance(result.dead_letters[0].error, GuestTrap)
    assert g.recycled == 1
    assert [o.payload for o in result.outputs] == [b"hello5"]


def test_init_with_a_call_that_may_differ_each_time_is_run_by_every_guest(runtime):
    wat = INIT_STATE.replace(";;INIT-EXTRA", "(drop (call $now_ms))")
    runs_init_itself(factory(runtime, wat), "init calls iot.now_ms")


def test_a_failing_init_fails_every_guest_and_is_not_snapshotted(runtime):
    f = factory(runtime, caps=Capabilities.grant("config", "clock"))  # no greeting configured
    for _ in range(2):
        with pytest.raises(InitError, match="iot_init returned 2"):
            f.new_guest()
    assert f.snapshots.snapshot is None and f.snapshots.why_not is None
    # a factory with the key configured still snapshots
    assert outputs(factory(runtime).new_guest()) == [b"hello5", b"hello5"]


def test_the_description_shows_only_the_modules_own_exports(runtime):
    compiled = runtime.load(INIT_STATE, name="state")
    assert compiled.snapshot is not None and len(compiled.snapshot.globals) == 3
    names = [e.name for e in compiled.info.exports]
    assert names == ["memory", "iot_abi_version", "iot_init", "iot_alloc", "iot_process"]


def test_a_cached_load_keeps_the_plan_and_snapshots(tmp_path):
    with Runtime(tmp_path) as rt:
        rt.load(INIT_STATE, name="state")
    with Runtime(tmp_path) as rt:
        compiled = rt.load(INIT_STATE, name="state")
        assert rt.cache.hits == 1
        assert compiled.snapshot is not None
        assert EXPORT_PREFIX not in " ".join(e.name for e in compiled.info.exports)
        f = factory(rt)
        f.new_guest()
        assert f.snapshots.snapshot is not None
        assert outputs(f.new_guest()) == [b"hello5", b"hello5"]


@pytest.mark.parametrize("path", ["range_filter.wasm", "rust/range_filter.wasm",
                                  "assemblyscript/range_filter.wasm", "unit_convert.wasm",
                                  "rust/unit_convert.wasm", "assemblyscript/unit_convert.wasm",
                                  "moving_average.wasm"])
def test_the_sdk_modules_snapshot_and_answer_as_if_init_ran(runtime, path):
    """The C, Rust and AssemblyScript examples: a snapshot guest's outputs are those of a
    guest that ran init itself (the factory's first), message for message."""
    config = {"field": "value", "min": "10", "max": "30", "to": "F", "window": "3"}
    caps = Capabilities.grant("config", config=config)
    f = factory(runtime, ROOT / "examples" / "modules" / path, caps, name="m")
    first = f.new_guest()
    assert f.snapshots.snapshot is not None, f.snapshots.why_not
    later = f.new_guest()
    msgs = [b'{"value": %d, "unit": "C"}' % v for v in (5, 12, 29, 31, 20)]
    assert outputs(later, msgs) == outputs(first, msgs)


def test_a_module_importing_wasi_is_not_snapshotted(runtime):
    wat = ECHO_WAT.replace("(module", '(module (import "wasi_snapshot_preview1" "sched_yield" '
                           '(func (result i32)))', 1)
    f = factory(runtime, wat, Capabilities.grant("wasi"), name="echo")
    assert [o.payload for o in f.new_guest().process([Message("t", b"x")]).outputs] == [b"x"]
    assert f.snapshots.snapshot is None and f.snapshots.why_not == "imports WASI"


# -- what the bytes must not contain -----------------------------------------------------------
BASE = """(module %s (memory (export "memory") 1) (table 2 funcref)
  (func $f (export "f") (result i32) %s (i32.const 0)))"""


@pytest.mark.parametrize("extra,body,why", [
    ("", "(table.set 0 (i32.const 0) (ref.null func))", "table.set"),
    ("", "(drop (table.grow 0 (ref.null func) (i32.const 1)))", "0xFC 15"),
    ("", "(table.fill 0 (i32.const 0) (ref.null func) (i32.const 1))", "0xFC 17"),
    ("(elem $e func $f)", "(table.init 0 $e (i32.const 0) (i32.const 0) (i32.const 1))", "0xFC 12"),
    ('(data $d "x")', "(data.drop $d)", "0xFC 9"),
    ('(data $d "x")', "(memory.init $d (i32.const 0) (i32.const 0) (i32.const 1))", "0xFC 8"),
    ('(import "env" "g" (global $g (mut i32)))', "", "imports something other than functions"),
    ("(global $r (mut funcref) (ref.null func))", "", "not a number"),
])
def test_state_outside_memory_and_globals_is_refused(extra, body, why):
    wasm = wasmtime.wat2wasm(BASE % (extra, body))
    with pytest.raises(Unplannable, match=why):
        plan(bytes(wasm))


def test_the_rewritten_module_exports_each_mutable_global_and_nothing_else_changes():
    wat = """(module (memory (export "memory") 1)
      (global $a (mut i32) (i32.const 7)) (global $k i64 (i64.const 1))
      (global $b (mut f64) (f64.const 1.5)) (global $c (mut v128) (v128.const i32x4 0 0 0 0))
      (func (export "f") (result i32) (global.get $a)))"""
    with pytest.raises(Unplannable, match="not a number"):  # a v128 global is not captured
        plan(bytes(wasmtime.wat2wasm(wat)))
    wasm = bytes(wasmtime.wat2wasm(wat.replace("(global $c (mut v128) (v128.const i32x4 0 0 0 0))", "")))
    p, out = plan(wasm)
    assert p.globals == ((EXPORT_PREFIX + "0", "i32"), (EXPORT_PREFIX + "2", "f64"))
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, out), [])
    ex = inst.exports(store)
    assert ex[EXPORT_PREFIX + "0"].value(store) == 7 and ex[EXPORT_PREFIX + "2"].value(store) == 1.5
    assert ex["f"](store) == 7
    assert len(out) > len(wasm) and out[:8] == wasm[:8]


def test_a_module_already_using_the_reserved_names_is_left_as_it_is(runtime):
    wat = ECHO_WAT.replace('(global $heap (mut i32) (i32.const 1024))',
                           f'(global $heap (export "{EXPORT_PREFIX}0") (mut i32) (i32.const 1024))')
    with pytest.raises(Unplannable, match="reserves"):
        plan(bytes(wasmtime.wat2wasm(wat)))
    compiled = runtime.load(wat, name="echo")
    assert compiled.snapshot is None
    assert EXPORT_PREFIX + "0" in [e.name for e in compiled.info.exports]


def test_malformed_bytes_are_not_planned_and_fail_to_compile_as_before(runtime):
    wasm = bytes(wasmtime.wat2wasm(ECHO_WAT))
    for cut in (9, 20, len(wasm) // 2, len(wasm) - 1):
        with pytest.raises(Unplannable):
            plan(wasm[:cut])


def test_a_snapshot_that_cannot_be_taken_never_fails_a_guest(runtime, monkeypatch):
    from iotwasm.engine import snapshot

    def broken(plan, exports):
        raise RuntimeError("globals unreadable")

    monkeypatch.setattr(snapshot, "_read_globals", broken)
    runs_init_itself(factory(runtime), "the snapshot could not be taken (RuntimeError)")


def test_what_init_logs_is_logged_again_by_every_instance_that_gets_the_snapshot(runtime):
    wat = INIT_STATE.replace(
        '(import "iot" "now_ms" (func $now_ms (result i64)))',
        '(import "iot" "now_ms" (func $now_ms (result i64)))\n'
        '  (import "iot" "log" (func $log (param i32 i32 i32)))').replace(
        ";;INIT-EXTRA", "(call $log (i32.const 1) (i32.const 64) (i32.const 8))")
    lines: list[tuple[str, int, str]] = []
    f = prepare(runtime.load(wat, name="state"), Limits(),
                HostContext("state", CAPS, on_log=lambda *line: lines.append(line)))
    guests = [f.new_guest() for _ in range(3)]
    assert f.snapshots.snapshot is not None, f.snapshots.why_not
    assert lines == [("state", 1, "greeting")] * 3   # as if each had run init
    for g in guests:
        assert outputs(g) == [b"hello5", b"hello5"]


def test_bytes_compiled_for_a_second_engine_setting_are_not_checked_again(runtime, monkeypatch):
    from iotwasm.engine import wasm_scan

    first = runtime.load(INIT_STATE, name="state")
    decoded: list[int] = []
    real = wasm_scan._code
    monkeypatch.setattr(wasm_scan, "_code", lambda r: decoded.append(1) or real(r))
    fuel = runtime.load(INIT_STATE, name="state", limits=Limits(fuel=10_000_000))
    assert fuel.engine is not first.engine and fuel.snapshot == first.snapshot
    assert decoded == []


def test_two_tenants_deploying_the_same_module_each_get_their_own_state(runtime):
    """A snapshot belongs to its factory (one deployment, its configuration), never to the
    module's digest: another deployment of the same bytes with other config starts from its
    own init."""
    compiled = runtime.load(INIT_STATE, name="state")
    mine = prepare(compiled, Limits(), HostContext("acme/state", CAPS))
    theirs = prepare(compiled, Limits(), HostContext(
        "other/state", Capabilities.grant("config", "clock", config={"greeting": "bye"})))
    for _ in range(2):
        assert outputs(mine.new_guest()) == [b"hello5", b"hello5"]
        assert outputs(theirs.new_guest()) == [b"bye5", b"bye5"]
    assert mine.snapshots.snapshot is not theirs.snapshots.snapshot


def test_guests_made_at_once_on_several_threads_all_start_from_init_s_state(runtime):
    """Scale-up makes instances on several threads while the first may still be recording:
    one records, the others run init themselves, every one answers the same."""
    import concurrent.futures

    f = factory(runtime)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        guests = list(pool.map(lambda _: f.new_guest(), range(16)))
    assert f.snapshots.snapshot is not None
    for g in guests + [f.new_guest()]:
        assert outputs(g) == [b"hello5", b"hello5"]
