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
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections import Counter
from typing import Any, Callable, cast

from ..errors import ConfigError, IotwasmError
from ..node.manifests import to_document
from .lease import Lease
from .model import FleetDeployment, NodeInfo
from .rollout import Rollout, start, step
from .scheduler import Plan, schedule
from .store import ASSIGNMENTS, DEPLOYMENTS, NODES, ROLLOUTS, ConflictError, FleetStore

log = logging.getLogger("iotwasm.fleet.controller")

#: while a rollout is under way, passes run at least this often (node health arrives with
#: every heartbeat; nothing else marks the state dirty)
ROLLOUT_STEP_S = 0.5


class Controller:
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

    # -- watchers --------------------------------------------------------------------------
    async def _start_watchers(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._ready = {b: asyncio.Event() for b in (NODES, DEPLOYMENTS, ASSIGNMENTS, ROLLOUTS)}
        self._watchers = [asyncio.create_task(self._watch(b), name=f"fleet-watch-{b}") for b in self._ready]
        # the first pass waits until every bucket's current content has arrived
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self._ready.values())), 10)

    async def _watch(self, bucket: str) -> None:
        assert self.store is not None
        try:
            watcher = await self.store.watch_bucket(bucket)
            initial: set[str] | None = set()
            written: dict[str, object] = {}    # node → server time of its heartbeat, initial content
            unknown: set[str] = set()          # nodes this controller has no history of
            async for entry in watcher:
                if entry is None:          # the bucket's current content has been delivered
                    if initial is not None:
                        self._forget_missing(bucket, initial)
                        self._age_unknown(written, unknown)
                        initial = None
                        self._ready[bucket].set()
                        self._dirty.set()
                    continue
                if initial is not None:
                    initial.add(entry.key)
                    if bucket == NODES and entry.created is not None:
                        written[entry.key] = entry.created
                        if entry.key not in self._seen:
                            unknown.add(entry.key)
                self._update(bucket, entry)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("%s watch ended: %s: %s", bucket, type(e).__name__, e)
        self._ready[bucket].clear()     # the next pass starts the watchers again

    def _forget_missing(self, bucket: str, present: set[str]) -> None:
        """Keys that disappeared while no watcher ran (a restart, a reconnect). Heartbeats are
        the exception: one may have aged out only because this controller could not see (a
        server that hung expires them all at once when it runs again), so a node is left to
        the liveness rule, which judges it by its heartbeat and forgets it once long silent."""
        if bucket == NODES:
            return
        caches: dict[str, dict[str, Any]] = {DEPLOYMENTS: self._deployments, ASSIGNMENTS: self._assignments,
                                             ROLLOUTS: self._rollouts}
        cache = caches[bucket]
        for key in set(cache) - present:
            del cache[key]

    def _age_unknown(self, written: dict, unknown: set[str]) -> None:
        """Back-date nodes first heard of in the initial content by their heartbeat's age
        against the newest heartbeat (both on the server's clock): a controller that starts or
        takes over shortly after a node died does not count it alive for another dead_after_s.
        With every node dead at once, the newest is taken as fresh."""
        if not unknown:
            return
        newest = max(written.values())
        for key in unknown:
            if key in self._seen:
                rev, moved = self._seen[key]
                self._seen[key] = (rev, moved - max(0.0, (newest - written[key]).total_seconds()))

    def _update(self, bucket: str, entry) -> None:
        key, deleted = entry.key, entry.operation in ("DEL", "PURGE")
        if bucket == NODES:
            if deleted:    # a graceful leave: the node's work moves at once
                self._nodes.pop(key, None)
                self._seen.pop(key, None)
                self._dirty.set()
                return
            try:
                info = NodeInfo.from_json(entry.value)
            except (ValueError, TypeError) as e:
                log.error("heartbeat of %s unreadable: %s", key, e)
                return
            old = self._nodes.get(key)
            self._nodes[key] = info
            seen = self._seen.get(key)
            if seen is None or seen[0] != entry.revision:
                now = time.monotonic()
                self._heard(now)
                self._seen[key] = (entry.revision, now)
            if old is None or ((old.labels, old.memory, old.instances, old.taints)
                               != (info.labels, info.memory, info.instances, info.taints)):
                self._dirty.set()
        elif bucket == DEPLOYMENTS:
            if deleted:
                self._deployments.pop(key, None)
            else:
                try:
                    self._deployments[key] = (FleetDeployment.parse(entry.value, f"fleet deployment {key}"),
                                              entry.revision)
                except ConfigError as e:
                    log.error("%s", e)   # one bad entry must not stop the others from being placed
                    self._deployments.pop(key, None)
            self._dirty.set()
        else:   # assignments and rollouts: records controllers write (and operators, for rollouts)
            rollouts = bucket == ROLLOUTS
            records = cast("dict[str, tuple[Any, int]]", self._rollouts if rollouts else self._assignments)
            parse: Callable[[bytes], Any] = Rollout.from_json if rollouts else json.loads
            what = "rollout record" if rollouts else "assignment"
            have = records.get(key)
            if have is not None and have[1] >= entry.revision:
                return                   # the echo of our own write (or older)
            if deleted:
                records.pop(key, None)
            else:
                try:
                    records[key] = (parse(entry.value), entry.revision)
                except (ValueError, TypeError) as e:
                    log.error("%s of %s unreadable: %s", what, key, e)
                    if bucket == ROLLOUTS:
                        return
                    records[key] = ({"deployments": {}}, entry.revision)   # rewritten next pass
            self._dirty.set()             # written by someone else: check it

    # -- passes ----------------------------------------------------------------------------
    @property
    def _fleet(self) -> FleetStore:
        """The store, which the work after start() may take as connected."""
        if self.store is None:
            raise RuntimeError("the fleet store is not connected")
        return self.store

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

    @property
    def rolling(self) -> bool:
        """Whether a rollout is progressing (it needs passes as health arrives)."""
        return any(r.state == "progressing" for r, _ in self._rollouts.values())

    def live(self) -> dict[str, NodeInfo]:
        """Nodes whose heartbeat revision moved within `dead_after_s` (controller clock) — time
        in which this controller heard no heartbeat from anyone (longer than `blind_after_s`)
        does not count: a hung server or a controller cut off from the fleet stops every
        heartbeat at once, and judging nodes dead on it would strip them of their work."""
        now = time.monotonic()
        horizon = min(now, self._last_heard + self.blind_after_s) if self._last_heard else now
        if now - horizon > self.dead_after_s and not self._blind_logged:
            self._blind_logged = True
            log.warning("no heartbeat from any node for %.1f s: nobody is judged dead meanwhile (more "
                        "likely this controller's link than every node at once)", now - self._last_heard)
        live = {n: info for n, info in self._nodes.items()
                if n in self._seen and horizon - self._seen[n][1] <= self.dead_after_s}
        forget = self.dead_after_s + self.node_ttl_s   # long dead: its heartbeat left the bucket too
        for n in [n for n, (_, moved) in self._seen.items() if horizon - moved > forget]:
            del self._seen[n]
            self._nodes.pop(n, None)
        return live

    def _heard(self, now: float) -> None:
        """A heartbeat arrived. After a blind spell every node's clock moves on by the time spent
        blind, so a node whose next heartbeat is a moment behind the first is not judged on it."""
        gap = now - self._last_heard
        if self._last_heard and gap > self.blind_after_s:
            shift = gap - self.blind_after_s
            self._seen = {n: (rev, moved + shift) for n, (rev, moved) in self._seen.items()}
            if self._blind_logged:
                log.warning("heartbeats arrive again after %.1f s", gap)
        self._blind_logged = False
        self._last_heard = now

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

    @staticmethod
    async def _put(cache: dict, key: str, value, revision: int, put, read) -> None:
        """Compare-and-set `value` and keep `cache` (fed by a watcher) in step: the new revision
        on success; on a conflict, what is stored now (then ConflictError goes on up)."""
        try:
            new = await put(key, value, revision)
        except ConflictError:
            got = await read(key)
            if got is not None:
                cache[key] = got
            raise
        if cache.get(key, (None, 0))[1] < new:
            cache[key] = (value, new)

    # -- rollouts --------------------------------------------------------------------------
    async def _advance_rollouts(self, deployments: dict[str, tuple[FleetDeployment, int]], docs: dict[str, dict],
                                assignments: dict[str, tuple[dict, int]], plan: Plan,
                                live: dict[str, NodeInfo]) -> dict[str, Rollout]:
        """Start a rollout for each deployment whose new revision replaces a running version
        (when it asks for one), step those in progress, store what changed; returns the record
        that decides each deployment's version per node."""
        now = time.time()
        writes: list[tuple[Rollout, int]] = []
        current: dict[str, Rollout] = {}
        for name, (fd, rev) in deployments.items():
            r, krev = self._rollouts.get(name, (None, 0))
            changed = False
            if r is None or r.revision != rev:
                if r is None and fd.rollout is None:
                    continue                     # nothing staged, nothing to supersede
                target = docs[name]
                superseded = r is not None and r.active
                stable = r.stable if r is not None and superseded else (
                    self._running_doc(name, assignments) if fd.rollout is not None else None)
                if r is not None and superseded:
                    r.finish("superseded", f"revision {rev} replaced revision {r.revision}", now)
                if fd.rollout is None or stable is None or stable == target:
                    if r is not None and superseded:
                        writes.append((r, krev))
                    continue
                note = f" (supersedes the rollout of revision {r.revision})" if r is not None and superseded else ""
                r, changed = start(name, rev, target, stable, now), True
                if note:
                    r.note(r.events[-1][1] + note, now)
            elif fd.rollout is None:
                continue
            seen = len(r.events)
            bound = [n for n, names in plan.assignments.items() if name in names]
            health = {n: live[n].health.get(name, {}) for n in bound if n in live}
            changed = step(r, fd.rollout, bound, health, now) or changed
            for _, text in r.events[seen:]:
                (log.warning if r.state == "rolled-back" else log.info)("rollout of %s: %s", name, text)
            if changed:
                writes.append((r, krev))
            current[name] = r
        gone = [name for name in self._rollouts if name not in deployments]
        for name in gone:                    # the deployment was deleted: so is its rollout
            self._rollouts.pop(name, None)
        results = await asyncio.gather(*(self._write_rollout(r, krev) for r, krev in writes),
                                       *(self._fleet.delete_rollout(n) for n in gone), return_exceptions=True)
        for (r, _), res in zip(writes, results):
            if isinstance(res, BaseException):
                # an operator paused or aborted it meanwhile: what is stored decides this pass
                log.debug("rollout of %s not stored: %s", r.deployment, res)
                stored = self._rollouts.get(r.deployment)
                if stored is not None and stored[0].revision == deployments[r.deployment][1]:
                    current[r.deployment] = stored[0]
                else:
                    current.pop(r.deployment, None)
                self._dirty.set()
        return current

    async def _write_rollout(self, r: Rollout, revision: int) -> None:
        await self._put(self._rollouts, r.deployment, r, revision,
                        lambda _, rec, rev: self._fleet.put_rollout(rec, rev), self._fleet.rollout)

    @staticmethod
    def _running_doc(name: str, assignments: dict[str, tuple[dict, int]]) -> dict | None:
        """The version of `name` most nodes are assigned now (what a new revision replaces)."""
        by_text: dict[str, dict] = {}
        counts: Counter = Counter()
        for a, _ in assignments.values():
            d = a.get("deployments", {}).get(name)
            if d is not None:
                text = json.dumps(d, sort_keys=True)
                by_text[text] = d
                counts[text] += 1
        return by_text[counts.most_common(1)[0][0]] if counts else None
