"""Staged rollouts as a pure state machine: stages, gate, failures, timeouts, operator actions.

The same `step` runs inside the controller each pass; tests/test_fleet_rollout_nodes.py shows it
with real node processes."""

from __future__ import annotations

import pytest

from iotwasm.errors import ConfigError
from iotwasm.fleet.model import FleetDeployment, RolloutSpec
from iotwasm.fleet.rollout import Rollout, control, start, step

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64
NODES = [f"n{i}" for i in range(1, 7)]


def doc(module: str) -> dict:
    return {"apiVersion": "iotwasm.io/v1", "kind": "Deployment", "metadata": {"name": "conv"},
            "spec": {"module": module}}


def spec(**kw) -> RolloutSpec:
    kw.setdefault("gate", {"observe": "10s"})
    return RolloutSpec.model_validate(kw)


class Fleet:
    """Node health as the agents would report it, driven by what the rollout assigns."""

    def __init__(self, nodes=NODES, bad: str | None = None):
        self.health = {n: {"assigned": OLD, "digest": OLD, "state": "running", "messages": 100,
                           "dead_letters": 0, "traps": 0, "rollbacks": 0} for n in nodes}
        self.bad = bad   # "traps" | "refused" | "rollback" | "stuck" | "crash"

    def apply(self, r: Rollout) -> None:
        for n, h in self.health.items():
            want = r.doc_for(n)["spec"]["module"]
            if h["assigned"] == want:
                continue
            h["assigned"] = want
            if want == NEW and self.bad == "refused":
                h["problem"] = "module sha256:bbbb refused: signature missing"
            elif want == NEW and self.bad == "rollback":
                h["rollbacks"] += 1
                h["rollback_reason"] = "revision 2 failed its health gate"
            elif want == NEW and self.bad == "stuck":
                pass
            elif want == NEW and self.bad == "crash":
                h.update(digest=want, state="error", error="conv:iot_process: trap: unreachable executed",
                         messages=0, dead_letters=0, traps=0)
            else:
                h.pop("problem", None)
                h.update(digest=want, messages=0, dead_letters=0, traps=0)

    def traffic(self, n: int = 20) -> None:
        for h in self.health.values():
            h["messages"] += n
            if h["digest"] == NEW and self.bad == "traps":
                h["traps"] += n
                h["dead_letters"] += n

    def run(self, r: Rollout, s: RolloutSpec, t0: float = 1000.0, seconds: float = 600, dt: float = 1.0):
        t = t0
        while r.state == "progressing" and t < t0 + seconds:
            step(r, s, sorted(self.health), {n: dict(h) for n, h in self.health.items()}, t)
            self.apply(r)
            self.traffic()
            t += dt
        return t


def new_rollout(t: float = 1000.0) -> Rollout:
    return start("conv", 2, doc(NEW), doc(OLD), now=t)


def test_stage_sizes_canary_then_waves():
    assert spec(canary=1, waves=1).stage_sizes(6) == [1, 6]
    assert spec(canary=1, waves=2).stage_sizes(6) == [1, 4, 6]
    assert spec(canary="10%", waves=3).stage_sizes(20) == [2, 8, 14, 20]
    assert spec(canary=0, waves=2).stage_sizes(4) == [2, 4]
    assert spec(canary=5, waves=2).stage_sizes(3) == [3]
    assert spec(canary="1%", waves=1).stage_sizes(3) == [1, 3]


@pytest.mark.parametrize("bad", [{"canary": "ten%"}, {"canary": -1}, {"waves": 0},
                                 {"gate": {"observe": "soon"}}, {"stageTimeout": "forever"},
                                 {"gate": {"maxTrapRate": 2}}])
def test_rollout_block_is_validated(bad):
    with pytest.raises(ConfigError, match="rollout"):
        FleetDeployment.parse({"deployment": doc(NEW), "rollout": bad})


def test_a_healthy_version_goes_canary_then_waves_to_every_node():
    r, s, fleet = new_rollout(), spec(canary=1, waves=2, gate={"observe": "5s", "minMessages": 10}), Fleet()
    seen_sizes = []
    t = 1000.0
    while r.state == "progressing" and t < 1300:
        step(r, s, NODES, {n: dict(h) for n, h in fleet.health.items()}, t)
        seen_sizes.append(len(r.updated))
        fleet.apply(r)
        fleet.traffic()
        t += 1
    assert r.state == "succeeded", r.events
    # never more than the stage allows: canary 1, then 4, then 6
    assert sorted(set(seen_sizes)) == [1, 4, 6]
    assert seen_sizes.index(4) > seen_sizes.index(1) + 5     # the canary was observed first
    assert all(r.doc_for(n)["spec"]["module"] == NEW for n in NODES)
    assert not r.failed and "passed the gate" in " ".join(e[1] for e in r.events)


@pytest.mark.parametrize("bad, why", [("traps", "trap rate 1.00 > 0.00"),
                                      ("refused", "signature missing"),
                                      ("rollback", "update gate rolled it back"),
                                      ("crash", "the new version is error: conv:iot_process: trap")])
def test_a_canary_that_fails_its_gate_rolls_back_before_any_wave(bad, why):
    r, s, fleet = new_rollout(), spec(canary=1, waves=2), Fleet(bad=bad)
    fleet.run(r, s)
    assert r.state == "rolled-back"
    assert why in r.reason and "n1" in r.reason
    assert r.updated == [] and list(r.failed) == ["n1"]
    # only the canary ever got the new version; everybody is back on the old one
    fleet.apply(r)
    assert {h["assigned"] for h in fleet.health.values()} == {OLD}
    assert all(h["digest"] == OLD for n, h in fleet.health.items() if n != "n1")


def test_failures_up_to_the_abort_threshold_are_replaced_then_the_rollout_aborts():
    r, s, fleet = new_rollout(), spec(canary=1, waves=1, maxFailedNodes=2), Fleet(bad="traps")
    fleet.run(r, s)
    assert r.state == "rolled-back"
    assert list(r.failed) == ["n1", "n2", "n3"]     # two replaced canaries, the third aborts
    assert "more than maxFailedNodes 2" in r.reason


def test_a_stage_that_never_serves_times_out_with_the_reason():
    r, s, fleet = new_rollout(), spec(canary=1, stageTimeout="30s"), Fleet(bad="stuck")
    end = fleet.run(r, s)
    assert r.state == "rolled-back" and end < 1000 + 60
    assert "canary timed out after 30s" in r.reason and "n1 still serves sha256:aaaa" in r.reason


def test_a_gate_without_enough_traffic_times_out():
    r, s = new_rollout(), spec(canary=1, stageTimeout="20s", gate={"observe": "1s", "minMessages": 1000})
    Fleet().run(r, s)
    assert r.state == "rolled-back" and "message(s) the gate needs were seen" in r.reason


def test_pause_holds_resume_continues_abort_rolls_back():
    r, s, fleet = new_rollout(), spec(canary=1, waves=1, gate={"observe": "3s"}), Fleet()
    fleet.run(r, s, seconds=2)
    assert r.updated == ["n1"]
    control(r, "pause", now=1003)
    assert r.state == "paused" and not step(r, s, NODES, fleet.health, 1500)   # holds, no timeout
    with pytest.raises(ValueError, match="only a paused one"):
        control(Rollout("x", 1, {}, {}, state="succeeded"), "resume")
    control(r, "resume", now=1500)
    fleet.run(r, s, t0=1500)
    assert r.state == "succeeded"
    r2 = new_rollout()
    fleet2 = Fleet()
    fleet2.run(r2, s, seconds=2)
    control(r2, "abort", now=1003)
    assert r2.state == "aborted" and r2.updated == [] and r2.doc_for("n1") == doc(OLD)
    with pytest.raises(ValueError, match="already aborted"):
        control(r2, "abort")


def test_a_node_that_leaves_is_dropped_and_its_place_taken():
    r, s, fleet = new_rollout(), spec(canary=1, waves=1, gate={"observe": "3s"}), Fleet()
    fleet.run(r, s, seconds=1.5)
    assert r.updated == ["n1"]
    del fleet.health["n1"]                 # n1 died; the scheduler no longer binds it
    fleet.run(r, s, t0=1002)
    assert r.state == "succeeded" and "n1" not in r.updated and len(r.updated) == 5


def test_a_record_round_trips_through_json():
    r = new_rollout()
    step(r, spec(), NODES, Fleet().health, 1001)
    assert Rollout.from_json(r.to_json()) == r
