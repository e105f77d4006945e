"""Instances on demand in a container: scale from zero and back after the cool-down (an injected
clock, no waiting), growth up to `max` while every instance is busy, pre-warmed spares, and the
node-wide budget's least-recently-used eviction of idle instances (never a busy one, never
below a deployment's `min`). Real wasmtime throughout; batches held inside the guest by its
host call (tests/modules/log_then_echo.wat), so "busy" is a batch really running."""

from __future__ import annotations

import threading

import pytest
from conftest import ECHO_WAT
from test_store_lifetime import LOG_ECHO, Clock, Held

from iotwasm.container import BudgetSpent, InstanceBudget, Scaling, WasmContainer
from iotwasm.engine import Capabilities
from iotwasm.errors import ConfigError
from iotwasm.message import Message


def echo(rt, name: str, scaling: Scaling, clock: Clock, budget: InstanceBudget | None = None) -> WasmContainer:
    return WasmContainer(name, ECHO_WAT, runtime=rt, scaling=scaling, clock=clock, budget=budget).start()


def held(rt, name: str, scaling: Scaling, clock: Clock, h: Held, budget: InstanceBudget | None = None):
    return WasmContainer(name, LOG_ECHO, runtime=rt, scaling=scaling, clock=clock, budget=budget, on_log=h,
                         capabilities=Capabilities(host=frozenset({"log"}))).start()


def hold(c: WasmContainer, h: Held) -> tuple[threading.Thread, dict]:
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", c.process([Message("t", b"hold")])), daemon=True)
    t.start()
    assert h.entered.acquire(timeout=30), "the batch never reached the guest"
    return t, out


def done(batches, h: Held) -> None:
    h.release.set()
    for t, out in batches:
        t.join(30)
        assert not t.is_alive()
        assert [o.payload for o in out["r"].outputs] == [b"hold"], out


def ok(c: WasmContainer, payload: bytes = b"x") -> None:
    r = c.process([Message("t", payload)])
    assert [o.payload for o in r.outputs] == [payload] and not r.dead_letters, r


def test_min_zero_idles_to_no_instance_and_serves_the_next_message(runtime):
    clock = Clock()
    c = echo(runtime, "z", Scaling(0, 4, cooldown_s=30), clock)
    assert c.instances == 0 and c.stats().replicas == 0
    ok(c)
    assert c.instances == 1 and c.scaling_stats.from_zero == 1
    clock.now += 29
    assert not c.upkeep_due()   # the node asks on its loop, and hands `maintain` to a thread only then
    c.maintain()
    assert c.instances == 1, "closed before its cool-down"
    clock.now += 1
    assert c.upkeep_due()
    c.maintain()
    assert c.instances == 0 and c.scaling_stats.scale_downs == 1
    assert not c.upkeep_due()
    ok(c, b"again")
    st = c.stats()
    assert st.replicas == 1 and st.scaling.from_zero == 2
    # the counters of the instance that was closed still count
    assert st.totals()["calls"] == 2 and st.totals()["messages"] == 2
    c.stop()


def test_grows_while_every_instance_is_busy_up_to_max(runtime):
    clock, h = Clock(), Held()
    c = held(runtime, "g", Scaling(1, 3), clock, h)
    assert c.instances == 1
    batches = [hold(c, h) for _ in range(3)]
    assert c.instances == 3 and c.scaling_stats.scale_ups == 2 and c.scaling_stats.from_zero == 0
    done(batches, h)
    clock.now += 3600
    c.maintain()
    assert c.instances == 1, "min is kept"
    c.stop()


def test_a_prewarmed_deployment_s_first_message_does_not_instantiate(runtime):
    clock, h = Clock(), Held()
    c = held(runtime, "p", Scaling(0, 4, prewarm=1), clock, h)
    assert c.upkeep_due()   # a spare is missing
    c.maintain()   # the node does this when `upkeep_due` says so
    assert c.instances == 1 and c.scaling_stats.prewarmed == 1
    assert not c.upkeep_due()
    t = hold(c, h)
    assert c.scaling_stats.scale_ups == 0, "the first message instantiated"
    assert c.upkeep_due()
    c.maintain()   # the spare is in use: another one is made
    assert c.instances == 2 and c.scaling_stats.prewarmed == 2
    done([t], h)
    assert not c.upkeep_due()   # two idle, within their cool-down
    clock.now += 3600
    assert c.upkeep_due()
    c.maintain()   # idle: one spare is all it keeps
    assert c.instances == 1
    assert not c.upkeep_due()
    c.stop()


def test_the_budget_evicts_the_least_recently_used_idle_instance_elsewhere(runtime):
    clock = Clock()
    budget = InstanceBudget(max_instances=3)
    a = echo(runtime, "a", Scaling(0, 3), clock, budget)
    b = echo(runtime, "b", Scaling(0, 3), clock, budget)
    h = Held()
    hc = held(runtime, "h", Scaling(0, 1), clock, h, budget)
    ok(a)                                    # a: one instance, used at 1000
    clock.now += 1
    t = hold(hc, h)                          # h: one busy instance
    clock.now += 1
    ok(b)                                    # b: one instance, used at 1002
    assert budget.usage()[0] == 3
    clock.now += 1
    c = echo(runtime, "c", Scaling(0, 1), clock, budget)
    ok(c)                                    # evicts a's (least recently used, idle), not h's busy one
    assert (a.instances, b.instances, hc.instances, c.instances) == (0, 1, 1, 1)
    assert a.stats().scaling.evictions == 1 and budget.evictions == 1
    clock.now += 1
    ok(a)                                    # a comes back: now b's is the least recently used idle one
    assert (a.instances, b.instances, hc.instances) == (1, 0, 1)
    assert b.scaling_stats.evictions == 1
    # the budget's running totals are what the containers hold
    assert budget.usage() == tuple(map(sum, zip(*(x.holding() for x in (a, b, c, hc)))))
    done([t], h)
    for x in (a, b, c, hc):
        x.stop()
    assert budget.usage() == (0, 0)


def test_the_budget_never_evicts_a_busy_instance_nor_goes_below_min(runtime):
    clock, h = Clock(), Held()
    budget = InstanceBudget(max_instances=2)
    busy = held(runtime, "busy", Scaling(0, 1), clock, h, budget)
    pinned = echo(runtime, "pinned", Scaling(1, 2), clock, budget)   # its one instance is its min
    t = hold(busy, h)
    other = echo(runtime, "other", Scaling(0, 1), clock, budget)
    with pytest.raises(BudgetSpent, match="budget is spent"):
        other.process([Message("t", b"x")])
    assert other.instances == 0 and busy.instances == 1 and pinned.instances == 1
    assert budget.refusals == 1
    done([t], h)                             # the busy batch finished on its own instance
    ok(other)                                # now idle: evictable
    assert busy.scaling_stats.evictions == 1 and pinned.scaling_stats.evictions == 0
    for x in (busy, pinned, other):
        x.stop()


def test_a_memory_budget_counts_linear_memory(runtime):
    clock = Clock()
    a = echo(runtime, "ma", Scaling(0, 2), clock)
    ok(a)
    one = a.holding()[1]
    a.stop()
    assert one > 0
    budget = InstanceBudget(max_memory=int(one * 1.5))
    a = echo(runtime, "ma", Scaling(0, 2), clock, budget)
    b = echo(runtime, "mb", Scaling(0, 2), clock, budget)
    ok(a)
    clock.now += 1
    ok(b)
    assert (a.instances, b.instances) == (0, 1) and a.scaling_stats.evictions == 1
    assert budget.usage() == (1, b.holding()[1])
    a.stop(), b.stop()
    assert budget.usage() == (0, 0)


def test_bounds_are_checked(runtime):
    for bad in (Scaling(2, 1), Scaling(0, 0), Scaling(0, 2, prewarm=3), Scaling(0, 2, cooldown_s=-1)):
        with pytest.raises(ConfigError):
            WasmContainer("x", ECHO_WAT, runtime=runtime, scaling=bad)
