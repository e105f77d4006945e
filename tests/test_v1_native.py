"""The native batch call (engine/v1_native.py) against the Python path it shortcuts.

The extension handles the common case of an iotwasm-v1 batch and hands everything else back.
A guest here writes whatever output buffer and status the test chooses, so hostile and broken
outputs reach both paths; every outcome (outputs, dead letters and their errors, fuel,
recycles, memory) must be the same.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotwasm.engine import HostContext, Limits, Runtime, prepare
from iotwasm.engine.abi_v1 import OUT_HEADER, pack_outputs
from iotwasm.engine.v1_native import EXTENSION
from iotwasm.errors import ConfigError
from iotwasm.message import Message

from conftest import ECHO_WAT, V1_WAT_PRELUDE

# iot_process copies the first input's payload, after its first 8 bytes, over the output
# header and records (at most `cap` bytes) and returns the status in bytes 0-3; bytes 4-7 are
# pages to grow memory by first (the host's view of memory then moves). Status 0x7fffffff traps.
RAW_WAT = "(module" + V1_WAT_PRELUDE + r'''
  (func (export "iot_process") (param $in i32) (param $len i32) (param $count i32)
        (param $out i32) (param $cap i32) (result i32)
    (local $pay i32) (local $pl i32) (local $status i32) (local $n i32)
    local.get $in i32.const 16 i32.add local.get $in i32.load offset=8 i32.add local.set $pay
    local.get $in i32.load offset=12 local.set $pl
    local.get $pay i32.load local.set $status
    local.get $pay i32.load offset=4 memory.grow drop
    local.get $status i32.const 0x7fffffff i32.eq (if (then unreachable))
    local.get $pl i32.const 8 i32.sub local.set $n
    local.get $n local.get $cap i32.gt_u (if (then local.get $cap local.set $n))
    local.get $out local.get $pay i32.const 8 i32.add local.get $n memory.copy
    local.get $status))
'''

LIMITS = Limits(memory=8 * 1024 * 1024, max_output=256 * 1024)


@pytest.fixture(scope="module")
def factories():
    made = {}
    for kind in ("native", "python"):
        rt = Runtime(batch_calls=kind)
        made[kind] = (rt, prepare(rt.load(RAW_WAT, name="raw"), LIMITS, HostContext("raw")))
    yield {k: f for k, (_, f) in made.items()}
    for rt, _ in made.values():
        rt.close()


def outcome(guest, msgs):
    try:
        r = guest.process(msgs)
    except Exception as e:  # the same exception from both paths is the same outcome
        return ("raised", type(e).__name__, str(e))
    return ([tuple(o) for o in r.outputs],
            [(d.index, type(d.error).__name__, str(d.error)) for d in r.dead_letters],
            r.fuel_used, guest.recycled, guest.memory_pages())


def ready(factory):
    """A guest whose buffers exist: a fresh one's first batch always allocates them in Python."""
    g = factory.new_guest()
    assert g.process([Message("warm", raw(0, header(0, 1)))]).outputs == []
    return g


def both(factories, msgs):
    got = {kind: outcome(ready(f), msgs) for kind, f in factories.items()}
    assert got["native"] == got["python"]
    return got["native"]


def raw(status: int, body: bytes, grow: int = 0) -> bytes:
    return struct.pack("<iI", status, grow) + body


def header(used: int, done: int) -> bytes:
    return OUT_HEADER.pack(used, done)


records = st.lists(st.tuples(st.integers(0, 24), st.sampled_from([0, 0, 0, 1, 2]),
                             st.binary(max_size=12), st.binary(max_size=40)), max_size=12)


@settings(max_examples=400, deadline=None)
@given(records, st.integers(1, 20), st.data())
def test_any_output_buffer_has_the_same_outcome_on_both_paths(factories, recs, n, data):
    body = pack_outputs(recs)
    if body and data.draw(st.booleans()):
        body = body[:data.draw(st.integers(0, len(body) - 1))]  # truncated somewhere
    used = data.draw(st.sampled_from([len(body), len(body), 0, len(body) + 1, 2**32 - 1]))
    done = data.draw(st.sampled_from([n, n, 0, n - 1, n + 1]))
    status = data.draw(st.sampled_from([0, 0, 0, 1, -1, -2, 7, 0x7fffffff]))
    grow = data.draw(st.sampled_from([0, 0, 1]))
    topics = data.draw(st.lists(st.text(max_size=8), min_size=n, max_size=n))
    msgs = [Message(topics[0], raw(status, header(used, done) + body, grow))]
    msgs += [Message(t, b"x%d" % i) for i, t in enumerate(topics[1:])]
    both(factories, msgs)


def test_the_common_case_is_the_same_on_both_paths(factories):
    recs = [(0, 0, b"a/b", b"one"), (0, 0, b"", b""), (2, 0, "\u00e9t\u00e9".encode(), b"\x00" * 3),
            (1, 0, b"\xff\xfe", b"bad utf-8 topic")]
    body = pack_outputs(recs)
    msgs = [Message("in", raw(0, header(len(body), 3) + body)), Message("x", b"y"), Message("", b"")]
    outs, dead, *_ = both(factories, msgs)
    assert outs == [(0, "a/b", b"one"), (0, None, b""), (2, "\u00e9t\u00e9", b"\x00" * 3),
                    (1, "\ufffd\ufffd", b"bad utf-8 topic")]
    assert dead == []


def test_error_records_traps_and_bad_statuses_are_reported_alike(factories):
    err = pack_outputs([(0, 1, b"", b"rejected")])
    assert both(factories, [Message("t", raw(0, header(len(err), 1) + err))])[1] == [
        (0, "GuestError", "raw:iot_process: rejected")]
    assert both(factories, [Message("t", raw(0x7fffffff, header(0, 0)))])[1] == [
        (0, "GuestTrap", "raw:iot_process: trap: unreachable executed")]
    assert both(factories, [Message("t", raw(-1, header(0, 0)))])[1] == [
        (0, "GuestError", "raw:iot_process: returned error -1 (IOT_ERR_FRAMING)")]
    liar = header(2**32 - 1, 1)
    assert both(factories, [Message("t", raw(0, liar))])[1][0][1] == "AbiError"


def test_memory_grown_during_the_call_is_seen_by_the_host(factories):
    body = pack_outputs([(0, 0, b"", b"after growth")])
    msgs = [Message("t", raw(0, header(len(body), 1) + body, grow=3))]
    outs, dead, _, _, pages = both(factories, msgs)
    assert outs == [(0, None, b"after growth")] and pages >= 5


def test_inputs_python_would_refuse_are_refused_alike(factories):
    # a lone surrogate cannot be UTF-8; a timestamp beyond 64 bits cannot be framed
    assert both(factories, [Message("\ud800", b"x")])[0] == "raised"
    assert both(factories, [Message("t", b"x", 2**63)])[0] == "raised"
    # a payload that is not bytes is framed by Python, with the same result
    body = pack_outputs([(0, 0, b"", b"ok")])
    assert both(factories, [Message("t", bytearray(raw(0, header(len(body), 1) + body)))])[0] == [
        (0, None, b"ok")]


def test_messages_of_other_types_are_framed_by_python_alike(factories):
    # only an exact Message with an int timestamp is read natively (its attributes run no
    # Python code); a subclass, or a timestamp that is an int subclass, goes the Python way
    class Tagged(Message):
        __slots__ = ("tag",)

    body = pack_outputs([(0, 0, b"", b"ok")])
    payload = raw(0, header(len(body), 1) + body)
    native = ready(factories["native"])._native
    for msg in (Tagged("t", payload), Message("t", payload, True)):
        assert native.run([msg]) is None  # nothing called: left to Python
        assert both(factories, [msg])[:2] == ([(0, None, b"ok")], [])
    assert native.run([Message("t", payload)]) == [(0, None, b"ok")]


def test_inputs_larger_than_the_buffers_take_the_python_path(factories):
    big = b"z" * 200_000  # beyond the first input buffer: the guest allocates a larger one
    body = pack_outputs([(0, 0, b"", b"big")])
    for _ in range(2):  # the second call finds the buffers large enough
        assert both(factories, [Message("t", raw(0, header(len(body), 1) + body + big))])[:2] == (
            [(0, None, b"big")], [])


@pytest.mark.parametrize("n", [1, 16, 17, 500])
def test_batches_of_any_size_echo_on_the_native_path(n):
    with Runtime(batch_calls="native") as rt:
        g = prepare(rt.load(ECHO_WAT, name="echo"), Limits(), HostContext("echo")).new_guest()
        msgs = [Message(f"d/{i}", b"%d" % i, i) for i in range(n)]
        r = g.process(msgs)
        assert [(o.index, o.topic, o.payload) for o in r.outputs] == [
            (i, m.topic, m.payload) for i, m in enumerate(msgs)]


def test_the_native_batch_call_is_built_and_the_default():
    # scripts/setup.sh builds it: a checkout whose default fell back to Python would pass
    # every other test while paying Python's framing on every batch
    assert EXTENSION.exists(), f"{EXTENSION} missing: run scripts/setup.sh"
    with Runtime() as rt:
        assert rt.native_batch
        g = prepare(rt.load(ECHO_WAT, name="echo"), Limits(), HostContext("echo")).new_guest()
        assert g._native is None  # made with the buffers, by the first batch
        assert [o.payload for o in g.process([Message("t", b"x")]).outputs] == [b"x"]
        assert g._native is not None


def test_a_batch_call_kind_is_checked():
    with pytest.raises(ConfigError, match="batch calls 'fast' must be one of auto, native, python"):
        Runtime(batch_calls="fast")


def test_fuel_is_metered_alike_on_both_paths():
    # a metered guest: fuel set before every call, what it used read after, on either path
    used = {}
    for kind in ("native", "python"):
        with Runtime(batch_calls=kind) as rt:
            metered = Limits(fuel=10_000_000)
            g = prepare(rt.load(ECHO_WAT, name="echo", limits=metered), metered,
                        HostContext("echo")).new_guest()
            runs = [g.process([Message("t", b"x" * k)]) for k in (1, 1, 50, 500)]
            assert [o.payload for r in runs for o in r.outputs] == [b"x", b"x", b"x" * 50, b"x" * 500]
            used[kind] = [r.fuel_used for r in runs]
            assert g._native is not None if kind == "native" else g._native is None
    assert used["native"] == used["python"] and all(u > 0 for u in used["native"])


def test_a_closed_guest_runs_nothing_more():
    with Runtime(batch_calls="native") as rt:
        g = prepare(rt.load(ECHO_WAT, name="echo"), Limits(), HostContext("echo")).new_guest()
        assert [o.payload for o in g.process([Message("t", b"a")]).outputs] == [b"a"]
        native = g._native
        assert native is not None
        g.close()
        assert g._native is None and g.store is None
        # the caller it dropped still holds its store: running it is safe, not a crash
        assert native.run([Message("t", b"c")]) == [(0, "t", b"c")]
