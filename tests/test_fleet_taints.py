"""Taints on nodes and tolerations in placement: the scheduler on its own, validation, and a real
controller with nodes on nats-server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from iotwasm.errors import ConfigError
from iotwasm.fleet import Controller, NodeInfo, Taint, schedule


from fleets import ECHO, Member, fleet_deployment, wait_for

ANY = "sha256:" + "0" * 64


def tainted(**specs: list[str]) -> dict[str, NodeInfo]:
    return {n: NodeInfo(n, {"site": "a"}, taints=t) for n, t in specs.items()}


def tolerating(name: str, *tolerations: dict, **placement) -> object:
    return fleet_deployment(name, ANY, {"tolerations": list(tolerations), **placement})


def on(plan, name: str) -> set[str]:
    return {n for n, names in plan.assignments.items() if name in names}


def test_new_copies_go_only_where_every_taint_is_tolerated():
    live = tainted(gpu=["dedicated=gpu:NoSchedule"], edge=["zone:NoExecute"],
                   both=["dedicated=gpu:NoSchedule", "zone:NoExecute"], plain=[])
    cases = {
        "none": ([], {"plain"}),
        "equal": ([{"key": "dedicated", "value": "gpu"}], {"plain", "gpu"}),    # no effect: every effect
        "other-value": ([{"key": "dedicated", "value": "tpu"}], {"plain"}),
        "exists": ([{"key": "dedicated", "operator": "Exists"}], {"plain", "gpu"}),
        "wrong-effect": ([{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}], {"plain"}),
        "two": ([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                 {"key": "zone", "operator": "Exists", "effect": "NoExecute"}], {"plain", "gpu", "edge", "both"}),
        "everything": ([{"operator": "Exists"}], {"plain", "gpu", "edge", "both"}),
        "every-noexecute": ([{"operator": "Exists", "effect": "NoExecute"}], {"plain", "edge"}),
    }
    for name, (tolerations, expected) in cases.items():
        plan = schedule([tolerating(name, *tolerations, perNode=True)], live, {})
        assert on(plan, name) == expected, name


def test_running_copies_stay_on_noschedule_and_move_off_untolerated_noexecute():
    live = tainted(n1=["drain:NoSchedule"], n2=["broken=disk:NoExecute"], n3=[])
    d = tolerating("d", replicas=2)
    plan = schedule([d], live, {"n1": {"d"}, "n2": {"d"}})
    assert on(plan, "d") == {"n1", "n3"}        # n1 keeps its copy; n2's moves to n3
    tolerant = tolerating("t", {"key": "broken", "operator": "Exists"}, replicas=2)
    assert on(schedule([tolerant], live, {"n2": {"t"}}), "t") == {"n2", "n3"}
    # perNode counts the nodes it may stay on as well as those it may go to
    every = tolerating("every", perNode=True)
    assert on(schedule([every], live, {"n1": {"every"}, "n2": {"every"}}), "every") == {"n1", "n3"}


def test_unplaced_copies_name_the_taints_in_the_way():
    live = tainted(g1=["dedicated=gpu:NoSchedule"], g2=["dedicated=gpu:NoSchedule"])
    plan = schedule([tolerating("x")], live, {})
    assert plan.problems == ["deployment x: placed 0 of 1 copies: no live node matches (any) without an "
                             "untolerated taint; 2 matching node(s) are tainted dedicated=gpu:NoSchedule"]
    live["free"] = NodeInfo("free", {"site": "a"}, memory=1 << 20)
    plan = schedule([tolerating("y", replicas=3, nodeSelector={"site": "a"})], live, {})
    assert plan.problems == ["deployment y: placed 0 of 3 copies: 3 live node(s) match site=a: 2 are tainted "
                             "dedicated=gpu:NoSchedule (not tolerated), 1 lack capacity (16777216 bytes, "
                             "1 instance(s) per copy)"]


def test_taint_and_toleration_syntax_is_checked():
    assert Taint.parse("dedicated=gpu:NoSchedule") == Taint("dedicated", "gpu", "NoSchedule")
    assert str(Taint.parse("maintenance:NoExecute")) == "maintenance:NoExecute"
    for bad in ("dedicated=gpu", "dedicated=gpu:PreferNoSchedule", ":NoSchedule", "a b:NoSchedule",
                "k=v w:NoExecute"):
        with pytest.raises(ConfigError, match=r"^--taint '.*' must look like KEY=VALUE:EFFECT or KEY:EFFECT"):
            Taint.parse(bad, "--taint")
    with pytest.raises(ConfigError, match=r"placement\.tolerations\.0: .*operator Exists takes no value"):
        tolerating("d", {"key": "k", "operator": "Exists", "value": "v"})
    with pytest.raises(ConfigError, match=r"placement\.tolerations\.0: .*operator Equal needs a key"):
        tolerating("d", {"value": "v"})
    with pytest.raises(ConfigError, match=r"placement\.tolerations\.0\.effect: Input should be 'NoSchedule' or "
                                          r"'NoExecute'"):
        tolerating("d", {"key": "k", "effect": "NoDance"})
    with pytest.raises(ConfigError, match=r"placement\.tolerations\.0\.operator"):
        tolerating("d", {"key": "k", "operator": "In"})
    # a heartbeat written before taints existed still reads
    old = json.dumps({"id": "n1", "labels": {"a": "b"}, "memory": 1, "instances": 1, "time": 0}).encode()
    assert NodeInfo.from_json(old).taints == []


def test_up_refuses_a_malformed_taint():
    cli = [sys.executable, "-m", "iotwasm.cli.main", "up", "--no-api"]
    done = subprocess.run([*cli, "--fleet", "nats://127.0.0.1:1", "--taint", "gpu=yes"], capture_output=True,
                          timeout=60)
    assert done.returncode == 1
    assert "--taint 'gpu=yes' must look like KEY=VALUE:EFFECT" in done.stderr.decode()
    done = subprocess.run([*cli, "--taint", "gpu:NoSchedule"], capture_output=True, timeout=60)
    assert done.returncode == 1 and "--taint needs --fleet" in done.stderr.decode()


def test_controller_and_nodes_honour_taints(nats_server, tmp_path):  # noqa: F811
    async def main():
        ctl = Controller(nats_server.url, interval_s=0.2)
        await ctl.start()
        gpu = await Member(tmp_path, "gpu", nats_server.url, {}, taints=["dedicated=gpu:NoSchedule"]).start()
        plain = await Member(tmp_path, "plain", nats_server.url, {}).start()
        try:
            digest = await ctl.store.put_module(ECHO)
            await ctl.store.put_deployment(fleet_deployment("any", digest, {"perNode": True}), None)
            await ctl.store.put_deployment(fleet_deployment("ml", digest, {"perNode": True, "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}), None)
            await ctl.store.put_deployment(fleet_deployment("two", digest, {"replicas": 2}), None)
            await wait_for(lambda: plain.running() == {"any", "ml", "two"} and gpu.running() == {"ml"},
                           what="placement around the taint")
            assert any("deployment two: placed 1 of 2" in p and "tainted dedicated=gpu:NoSchedule" in p
                       for p in ctl.last_plan.problems)
            assert (await ctl.store.nodes())["gpu"][0].taints == ["dedicated=gpu:NoSchedule"]

            # a NoSchedule taint added later keeps what runs there
            plain.agent.taints = ["drain:NoSchedule"]
            await wait_for(lambda: ctl._nodes["plain"].taints == ["drain:NoSchedule"], what="taint announced")
            passes = ctl.passes
            await wait_for(lambda: ctl.passes > passes, what="a pass after the taint")
            assert plain.running() == {"any", "ml", "two"}
            # a NoExecute one moves away every copy that does not tolerate it
            plain.agent.taints = ["drain:NoExecute"]
            await wait_for(lambda: plain.running() == set(), what="eviction by NoExecute")
            assert gpu.running() == {"ml"}
            assert ("deployment two: placed 0 of 2 copies: no live node matches (any) without an untolerated "
                    "taint; 2 matching node(s) are tainted dedicated=gpu:NoSchedule, drain:NoExecute"
                    in ctl.last_plan.problems)
        finally:
            for m in (gpu, plain):
                await m.stop()
            await asyncio.wait_for(ctl.stop(), 10)

    asyncio.run(main())
