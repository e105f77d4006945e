"""Placement as a pure function: filter → score → bind, like a cluster scheduler.

Kept free of NATS so it can be reasoned about and tested on its own. Binds are sticky: a copy
stays where it runs while that node is live, matches and has room, so a reconcile never
shuffles healthy work; only missing copies are placed, on the best-scored node.

Taints: a new copy goes only to a node whose every taint the deployment tolerates. A copy that
already runs stays on a node tainted later with `NoSchedule`, and is moved away from one
tainted with a `NoExecute` taint it does not tolerate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .model import FleetDeployment, NodeInfo, Taint


@dataclass
class Plan:
    assignments: dict[str, list[str]] = field(default_factory=dict)   # node id → deployment names
    problems: list[str] = field(default_factory=list)


def matches(node: NodeInfo, selector: dict[str, str]) -> bool:
    return all(node.labels.get(k) == v for k, v in selector.items())


def taints_of(node: NodeInfo) -> list[Taint]:
    """The node's taints; one that cannot be read (a heartbeat not written by this version)
    repels everything but a toleration of every taint, as the safe reading."""
    out = []
    for text in node.taints:
        try:
            out.append(Taint.parse(text))
        except ConfigError:
            out.append(Taint(text, "", "NoExecute"))
    return out


def schedule(deployments: list[FleetDeployment], live: dict[str, NodeInfo],
             current: dict[str, set[str]]) -> Plan:
    """Bind every deployment's copies to `live` nodes; `current` is node id → names it holds."""
    plan = Plan({n: [] for n in live})
    used = {n: [0, 0] for n in live}   # memory, instances bound so far
    taints = {n: taints_of(info) for n, info in live.items()}

    def fits(node: NodeInfo, mem: int, inst: int) -> bool:
        u = used[node.id]
        return u[0] + mem <= node.memory and u[1] + inst <= node.instances

    def allocation(node: NodeInfo, mem: int, inst: int) -> float:
        u = used[node.id]
        return max((u[0] + mem) / max(node.memory, 1), (u[1] + inst) / max(node.instances, 1))

    for d in sorted(deployments, key=lambda d: d.name):
        p = d.placement
        mem, inst = d.demand()
        matching = sorted((n for n in live.values() if matches(n, p.node_selector)), key=lambda n: n.id)
        repelled = {n.id: p.untolerated(taints[n.id]) for n in matching}
        # a copy may stay where it runs unless a NoExecute taint evicts it; new copies need every
        # taint tolerated
        stays = [n for n in matching if d.name in current.get(n.id, ())
                 and not any(t.effect == "NoExecute" for t in repelled[n.id])]
        candidates = [n for n in matching if not repelled[n.id]]
        target = len({n.id for n in stays + candidates}) if p.per_node else (p.replicas or 0)
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

        for node in stays:    # sticky: keep what runs and still fits
            if len(chosen) < target and fits(node, mem, inst):
                bind(node)
        while len(chosen) < target:
            free = [n for n in candidates if n not in chosen and fits(n, mem, inst)]
            if not free:
                why = _unplaced(p.node_selector, matching, chosen, repelled, mem, inst)
                plan.problems.append(f"deployment {d.name}: placed {len(chosen)} of {target} copies: {why}")
                break
            best = min(free, key=lambda n: (spread.get(n.labels.get(p.spread_by, ""), 0) if p.spread_by else 0,
                                            allocation(n, mem, inst), n.id))
            bind(best)
    return plan


def _unplaced(selector: dict[str, str], matching: list[NodeInfo], chosen: list[NodeInfo],
              repelled: dict[str, list[Taint]], mem: int, inst: int) -> str:
    """Why no further copy could be placed, counting the matching nodes by reason."""
    wanted = ", ".join(f"{k}={v}" for k, v in selector.items()) or "(any)"
    if not matching:
        return f"no live node matches {wanted}"
    others = [n for n in matching if n not in chosen]
    tainted = [n for n in others if repelled[n.id]]
    parts = []
    if chosen:
        parts.append(f"{len(chosen)} hold a copy")
    if tainted:
        names = sorted({str(t) for n in tainted for t in repelled[n.id]})
        parts.append(f"{len(tainted)} are tainted {', '.join(names)} (not tolerated)")
    if len(others) > len(tainted):
        parts.append(f"{len(others) - len(tainted)} lack capacity ({mem} bytes, {inst} instance(s) per copy)")
    if not chosen and len(tainted) == len(matching):
        return f"no live node matches {wanted} without an untolerated taint; {len(tainted)} matching " \
               f"node(s) are tainted {', '.join(names)}"
    return f"{len(matching)} live node(s) match {wanted}: " + ", ".join(parts)
