"""wasmtime's pooling allocator behind `Runtime(pool_slots=N)`: same results as allocating
on demand, a fixed number of live instances, memory limits within a slot."""

from __future__ import annotations

import pytest

from iotwasm.engine import Capabilities, HostContext, Limits, Runtime, prepare
from iotwasm.errors import ConfigError, InitError
from iotwasm.message import Message

from conftest import ECHO_WAT, EXAMPLES

CFG = {"field": "value", "min": "10", "max": "30"}


def test_pooled_guests_give_the_same_results_and_reuse_freed_slots():
    msgs = [Message("t", b'{"value": %d}' % v) for v in (5, 10, 20, 30, 31)]
    results = []
    for slots in (0, 3):
        with Runtime(pool_slots=slots) as rt:
            f = prepare(rt.load(EXAMPLES / "range_filter.wasm"), Limits(),
                        HostContext("rf", Capabilities.grant("config", config=CFG)))
            guests = [f.new_guest() for _ in range(3)]
            out = [[o.payload for o in g.process(msgs).outputs] for g in guests]
            if slots:
                with pytest.raises(InitError, match="maximum concurrent limit of 3 for core instances"):
                    f.new_guest()  # the pool is full
                guests.pop().close()
                del out[-1]
                # the freed slot serves a new instance, which starts from scratch
                g = f.new_guest()
                out.append([o.payload for o in g.process(msgs).outputs])
            results.append(out)
    assert results[0] == results[1]
    assert results[0][0] == [b'{"value": 10}', b'{"value": 20}', b'{"value": 30}']


def test_a_memory_limit_above_the_slot_is_refused():
    with Runtime(pool_slots=2, memory_reservation=16 * 2**20) as rt:
        compiled = rt.load(ECHO_WAT, name="echo")
        with pytest.raises(ConfigError, match=r"^echo: memory limit 32Mi is above the 16Mi of an instance pool slot$"):
            prepare(compiled, Limits(memory=32 * 2**20), HostContext("echo"))
        g = prepare(compiled, Limits(memory=16 * 2**20), HostContext("echo")).new_guest()
        assert g.process([Message("t", b"x")]).outputs[0].payload == b"x"


def test_a_negative_pool_is_refused():
    with pytest.raises(ConfigError, match="pool size"):
        Runtime(pool_slots=-1)
