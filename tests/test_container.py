"""WasmContainer: lifecycle, load balancing, stats, restarts, threads."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from iotwasm.container import TRANSITIONS, Lifecycle, RestartPolicy, State, WasmContainer
from iotwasm.container.balancing import STRATEGIES
from iotwasm.errors import (AbiError, ConfigError, ContainerUnavailable, IllegalTransition,
                            InitError)
from iotwasm.engine import Limits
from iotwasm.message import Message

from conftest import ECHO_WAT

INIT_TRAP_WAT = ECHO_WAT.replace(
    '(func (export "iot_abi_version")',
    '(func (export "iot_init") (result i32) unreachable)\n  (func (export "iot_abi_version")')


def echo(runtime, **kw) -> WasmContainer:
    return WasmContainer("echo", ECHO_WAT, runtime=runtime, **kw)


def test_every_illegal_transition_is_refused():
    for source, allowed in TRANSITIONS.items():
        for target in State:
            lc = Lifecycle("m")
            lc._state = source
            if target in allowed:
                lc.move(target, "test")
                assert lc.state == target
            else:
                with pytest.raises(IllegalTransition, match=f"cannot go from {source} to {target}"):
                    lc.move(target)
                assert lc.state == source


def test_lifecycle_of_a_container(runtime):
    c = echo(runtime)
    assert c.state == State.CREATED
    c.start()
    assert [t.target for t in c.lifecycle.history] == [State.LOADED, State.INSTANTIATED, State.RUNNING]
    c.suspend()
    with pytest.raises(ContainerUnavailable, match="is suspended"):
        c.process([Message("t", b"x")])
    c.resume()
    assert c.process([Message("t", b"x")]).outputs[0].payload == b"x"
    c.stop()
    assert c.state == State.TERMINATED
    with pytest.raises(ContainerUnavailable):
        c.process([Message("t", b"x")])
    with pytest.raises(IllegalTransition):
        c.resume()


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategies_use_every_replica(runtime, strategy):
    c = echo(runtime, replicas=4, strategy=strategy, weights=[1, 2, 3, 4]).start()
    for _ in range(200):
        c.process([Message("t", b"x")])
    calls = [s.calls for s in c.stats().instances]
    assert sum(calls) == 200
    if strategy == "round-robin":
        assert calls == [50, 50, 50, 50]
    elif strategy == "weighted":
        assert calls == [20, 40, 60, 80]
    elif strategy == "least-memory":
        pass  # depends on how the guest's memory grows; see the dedicated test below
    else:
        assert all(n > 0 for n in calls), calls


def test_least_memory_prefers_the_smaller_instance(runtime):
    c = echo(runtime, replicas=2, strategy="least-memory").start()
    c.process([Message("t", b"x" * 300_000)])  # instance 0 grows its memory
    for _ in range(10):
        c.process([Message("t", b"y")])
    assert [s.calls for s in c.stats().instances] == [1, 10]


def test_unknown_strategy_and_bad_replicas(runtime):
    with pytest.raises(ConfigError, match="unknown load-balancing strategy 'fastest'"):
        echo(runtime, strategy="fastest")
    with pytest.raises(ConfigError, match="replicas 5 must be between 1 and max_instances 4"):
        echo(runtime, replicas=5, limits=Limits(max_instances=4))


def test_stats_count_messages_errors_and_latency(runtime):
    c = echo(runtime).start()
    c.process([Message("t", b"a"), Message("t", b"!"), Message("t", b"?")])
    s = c.stats().instances[0]
    assert (s.calls, s.messages, s.outputs, s.dead_letters) == (1, 3, 1, 2)
    assert s.errors == Counter({"trap": 1, "guest_error": 1})
    assert s.recycles == 1 and s.memory_pages >= 2 and s.last_latency_ms > 0


def test_parallel_batches_from_threads_lose_nothing(runtime):
    c = echo(runtime, replicas=2).start()
    seen: list[bytes] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for j in range(50):
            batch = [Message("t", b"%d-%d-%d" % (k, j, i)) for i in range(20)]
            out = c.process(batch)
            assert [o.payload for o in out.outputs] == [m.payload for m in batch]
            with lock:
                seen.extend(o.payload for o in out.outputs)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == len(set(seen)) == 6 * 50 * 20
    assert sum(s.messages for s in c.stats().instances) == 6000


def test_scale_up_and_down(runtime):
    c = echo(runtime, replicas=1).start()
    c.scale(3)
    assert len(c.stats().instances) == 3
    c.scale(1)
    assert len(c.stats().instances) == 1
    assert c.process([Message("t", b"x")]).outputs


class Clock:
    """An injected monotonic clock: the test moves time, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_init_failure_goes_to_error_and_restarts_with_backoff(runtime):
    clock = Clock()
    c = WasmContainer("bad-init", INIT_TRAP_WAT, runtime=runtime, clock=clock,
                      restart=RestartPolicy(backoff_s=0.05, max_backoff_s=0.2, jitter=0))
    with pytest.raises(InitError, match=r"bad-init:iot_init: trap: unreachable executed"):
        c.start()
    assert c.state == State.ERROR
    assert c.restart_due_in() == pytest.approx(0.05)
    clock.now += 0.05
    with pytest.raises(ContainerUnavailable, match="restart in 0.1s"):
        c.process([Message("t", b"x")])  # the attempt ran, failed, and backed off further
    assert c.state == State.ERROR
    assert c.restart_due_in() == pytest.approx(0.1)  # the delay doubled
    for want in (0.2, 0.2):                            # … up to max_backoff_s
        clock.now += 1
        c.tick()
        assert c.restart_due_in() == pytest.approx(want)


def test_restart_backoff_is_jittered_below_the_policy_delay(runtime):
    import random

    policy = RestartPolicy(backoff_s=1.0, max_backoff_s=8.0, jitter=0.5)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    clock = Clock()
    c = WasmContainer("bad-init", INIT_TRAP_WAT, runtime=runtime, clock=clock, restart=policy,
                      rng=random.Random(7))
    with pytest.raises(InitError):
        c.start()
    delays = [c.restart_due_in()]
    for _ in range(4):
        clock.now += 10
        c.tick()
        delays.append(c.restart_due_in())
    for n, d in enumerate(delays, start=1):
        assert policy.delay(n) * 0.5 <= d <= policy.delay(n)
    assert len(set(delays)) == len(delays), "every wait is drawn anew"


def test_restart_policy_refuses_a_backoff_it_cannot_follow():
    with pytest.raises(ConfigError, match="restart policy: backoff needs 0 < initial"):
        RestartPolicy(backoff_s=0)
    with pytest.raises(ConfigError, match="restart policy: backoff jitter"):
        RestartPolicy(jitter=2)
    for bad in (0, -1, 2.5, True):  # a crash loop of no batches would fail every batch
        with pytest.raises(ConfigError, match=f"crash_loop_batches {bad!r} must be a whole number"):
            RestartPolicy(crash_loop_batches=bad)


def test_permanent_errors_are_not_retried_on_failure(runtime):
    missing = ECHO_WAT.replace('(export "iot_process")', "")
    c = WasmContainer("noproc", missing, runtime=runtime)
    with pytest.raises(AbiError, match="noproc: missing export 'iot_process'"):
        c.start()
    assert c.state == State.ERROR and c.restart_due_in() is None
    always = WasmContainer("noproc", missing, runtime=runtime, restart=RestartPolicy(mode="always"))
    with pytest.raises(AbiError):
        always.start()
    assert always.restart_due_in() is not None


def test_crash_loop_puts_container_in_error_then_it_recovers(runtime):
    clock = Clock()
    c = echo(runtime, clock=clock, restart=RestartPolicy(backoff_s=0.05, crash_loop_batches=3)).start()
    for _ in range(3):
        r = c.process([Message("t", b"!")])
        assert len(r.dead_letters) == 1
    assert c.state == State.ERROR
    assert "crash loop: 3 batches in a row failed" in c.lifecycle.history[-1].reason
    with pytest.raises(ContainerUnavailable):
        c.process([Message("t", b"ok")])
    clock.now += 0.05
    assert c.process([Message("t", b"ok")]).outputs[0].payload == b"ok"
    assert c.state == State.RUNNING and c.restarts == 1


def test_restart_policy_never(runtime):
    c = echo(runtime, restart=RestartPolicy(mode="never", crash_loop_batches=1)).start()
    c.process([Message("t", b"!")])
    assert c.state == State.ERROR and c.restart_due_in() is None
    c.restart()
    assert c.state == State.RUNNING
