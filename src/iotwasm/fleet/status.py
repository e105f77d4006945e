"""What the fleet looks like right now, shaped for people and programs.

One read of the KV buckets (heartbeats, deployments, assignments, rollouts) becomes the rows that
`iotwasm nodes` prints and the management API serves under ``/v1/fleet``, so both show the same
thing. Every read is bounded: a fleet link that is down or a server that does not answer gives
`FleetUnavailable` after `timeout` seconds, never a caller that waits forever.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ..errors import IotwasmError
from .model import FleetDeployment, NodeInfo
from .rollout import Rollout
from .scheduler import matches, taints_of
from .store import FleetStore


class FleetUnavailable(IotwasmError):
    """The fleet's NATS server cannot be asked right now (link down, or no answer in time)."""

    kind = "fleet-unavailable"


@dataclass
class FleetView:
    """Live nodes (heartbeats still in the bucket), fleet deployments, assignments, rollouts."""

    nodes: dict[str, tuple[NodeInfo, int]]
    deployments: dict[str, tuple[FleetDeployment, int]]
    assignments: dict[str, tuple[dict, int]]
    rollouts: dict[str, tuple[Rollout, int]]

    @classmethod
    async def read(cls, store: FleetStore | None, url: str, timeout: float = 3.0) -> "FleetView":
        if store is None or not store.connected:
            raise FleetUnavailable(f"fleet {url}: the link is down (reconnecting in the background)")
        try:
            nodes, deployments, assignments, rollouts = await asyncio.wait_for(
                asyncio.gather(store.nodes(), store.deployments(), store.assignments(), store.rollouts()), timeout)
        except asyncio.TimeoutError:
            raise FleetUnavailable(f"fleet {url}: no answer within {timeout:g} s") from None
        except IotwasmError:
            raise
        except Exception as e:   # the link dropped mid-read: the same answer as a link that is down
            raise FleetUnavailable(f"fleet {url}: {type(e).__name__}: {e}".rstrip(": ")) from None
        return cls(nodes, deployments, assignments, rollouts)

    def assigned(self, node_id: str) -> list[str]:
        return sorted(self.assignments.get(node_id, ({}, 0))[0].get("deployments", {}))

    def node_rows(self, now: float | None = None) -> list[dict]:
        """One row per live node; the heartbeat age is measured against the node's own clock."""
        now = time.time() if now is None else now
        return [{"id": node_id, "labels": info.labels, "taints": info.taints, "memory": info.memory,
                 "instances": info.instances,
                 "heartbeat_age_s": round(max(0.0, now - info.time), 1), "assigned": self.assigned(node_id),
                 "assignment_revision": info.assignment_revision, "running": info.running,
                 "health": self.health(node_id, info), "deployments": info.health,
                 "problems": info.problems}
                for node_id, (info, _) in sorted(self.nodes.items())]

    def health(self, node_id: str, info: NodeInfo) -> str:
        """`ok`, or what is wrong in a few words: problems reported, assigned deployments not
        running, containers not in the running state."""
        issues = []
        missing = [n for n in self.assigned(node_id) if n not in info.running]
        if missing:
            issues.append(f"not running {', '.join(missing)}")
        broken = [n for n, h in sorted(info.health.items()) if h.get("state") not in (None, "running")]
        if broken:
            issues.append(", ".join(f"{n} {info.health[n]['state']}" for n in broken))
        if info.problems:
            issues.append(f"{len(info.problems)} problem(s)")
        return "; ".join(issues) or "ok"

    def wanted(self, fd: FleetDeployment) -> int:
        """Copies the placement asks for: `replicas`, or one per live matching node."""
        p = fd.placement
        if p.per_node:
            return sum(matches(info, p.node_selector) for info, _ in self.nodes.values())
        return p.replicas or 0

    def holders(self, name: str) -> list[str]:
        """Nodes whose assignment holds deployment `name`."""
        return sorted(n for n in self.assignments if name in self.assigned(n))

    def shortfall(self, name: str) -> list[str]:
        """The placement problem of deployment `name`, if fewer copies are assigned than wanted."""
        holders = self.holders(name)
        fd = self.deployments[name][0]
        have, want = len(holders), self.wanted(fd)
        if have >= want:
            return []
        why = [f"node {n}: {r}" for n, r in self.exclusions(fd, holders)]
        return [f"{have} of {want} copies assigned" + (f" ({'; '.join(why)})" if why else "")]

    def exclusions(self, fd: FleetDeployment, holders: list[str]) -> list[tuple[str, str]]:
        """For each live node without a copy of `fd`, the filter that kept it out: a label the
        node selector wants, a taint not tolerated, or (when it passes both) its capacity."""
        p = fd.placement
        out = []
        for node_id, (info, _) in sorted(self.nodes.items()):
            if node_id in holders:
                continue
            wrong = [f"{k}={v}" for k, v in sorted(p.node_selector.items()) if info.labels.get(k) != v]
            if wrong:
                have = ", ".join(f"{k}={info.labels[k]}" if k in info.labels else f"no {k}"
                                 for k in sorted(p.node_selector) if info.labels.get(k) != p.node_selector[k])
                out.append((node_id, f"nodeSelector wants {', '.join(wrong)}, node has {have}"))
                continue
            untolerated = p.untolerated(taints_of(info))
            if untolerated:
                out.append((node_id, f"taint {', '.join(str(t) for t in untolerated)} not tolerated"))
                continue
            out.append((node_id, "not enough free capacity (memory or instances)"))
        return out

    def deployment_rows(self) -> list[dict]:
        """One row per fleet deployment: placement, revision, where it is assigned and runs, and
        its problems (too few copies assigned; what nodes report about it)."""
        rows = []
        for name, (fd, revision) in sorted(self.deployments.items()):
            reported = [f"node {n}: {p}" for n, (info, _) in sorted(self.nodes.items())
                        for p in info.problems if p.startswith(f"{name}: ")]
            rows.append({"name": name, "revision": revision, "module": fd.deployment.spec.module,
                         "replicas": fd.deployment.spec.model_dump(mode="json")["replicas"],
                         "placement": fd.placement.model_dump(mode="json", by_alias=True),
                         "wanted": self.wanted(fd), "assigned": self.holders(name),
                         "running": sorted(n for n, (info, _) in self.nodes.items() if name in info.running),
                         "rollout": self.rollout_row(name),
                         "problems": self.shortfall(name) + reported})
        return rows

    def rollout_row(self, name: str) -> dict | None:
        """The rollout of the deployment's current revision, if it has one."""
        r = self.rollouts.get(name, (None, 0))[0]
        current = self.deployments.get(name, (None, 0))[1]
        if r is None or r.revision != current:
            return None
        return {"revision": r.revision, "state": r.state, "stage": r.stage_name() if r.active else None,
                "stages": r.stages, "updated": r.updated, "failed": r.failed, "reason": r.reason}

    def rollout_records(self) -> list[dict]:
        """Every rollout record in full (history included), newest revision first per name."""
        from dataclasses import asdict

        return [asdict(r) for _, (r, _) in sorted(self.rollouts.items())]

    def summary(self) -> dict:
        """Counts and every problem once: copies missing per deployment, then what nodes report."""
        rows = self.deployment_rows()
        problems = [f"deployment {n}: {p}" for n in sorted(self.deployments) for p in self.shortfall(n)]
        problems += [f"node {n}: {p}" for n, (info, _) in sorted(self.nodes.items()) for p in info.problems]
        return {"nodes": len(self.nodes), "deployments": len(rows),
                "copies": {"wanted": sum(r["wanted"] for r in rows),
                           "assigned": sum(len(r["assigned"]) for r in rows),
                           "running": sum(len(r["running"]) for r in rows)},
                "rollouts": {"progressing": sum(r["rollout"] is not None and r["rollout"]["state"] == "progressing"
                                                for r in rows),
                             "paused": sum(r["rollout"] is not None and r["rollout"]["state"] == "paused"
                                           for r in rows)},
                "problems": problems}
