"""The node's side of the fleet: join, heartbeat, apply the assignment, keep working offline.

The agent registers the node (stable id, labels, capacity) and heartbeats into the nodes
bucket. It follows the node's assignment key (a core subscription to its subject: every write
wakes it to read the key) and reads the key as well after (re)connecting and every
`resync_every` heartbeats, so a hundred idle nodes cost the server one small write each per
heartbeat, and a write missed while the link was down is still picked up. It applies the
assignment through the node's own API path: fleet deployments become applied manifests,
reconciled by the same code as files and API calls. Before that, every module is fetched from the object store by digest and
checked (digest always, signatures when trusted keys are configured): nothing unchecked is
loaded.

Edge autonomy: the last applied assignment is persisted under the data directory and lives on
as the node's applied manifests, so a node whose fleet link is down — or that restarts while it
is down — keeps running it. The agent reconnects in the background and resyncs on return.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from ..errors import IotwasmError
from ..node import Node
from ..node.manifests import Deployment, Route, to_document
from ..registry.signing import verify_any
from ..supervise import until_beat
from .devices import DeviceMirror
from .model import NodeInfo, Taint
from .store import FleetStore, check_key

log = logging.getLogger("iotwasm.fleet.agent")


class FleetAgent:
    def __init__(self, node: Node, url: str, *, labels: dict[str, str] | None = None,
                 memory: int = 1 << 30, instances: int = 64, heartbeat_s: float = 1.0,
                 node_ttl_s: float = 4.0, trusted: dict | None = None, resync_every: int = 10,
                 taints: list[str] | None = None):
        self.node = node
        self.url = url
        self.id = check_key("node id", node.config.name)
        self.labels = dict(labels or {})
        self.taints = [str(Taint.parse(t)) for t in taints or []]
        self.memory, self.instances = memory, instances
        self.heartbeat_s, self.node_ttl_s = heartbeat_s, node_ttl_s
        self.resync_every = resync_every
        self._reread = False   # the assignment key was written since the last read
        self._beats = 0
        self._reconnects = -1
        self.trusted = trusted          # key id → public key: signatures required when set
        self.store: FleetStore | None = None
        self.dir = Path(node.config.data_dir) / "fleet"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # assignments hold secret values
        saved = self._load()
        self.applied_revision: int = saved.get("revision", 0)
        self.owned: set[str] = set(saved.get("owned", []))
        self.owned_routes: set[str] = set(saved.get("owned_routes", []))
        self._last: tuple[dict, int] = (saved.get("assignment", {"deployments": {}}), self.applied_revision)
        #: deployment name → why its assignment could not be applied (refused artifact, …)
        self.problems: dict[str, str] = {}
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._follow_task: asyncio.Task | None = None
        self._closing = False
        #: the node's device twins, mirrored into the fleet's bucket (fleet/devices.py)
        self.devices = DeviceMirror(self)

    # -- persistence -----------------------------------------------------------------------
    @property
    def _state_file(self) -> Path:
        return self.dir / "assignment.json"

    def _load(self) -> dict:
        try:
            return json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            log.error("fleet assignment %s unreadable (%s); starting from none", self._state_file, e)
            return {}

    def _save(self, revision: int, assignment: dict) -> None:
        body = json.dumps({"revision": revision, "owned": sorted(self.owned),
                           "owned_routes": sorted(self.owned_routes), "assignment": assignment})
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_file)

    # -- life ------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"fleet-agent-{self.id}")
        self.devices.start()

    async def stop(self, leave: bool = True) -> None:
        """Stop heartbeating; with `leave`, remove the heartbeat so the controller rebinds
        this node's work at once instead of waiting for it to age out."""
        # a flag as well as a cancel: a cancel that lands inside a NATS call can be absorbed
        self._closing = True
        self._wake.set()
        await self.devices.stop()
        for task in (self._task, self._follow_task):
            if task is not None:
                task.cancel()
                try:
                    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 3)
                except asyncio.TimeoutError:
                    log.warning("fleet agent task did not stop within 3 s")
        if self.store is not None:
            if leave and self.store.connected:
                try:
                    await asyncio.wait_for(self.store.leave(self.id), 2)
                except Exception as e:
                    log.debug("leave not recorded: %s", e)
            await self.store.close()
            self.store = None

    @property
    def connected(self) -> bool:
        return self.store is not None and self.store.connected

    async def _run(self) -> None:
        while not self._closing:
            if self.store is None:
                try:
                    self.store = await FleetStore.connect(self.url, timeout=2, node_ttl_s=self.node_ttl_s,
                                                          name=f"iotwasm-agent-{self.id}")
                    log.info("joined fleet %s as %s", self.url, self.id)
                except IotwasmError as e:
                    log.warning("%s; the node keeps its last assignment, retrying", e)
            self._wake.clear()   # before the sync: a watch update that lands during it wakes the next
            if self.store is not None:
                try:
                    await self.sync_once()
                except IotwasmError as e:
                    log.error("%s", e)
                    self._beats = 0      # read the key again next time: an update may have been dropped
                except Exception as e:   # link down mid-call, timeouts: keep running, try again
                    log.debug("fleet sync: %s: %s", type(e).__name__, e)
                    self._beats = 0
            try:
                # on the node's beat (its sync, samples and alerts): no wake-up of its own
                await asyncio.wait_for(self._wake.wait(), until_beat(self.heartbeat_s))
            except asyncio.TimeoutError:
                pass

    @property
    def _fleet(self) -> FleetStore:
        """The store, which the work after start() may take as connected."""
        if self.store is None:
            raise RuntimeError("the fleet store is not connected")
        return self.store

    async def _follow(self) -> None:
        """Follow the assignment key: every write to it reaches a core subscription to its
        subject and makes the next sync read the key, at once (`_wake`).

        Why not a JetStream watcher, which would carry the value itself: it is an ordered
        consumer, one more on the server for every node, and nats-py looks at its flow
        control every 250 ms whatever the traffic: four wake-ups a second of a node at rest.
        The read costs one round trip per change, and a write the stream refused (a failed
        compare-and-set) only costs a read that finds nothing new."""
        sub = None
        try:
            sub = await self._fleet.follow_assignment(self.id, self._written)
            await asyncio.Event().wait()   # until cancelled: a reconnect starts it again
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("assignment follow ended (%s); reading the key each heartbeat", e)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sub.unsubscribe(), 1)
        self._follow_task = None

    async def _written(self, _msg) -> None:
        self._reread = True
        self._wake.set()

    async def sync_once(self) -> None:
        """Heartbeat, then apply the assignment if it changed."""
        assert self.store is not None
        reconnects = self.store.nc.stats.get("reconnects", 0)
        if reconnects != self._reconnects or self._follow_task is None:
            # (re)subscribe: writes made while the link was down are read below
            if self._follow_task is not None:
                self._follow_task.cancel()
            self._reconnects = reconnects
            self._follow_task = asyncio.create_task(self._follow())
            self._beats = 0
        await self.store.heartbeat(self.info())
        reread, self._reread = self._reread, False   # a write during the read reads again
        got = None
        if reread or self._beats % self.resync_every == 0 or self._follow_task is None:
            got = await self.store.assignment(self.id)
        self._beats += 1
        if got is not None and got[1] != self.applied_revision:
            await self.apply(*got)
            await self.store.heartbeat(self.info())
        elif self.problems:   # retry what was refused (a signature may have been added since)
            await self.apply(*self._last)
            await self.store.heartbeat(self.info())

    def info(self) -> NodeInfo:
        return NodeInfo(self.id, self.labels, self.memory, self.instances,
                        assignment_revision=self.applied_revision, running=sorted(self.node.deployments),
                        problems=[f"{n}: {p}" for n, p in sorted(self.problems.items())] +
                        [p for p in self.node.last_problems
                         if any(p.startswith(f"Route {r}: ") for r in self.owned_routes)],
                        taints=self.taints, health=self.health())

    def health(self) -> dict[str, dict]:
        """Per fleet deployment: the module assigned and the one serving, and the serving
        version's counters — what a rollout gate judges. Counters restart with each version."""
        assigned = self._last[0].get("deployments", {})
        node_problems = {p.split(": ", 1)[0]: p.split(": ", 1)[1] for p in self.node.last_problems
                         if p.startswith("Deployment ") and ": " in p}
        out: dict[str, dict] = {}
        for name in sorted(set(assigned) | self.owned):
            h: dict = {"assigned": (assigned.get(name) or {}).get("spec", {}).get("module")}
            problem = self.problems.get(name) or node_problems.get(f"Deployment {name}")
            if problem:
                h["problem"] = problem
            rec = self.node.deployments.get(name)
            if rec is not None:
                st = rec.handle.current.stats()
                totals = st.totals()
                h.update(digest=st.digest, state=st.state, messages=totals["messages"],
                         dead_letters=totals["dead_letters"],
                         traps=totals["faults"],
                         rollbacks=rec.handle.rollbacks, rollback_reason=rec.handle.last_rollback_reason,
                         error=st.last_error)
            out[name] = h
        return out

    # -- applying --------------------------------------------------------------------------
    async def apply(self, assignment: dict, revision: int) -> None:
        wanted: dict[str, Deployment] = {}
        problems: dict[str, str] = {}
        for name, doc in assignment.get("deployments", {}).items():
            try:
                d = Deployment.model_validate(doc)
                await self._admit(d)
            except IotwasmError as e:
                problems[name] = str(e)
                continue
            except ValueError as e:
                problems[name] = f"assignment entry unreadable: {e}"
                continue
            wanted[name] = d
        routes: dict[str, Route] = {}
        for name, doc in assignment.get("routes", {}).items():
            try:
                routes[name] = Route.model_validate(doc)
            except ValueError as e:
                problems[f"route {name}"] = f"assignment entry unreadable: {e}"
        for name, why in problems.items():
            if self.problems.get(name) != why:
                log.error("fleet deployment %s not applied on %s: %s", name, self.id, why)
                self.node.state.event("fleet-refused", name, why)
        self.problems = problems
        applied = self.node.applied
        for name, d in wanted.items():
            old = applied.get("Deployment", name)
            if old is None or to_document(old) != to_document(d):
                applied.put(d, actor="fleet")
        for name in self.owned - set(wanted):
            if name not in problems:   # a refused update keeps the version that runs
                applied.delete("Deployment", name)
        self.owned = set(wanted) | (self.owned & set(problems))
        for name, r in routes.items():
            old = applied.get("Route", name)
            if old is None or to_document(old) != to_document(r):
                applied.put(r, actor="fleet")
        for name in self.owned_routes - set(routes):
            if f"route {name}" not in problems:
                applied.delete("Route", name)
        self.owned_routes = set(routes) | {n for n in self.owned_routes if f"route {n}" in problems}
        self.applied_revision = revision
        self._last = (assignment, revision)
        await asyncio.to_thread(self._save, revision, assignment)
        if self.node.ready:
            await self.node.sync()

    async def _admit(self, d: Deployment) -> None:
        """Fetch and check the module before the node may load it."""
        digest = d.spec.module
        have = await asyncio.to_thread(self._local, digest)
        if not have:
            data = await self._fleet.fetch_module(digest)   # raises ArtifactError on a wrong digest
        if self.trusted is not None:
            verify_any(await self._fleet.signatures(digest), digest, self.trusted)
        if not have:
            await asyncio.to_thread(self.node.registry.add, data)

    def _local(self, digest: str) -> bool:
        try:
            self.node.registry.get(digest)
            return True
        except IotwasmError:
            return False
