"""The fleet's decisions on their own, without a server: the scheduler (labels, capacity,
spread, stickiness, and what it cannot place), the placement block's checks, and the health
the fleet view sums up for each node."""

from __future__ import annotations

import pytest

from iotwasm.errors import ConfigError
from iotwasm.fleet import NodeInfo, schedule

from fleets import fleet_deployment


# -- the scheduler on its own ------------------------------------------------------------------
def nodes(*specs) -> dict[str, NodeInfo]:
    return {i: NodeInfo(i, labels, memory, inst) for i, labels, memory, inst in specs}


def test_schedule_filters_by_labels_and_capacity_and_spreads():
    live = nodes(("a1", {"site": "a", "gpio": "true"}, 64 << 20, 8), ("a2", {"site": "a"}, 64 << 20, 8),
                 ("b1", {"site": "b", "gpio": "true"}, 64 << 20, 8), ("b2", {"site": "b"}, 16 << 20, 8))
    gpio = fleet_deployment("gpio", "sha256:" + "0" * 64, {"nodeSelector": {"gpio": "true"}, "perNode": True})
    spread = fleet_deployment("spread", "sha256:" + "0" * 64, {"replicas": 2, "spreadBy": "site"}, memory="32Mi")
    plan = schedule([gpio, spread], live, {})
    on = {n: set(v) for n, v in plan.assignments.items()}
    assert {n for n, v in on.items() if "gpio" in v} == {"a1", "b1"}
    sites = {live[n].labels["site"] for n, v in on.items() if "spread" in v}
    assert sites == {"a", "b"}          # one copy per site
    assert "spread" not in on["b2"]     # 32Mi does not fit in 16Mi
    assert not plan.problems


def test_schedule_is_sticky_and_reports_what_it_cannot_place():
    live = nodes(("n1", {}, 1 << 30, 2), ("n2", {}, 1 << 30, 2), ("n3", {}, 1 << 30, 2))
    d = fleet_deployment("d", "sha256:" + "0" * 64, {"replicas": 2})
    plan = schedule([d], live, {"n3": {"d"}})
    assert "d" in plan.assignments["n3"]          # kept where it runs
    big = fleet_deployment("big", "sha256:" + "0" * 64, {"replicas": 1}, replicas=3)
    plan = schedule([big], live, {})
    assert plan.problems and "lack capacity" in plan.problems[0]
    none = fleet_deployment("x", "sha256:" + "0" * 64, {"nodeSelector": {"site": "mars"}})
    assert "no live node matches site=mars" in schedule([none], live, {}).problems[0]


def test_placement_block_is_validated():
    with pytest.raises(ConfigError, match="either replicas or perNode"):
        fleet_deployment("d", "sha256:" + "0" * 64, {"replicas": 2, "perNode": True})
    with pytest.raises(ConfigError, match="placement.nodeSelctor"):
        fleet_deployment("d", "sha256:" + "0" * 64, {"nodeSelctor": {}})
    with pytest.raises(ConfigError, match="must be a sha256:<64 hex> digest"):
        fleet_deployment("d", "filter:1.0.0", {})


def test_the_fleet_view_sums_up_each_nodes_health():
    from iotwasm.fleet import FleetView

    view = FleetView(
        nodes={"a": (NodeInfo("a", running=["x"], health={"x": {"state": "running"}}), 1),
               "b": (NodeInfo("b", running=["x"], problems=["y: module refused"],
                              health={"x": {"state": "error"}, "y": {}}), 1)},
        deployments={}, rollouts={},
        assignments={"a": ({"deployments": {"x": {}}}, 1), "b": ({"deployments": {"x": {}, "y": {}}}, 1)})
    rows = {r["id"]: r for r in view.node_rows()}
    assert rows["a"]["health"] == "ok"
    assert rows["b"]["health"] == "not running y; x error; 1 problem(s)"
