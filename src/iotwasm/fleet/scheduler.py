"""Placement as a pure function: filter → score → bind, like a cluster scheduler.

Kept free of NATS so it can be reasoned about and tested on its own. Binds are sticky: a copy
stays where it runs while that node is live, matches and has room, so a reconcile never
shuffles healthy work; only missing copies are placed, on the best-scored node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import FleetDeployment, NodeInfo


@dataclass
class Plan:
    assignments: dict[str, list[str]] = field(default_factory=dict)   # node id → deployment names
    problems: list[str] = field(default_factory=list)


def matches(node: NodeInfo, selector: dict[str, str]) -> bool:
    return all(node.labels.get(k) == v for k, v in selector.items())


def schedule(deployments: list[FleetDeployment], live: dict[str, NodeInfo],
             current: dict[str, set[str]]) -> Plan:
    """Bind every deployment's copies to `live` nodes; `current` is node id → names it holds."""
    plan = Plan({n: [] for n in live})
    used = {n: [0, 0] for n in live}   # memory, instances bound so far

    def fits(node: NodeInfo, mem: int, inst: int) -> bool:
        u = used[node.id]
        return u[0] + mem <= node.memory and u[1] + inst <= node.instances

    def allocation(node: NodeInfo, mem: int, inst: int) -> float:
        u = used[node.id]
        return max((u[0] + mem) / max(node.memory, 1), (u[1] + inst) / max(node.instances, 1))

    for d in sorted(deployments, key=lambda d: d.name):
        p = d.placement
        mem, inst = d.demand()
        candidates = sorted((n for n in live.values() if matches(n, p.node_selector)), key=lambda n: n.id)
        target = len(candidates) if p.per_node else (p.replicas or 0)
        chosen: list[NodeInfo] = []
        spread: dict[str, int] = {}

        def bind(node: NodeInfo) -> None:
            chosen.append(node)
            used[node.id][0] += mem
            used[node.id][1] += inst
            plan.assignments[node.id].append(d.name)
            if p.spread_by:
                v = node.labels.get(p.spread_by, "")
                spread[v] = spread.get(v, 0) + 1

        for node in candidates:    # sticky: keep what runs and still fits
            if len(chosen) < target and d.name in current.get(node.id, ()) and fits(node, mem, inst):
                bind(node)
        while len(chosen) < target:
            free = [n for n in candidates if n not in chosen and fits(n, mem, inst)]
            if not free:
                why = ("no live node matches " + (", ".join(f"{k}={v}" for k, v in p.node_selector.items())
                                                  or "(any)") if not candidates else
                       f"{len(candidates)} matching node(s), the others lack capacity "
                       f"({mem} bytes, {inst} instance(s) per copy)")
                plan.problems.append(f"deployment {d.name}: placed {len(chosen)} of {target} copies: {why}")
                break
            best = min(free, key=lambda n: (spread.get(n.labels.get(p.spread_by, ""), 0) if p.spread_by else 0,
                                            allocation(n, mem, inst), n.id))
            bind(best)
    return plan
