"""The component C-API call path agrees with wasmtime-py's public API, and the batch encoding
round-trips through the Python SDK's guest code for any topic and payload."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotwasm.engine import Capabilities, HostContext, Limits, prepare
from iotwasm.engine.component_batch import decode_outputs, encode_batch
from iotwasm.engine.component_fastcall import check_utf8
from iotwasm.message import Message

from components import LANGS, ROOT, cached_runtime, component

sys.path.insert(0, str(ROOT / "sdk" / "python"))
from iotwasm_sdk import _batch  # noqa: E402  (the guest side, run on the host)


@pytest.fixture(scope="module", params=LANGS)
def guest(request):
    rt = cached_runtime()
    compiled = rt.load(component(request.param, "misbehave"))
    g = prepare(compiled, Limits(), HostContext("m", Capabilities.grant("log", "kv", "config"))
                ).new_guest()
    yield g
    g.close()
    rt.close()


BATCHES = [
    b"",  # the guest answers "" to an empty batch
    encode_batch([Message("t", b"ok:1")]),
    encode_batch([Message("t/\u00e9", "ok:\u00e9\U0001d11e".encode()), Message("u", b"many:2")]),
    encode_batch([Message("t", b"boom"), Message("t", b"binary")]),
    b"not a batch",  # the SDK fails the call with an error result
]


@pytest.mark.parametrize("data", BATCHES, ids=["empty", "one", "two-unicode", "boom", "not-a-batch"])
def test_fast_call_agrees_with_the_public_api(guest, data):
    guest._arm()
    public = guest._process._func(guest.store, data.decode())  # wasmtime-py's Func.__call__
    assert public.tag in ("ok", "err")
    guest._arm()
    assert guest._process(data) == (public.tag == "ok", public.payload.encode())


def test_utf8_check():
    assert check_utf8(b"abc") and check_utf8("\u00e9".encode())
    assert not check_utf8(b"\xff") and not check_utf8(b"\xed\xa0\x80")  # a lone surrogate


topics = st.text(min_size=0, max_size=20)
payloads = st.binary(max_size=60) | st.text(max_size=60).map(str.encode)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(topics, payloads, st.integers(0, 2**62)), min_size=1, max_size=8))
def test_batches_round_trip_through_the_guest_sdk(items):
    """Whatever the host sends, the SDK sees exactly the topic and payload, and what the SDK
    emits comes back to the host exactly."""
    messages = [Message(t, p, ts) for t, p, ts in items]
    seen = []

    def echo(msg):
        seen.append((msg.topic, msg.data, msg.timestamp_ms))
        _batch.emit(msg.data, topic=msg.topic if "\x1e" not in msg.topic and "\x1f" not in msg.topic
                    else None)
        return msg.payload

    _batch.state.handler = echo
    data = encode_batch(messages)
    assert check_utf8(data)
    out = _batch.process(data.decode()).encode()
    surrogate_free = [m.topic.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
                      for m in messages]
    assert seen == [(t, m.payload, m.timestamp_ms) for t, m in zip(surrogate_free, messages)]
    outputs, rejects = decode_outputs(out, messages, 0)
    assert rejects == []
    expect = []
    for i, (t, m) in enumerate(zip(surrogate_free, messages)):
        expect.append((i, None if (t == "" or "\x1e" in t or "\x1f" in t) else t, m.payload))
        expect.append((i, None, m.payload))
    assert [(o.index, o.topic, o.payload) for o in outputs] == expect
