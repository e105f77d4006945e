"""The control loop: desired fleet deployments + live nodes → one assignment per node.

Liveness is judged on the controller's own clock: a node is live while its heartbeat revision
keeps changing; one whose heartbeat has not moved for `dead_after_s` (or has aged out of the
bucket) is dead, and its copies are bound elsewhere on the next pass. With a 1 s heartbeat, a
3 s dead-after and a 0.5 s pass, a killed node's work is rebound in under 5 s. Assignment
writes are compare-and-set, so a second controller started by mistake cannot silently
overwrite the first one's binds (one of them gets a conflict and retries next pass).
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..errors import IotwasmError
from .model import NodeInfo
from .scheduler import Plan, schedule
from .store import ConflictError, FleetStore

log = logging.getLogger("iotwasm.fleet.controller")


class Controller:
    def __init__(self, url: str, *, dead_after_s: float = 3.0, interval_s: float = 0.5,
                 node_ttl_s: float = 4.0):
        self.url = url
        self.dead_after_s, self.interval_s, self.node_ttl_s = dead_after_s, interval_s, node_ttl_s
        self.store: FleetStore | None = None
        self._seen: dict[str, tuple[int, float]] = {}   # node → (heartbeat revision, when it moved)
        self.last_plan = Plan()
        self._task: asyncio.Task | None = None
        self._closing = asyncio.Event()

    async def start(self) -> None:
        self.store = await FleetStore.connect(self.url, node_ttl_s=self.node_ttl_s, name="iotwasm-controller")
        self._task = asyncio.create_task(self._run(), name="fleet-controller")

    async def stop(self) -> None:
        # a flag as well as a cancel: a cancel that lands inside a NATS call can be absorbed
        self._closing.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await asyncio.wait_for(asyncio.gather(self._task, return_exceptions=True), 3)
            except asyncio.TimeoutError:
                log.warning("controller loop did not stop within 3 s")
        if self.store is not None:
            await self.store.close()

    async def _run(self) -> None:
        while not self._closing.is_set():
            try:
                await self.reconcile()
            except (IotwasmError, ConflictError) as e:
                log.warning("%s", e)
            except Exception as e:   # the link is down or a call timed out: next pass
                log.debug("reconcile: %s: %s", type(e).__name__, e)
            try:
                await asyncio.wait_for(self._closing.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass

    def live(self, nodes: dict[str, tuple[NodeInfo, int]]) -> dict[str, NodeInfo]:
        now = time.monotonic()
        out = {}
        for node_id, (info, rev) in nodes.items():
            seen = self._seen.get(node_id)
            if seen is None or seen[0] != rev:
                self._seen[node_id] = seen = (rev, now)
            if now - seen[1] <= self.dead_after_s:
                out[node_id] = info
        for gone in set(self._seen) - set(nodes):
            del self._seen[gone]
        return out

    async def reconcile(self) -> Plan:
        """One pass: schedule, then write every assignment that differs."""
        assert self.store is not None
        nodes = await self.store.nodes()
        live = self.live(nodes)
        deployments = await self.store.deployments()
        assignments = await self.store.assignments()
        current = {n: set(a.get("deployments", {})) for n, (a, _) in assignments.items()}
        plan = schedule([fd for fd, _ in deployments.values()], live, current)
        for p in plan.problems:
            if p not in self.last_plan.problems:
                log.warning("%s", p)
        self.last_plan = plan
        for node_id in sorted(set(plan.assignments) | set(assignments)):
            names = plan.assignments.get(node_id, [])
            desired = {"deployments": {
                n: deployments[n][0].deployment.model_dump(mode="json", by_alias=True) for n in names},
                "revisions": {n: deployments[n][1] for n in names}}
            have, rev = assignments.get(node_id, ({"deployments": {}}, 0))
            if have.get("deployments", {}) == desired["deployments"]:
                continue
            if node_id not in live and not names and not have.get("deployments"):
                continue
            await self.store.put_assignment(node_id, desired, rev)
            log.info("assigned %s: %s", node_id, ", ".join(names) or "nothing")
        return plan
