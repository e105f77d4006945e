"""The control loop: desired fleet deployments + live nodes → one assignment per node.

The controller keeps the fleet's state in memory from one KV watcher per bucket (nodes,
deployments, assignments), updated entry by entry, instead of re-reading every key on a timer:
with a hundred nodes, re-reading costs hundreds of requests a pass and slows everything else on
the server. A pass runs when something it depends on changed (a deployment, a node joining,
leaving, changing labels or capacity, an assignment written by someone else) or when the live
set changes, and only the assignments that differ are written — concurrently, each a
compare-and-set, so a second controller started by mistake cannot silently overwrite the first
one's binds (one of them gets a conflict, re-reads that key and retries).

Liveness is judged on the controller's own clock: a node is live while its heartbeat revision
keeps changing; one whose heartbeat has not moved for `dead_after_s` is dead (a timer checks
every `check_s`), and its copies are bound elsewhere at once. With a 1 s heartbeat and a 3 s
dead-after, a killed node's work is rebound in under 5 s. After a reconnect the watchers are
started again, which re-delivers every key; a full pass also runs every `resync_s`.

Election (on by default): controllers are candidates for a lease (`lease.py`); only the holder
runs passes. A standby keeps its watchers running — writing nothing — so on takeover it knows
which heartbeats stopped moving while it watched and passes at once. A node first heard of in
a bucket's initial content (a controller that just started) is not taken as freshly alive: its
heartbeat's age, measured against the newest heartbeat on the server's clock, counts towards
`dead_after_s`.

The controller is in four files: start, stop, the loop and its passes (the assignments they
write) here; the watchers and the liveness judged on them in `controller_watchers`; the
rollouts a pass advances in `controller_rollouts`; and what they share in `controller_state`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from ..errors import IotwasmError
from ..node.manifests import to_document
from .controller_rollouts import ControllerRollouts
from .controller_watchers import ControllerWatchers
from .lease import Lease
from .model import FleetDeployment, NodeInfo
from .rollout import Rollout
from .scheduler import Plan, schedule
from .store import NODES, ConflictError, FleetStore

__all__ = ["ROLLOUT_STEP_S", "Controller"]

log = logging.getLogger("iotwasm.fleet.controller")

#: while a rollout is under way, passes run at least this often (node health arrives with
#: every heartbeat; nothing else marks the state dirty)
ROLLOUT_STEP_S = 0.5


class Controller(ControllerWatchers, ControllerRollouts):
    """Binds the fleet's deployments to live nodes, one assignment per node, from the KV
    state its watchers keep current; only the holder of the lease writes (see the module's
    doc)."""

    def __init__(self, url: str, *, dead_after_s: float = 3.0, interval_s: float = 0.5,
                 node_ttl_s: float = 4.0, resync_s: float = 5.0, election: bool = True,
                 id: str | None = None, lease_ttl_s: float = 3.0):
        self.url = url
        #: the candidate's name in the lease (default host name and process id)
        self.id = id or f"{socket.gethostname()}-{os.getpid()}"
        self.election, self.lease_ttl_s = election, lease_ttl_s
        self.lease: Lease | None = None
        self._lease_task: asyncio.Task | None = None
        self.dead_after_s, self.node_ttl_s, self.resync_s = dead_after_s, node_ttl_s, resync_s
        #: how often liveness is checked (and the shortest gap between two passes)
        self.interval_s = interval_s
        self.check_s = min(interval_s, 0.25)
        self.store: FleetStore | None = None
        self.last_plan = Plan()
        self.passes = 0                 # passes run (a standby runs none)
        #: turns of the loop completed (a liveness check, and the pass it called for, if any):
        #: two more than at some moment mean a pass begun before that moment has finished
        self.checks = 0
        # state kept from the watchers
        self._nodes: dict[str, NodeInfo] = {}
        self._seen: dict[str, tuple[int, float]] = {}   # node → (heartbeat revision, when it moved)
        self._deployments: dict[str, tuple[FleetDeployment, int]] = {}
        self._assignments: dict[str, tuple[dict, int]] = {}
        self._rollouts: dict[str, tuple[Rollout, int]] = {}
        self._ready: dict[str, asyncio.Event] = {NODES: asyncio.Event()}
        self._dirty = asyncio.Event()
        self._live: set[str] = set()
        #: no heartbeat from anyone for longer than this: the controller counts itself blind, and
        #: time spent blind does not count against any node
        self.blind_after_s = dead_after_s / 2
        self._last_heard = 0.0       # monotonic: the last heartbeat from any node
        self._blind_logged = False
        self._task: asyncio.Task | None = None
        self._watchers: list[asyncio.Task] = []
        self._closing = asyncio.Event()

    async def start(self) -> None:
        self.store = await FleetStore.connect(self.url, node_ttl_s=self.node_ttl_s, name="iotwasm-controller")
        if self.election:
            self.lease = Lease(self.store, self.id, ttl_s=self.lease_ttl_s, on_change=self._leadership)
            self._lease_task = asyncio.create_task(self.lease.run(), name="fleet-lease")
        self._task = asyncio.create_task(self._run(), name="fleet-controller")

    @property
    def is_leader(self) -> bool:
        """True while this controller may write: it holds the lease (or runs without election)."""
        return not self.election or (self.lease is not None and self.lease.held)

    def _leadership(self, held: bool) -> None:
        if held:
            self._dirty.set()   # wake the loop: a new leader passes at once

    async def stop(self) -> None:
        # a flag as well as a cancel: a cancel that lands inside a NATS call can be absorbed
        self._closing.set()
        tasks = [self._task, self._lease_task, *self._watchers]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is None:
                continue
            try:
                await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 3)
            except asyncio.TimeoutError:
                log.warning("controller task did not stop within 3 s")
        if self.lease is not None:   # passes have stopped: a standby may take over at once
            await self.lease.release()
        if self.store is not None:
            await self.store.close()

    # -- passes ----------------------------------------------------------------------------
    async def _run(self) -> None:
        reconnects = -1
        last_pass = 0.0
        leading = False
        while not self._closing.is_set():
            try:
                if (self._fleet.nc.stats.get("reconnects", 0) != reconnects
                        or not all(e.is_set() for e in self._ready.values())):
                    reconnects = self._fleet.nc.stats.get("reconnects", 0)
                    await self._start_watchers()
                live = set(self.live())
                now = time.monotonic()
                was_leading, leading = leading, self.is_leader
                if not leading:
                    self._dirty.clear()   # a standby watches and writes nothing
                elif (not was_leading or self._dirty.is_set() or live != self._live
                      or now - last_pass >= self.resync_s or (self.rolling and now - last_pass >= ROLLOUT_STEP_S)):
                    self._dirty.clear()
                    last_pass = now
                    self.passes += 1
                    await self.reconcile()
            except (IotwasmError, ConflictError) as e:
                log.warning("%s", e)
            except Exception as e:   # the link is down or a call timed out: next pass
                log.debug("reconcile: %s: %s", type(e).__name__, e)
            self.checks += 1
            try:
                await asyncio.wait_for(self._wait_change(), self.check_s)
            except asyncio.TimeoutError:
                pass

    async def _wait_change(self) -> None:
        await self._dirty.wait()
        await asyncio.sleep(0.02)   # let a burst of updates land before the pass

    async def reconcile(self) -> Plan:
        """One pass over the watched state: schedule, then write every assignment that differs."""
        assert self.store is not None
        live = self.live()
        self._live = set(live)
        deployments = dict(self._deployments)
        assignments = dict(self._assignments)
        current = {n: set(a.get("deployments", {})) for n, (a, _) in assignments.items()}
        plan = schedule([fd for fd, _ in deployments.values()], live, current)
        for p in plan.problems:
            if p not in self.last_plan.problems:
                log.warning("%s", p)
        self.last_plan = plan
        # each deployment's documents once per pass, not once per node
        docs = {n: to_document(fd.deployment) for n, (fd, _) in deployments.items()}  # secrets included
        routes = {n: {r.name: to_document(r) for r in fd.routes}
                  for n, (fd, _) in deployments.items()}
        rollouts = await self._advance_rollouts(deployments, docs, assignments, plan, live)

        def doc(name: str, node_id: str) -> dict:
            r = rollouts.get(name)
            return r.doc_for(node_id) if r else docs[name]

        writes = []
        for node_id in sorted(set(plan.assignments) | set(assignments)):
            names = plan.assignments.get(node_id, [])
            desired = {"deployments": {n: doc(n, node_id) for n in names},
                       "routes": {k: v for n in names for k, v in routes[n].items()},
                       "revisions": {n: deployments[n][1] for n in names}}
            have, rev = assignments.get(node_id, ({"deployments": {}}, 0))
            if (have.get("deployments", {}), have.get("routes", {})) == (desired["deployments"], desired["routes"]):
                continue
            if node_id not in live and not names and not have.get("deployments"):
                continue
            writes.append(self._write(node_id, desired, rev, names))
        results = await asyncio.gather(*writes, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            self._dirty.set()       # retry the failed writes on the next pass
            raise errors[0]
        return plan

    async def _write(self, node_id: str, desired: dict, rev: int, names: list[str]) -> None:
        await self._put(self._assignments, node_id, desired, rev, self._fleet.put_assignment, self._fleet.assignment)
        log.info("assigned %s: %s", node_id, ", ".join(names) or "nothing")
