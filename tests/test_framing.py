"""Framing of the iotwasm ABI v1: round trips and hostile output buffers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotwasm.engine import HostContext, Limits, prepare
from iotwasm.engine.abi_v1 import (OUT_RECORD, pack_inputs, pack_outputs, parse_outputs,
                                   unpack_inputs)
from iotwasm.errors import AbiError
from iotwasm.message import Message

from conftest import ECHO_WAT

topics = st.text(min_size=0, max_size=40).filter(lambda t: "\x00" not in t)
payloads = st.binary(min_size=0, max_size=300)
messages = st.builds(Message, topics, payloads, st.integers(min_value=-(2**63), max_value=2**63 - 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=50))
def test_inputs_round_trip(msgs):
    assert unpack_inputs(pack_inputs(msgs)) == msgs


records = st.lists(st.tuples(st.integers(0, 49), st.integers(0, 1), st.binary(max_size=30),
                             st.binary(max_size=200)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(records, st.integers(0, 50))
def test_outputs_round_trip_and_done_filter(recs, done):
    recs = [(i, k, t.decode("latin-1").encode(), p) for i, k, t, p in recs]
    outs, errs = parse_outputs(pack_outputs(recs), 50, done, base=1000)
    want_outs = [(1000 + i, t.decode() if t else None, p) for i, k, t, p in recs if k == 0 and i < done]
    want_errs = [(1000 + i, p.decode("utf-8", "replace")) for i, k, t, p in recs if k == 1 and i < done]
    assert [tuple(o) for o in outs] == want_outs
    assert errs == want_errs


@settings(max_examples=200, deadline=None)
@given(records.filter(bool), st.data())
def test_truncated_output_is_an_abi_error(recs, data):
    buf = pack_outputs([(i, k, t, p) for i, k, t, p in recs])
    cut = data.draw(st.integers(1, len(buf) - 1)) if len(buf) > 1 else 0
    truncated = buf[:cut]
    # a cut on a record boundary is a valid shorter buffer; anywhere else must be refused
    boundaries, off = {0}, 0
    for _, _, t, p in recs:
        off += OUT_RECORD.size + len(t) + len(p)
        boundaries.add(off)
    if cut in boundaries:
        parse_outputs(truncated, 50, 50, 0)
    else:
        with pytest.raises(AbiError):
            parse_outputs(truncated, 50, 50, 0)


def test_out_of_range_index_and_unknown_kind_are_refused():
    with pytest.raises(AbiError, match="names input 5"):
        parse_outputs(pack_outputs([(5, 0, b"", b"x")]), 5, 5, 0)
    with pytest.raises(AbiError, match="unknown kind 7"):
        parse_outputs(pack_outputs([(0, 7, b"", b"x")]), 5, 5, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.builds(Message, topics, payloads.filter(lambda p: p[:1] not in (b"!", b"?"))),
                min_size=1, max_size=80))
def test_real_guest_echoes_every_batch(runtime_echo, msgs):
    result = runtime_echo.process(msgs)
    assert not result.dead_letters
    assert [(o.index, o.topic or "", o.payload) for o in result.outputs] == [
        (i, m.topic, m.payload) for i, m in enumerate(msgs)]


@pytest.fixture(scope="module")
def runtime_echo(runtime):
    return prepare(runtime.load(ECHO_WAT, name="echo"), Limits(), HostContext("echo")).new_guest()
