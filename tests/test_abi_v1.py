"""Batches through a real iotwasm-v1 guest: nothing lost, nothing duplicated."""

from __future__ import annotations

import pytest

from iotwasm.engine import HostContext, Limits, Runtime, prepare
from iotwasm.errors import GuestError, GuestTrap, MemoryLimitExceeded
from iotwasm.message import Message

from conftest import ECHO_WAT


@pytest.fixture(scope="module", params=["native", "python"])
def runtime(request):
    """Every test here on both batch paths (engine/v1_native.py)."""
    with Runtime(batch_calls=request.param) as rt:
        yield rt


def guest(runtime, limits=None):
    g = prepare(runtime.load(ECHO_WAT, name="echo"), limits or Limits(), HostContext("echo")).new_guest()
    # its buffers made (a fresh guest's first batch allocates them on the Python path), so
    # what follows takes the native path where the runtime has it
    assert [o.payload for o in g.process([Message("warm", b"up")]).outputs] == [b"up"]
    return g


def test_trap_mid_batch_loses_no_other_message(runtime):
    g = guest(runtime)
    payloads = [b"a", b"b", b"!trap", b"c", b"!again", b"d"]
    result = g.process([Message("t", p) for p in payloads])
    assert [(o.index, o.payload) for o in result.outputs] == [(0, b"a"), (1, b"b"), (3, b"c"), (5, b"d")]
    assert [(d.index, d.message.payload) for d in result.dead_letters] == [(2, b"!trap"), (4, b"!again")]
    for d in result.dead_letters:
        assert isinstance(d.error, GuestTrap)
        assert str(d.error) == "echo:iot_process: trap: unreachable executed"
    assert g.recycled == 2  # a fresh instance after each trap
    # and it keeps working
    assert [o.payload for o in g.process([Message("t", b"z")]).outputs] == [b"z"]


def test_error_records_become_dead_letters_without_a_trap(runtime):
    g = guest(runtime)
    result = g.process([Message("t", b"ok"), Message("t", b"?bad input")])
    # the echo module emits the rejected payload as the error text
    assert [d.index for d in result.dead_letters] == [1]
    assert isinstance(result.dead_letters[0].error, GuestError)
    assert "?bad input" in str(result.dead_letters[0].error)
    assert g.recycled == 0


def test_output_buffer_full_resumes_where_it_stopped(runtime):
    g = guest(runtime)
    big = [Message("big", bytes([65 + i]) * 30_000) for i in range(10)]  # 300 KB of output
    result = g.process(big)
    assert not result.dead_letters
    assert [o.payload for o in result.outputs] == [m.payload for m in big]
    assert [o.index for o in result.outputs] == list(range(10))


def test_batch_larger_than_memory_limit_is_split_then_dead_lettered(runtime):
    g = guest(runtime, Limits(memory=256 * 1024))
    msgs = [Message("t", b"x" * 40_000) for _ in range(8)] + [Message("t", b"y" * 400_000)]
    result = g.process(msgs)
    assert [o.payload for o in result.outputs] == [m.payload for m in msgs[:8]]
    assert [d.index for d in result.dead_letters] == [8]
    assert isinstance(result.dead_letters[0].error, MemoryLimitExceeded)
    assert "memory limit 256Ki" in str(result.dead_letters[0].error)


def test_empty_batch_and_empty_payload(runtime):
    g = guest(runtime)
    assert g.process([]).outputs == []
    r = g.process([Message("", b"")])
    assert [(o.topic, o.payload) for o in r.outputs] == [(None, b"")]


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_topics_are_carried_per_output(runtime, n):
    g = guest(runtime)
    msgs = [Message(f"devices/d{i}/t", b"%d" % i) for i in range(n)]
    r = g.process(msgs)
    assert [(o.topic, o.payload) for o in r.outputs] == [(m.topic, m.payload) for m in msgs]
