"""What the controller knows of the fleet: one KV watcher per bucket, and who is live.

Split from `controller` (`Controller`: start, stop, the loop and its passes). `ControllerWatchers`
is a mixin of `Controller`: it starts a watcher per bucket (nodes, deployments, assignments,
rollouts) and keeps each entry it delivers in the controller's memory, so that a pass reads
no key; a node first heard of in a bucket's initial content is back-dated by its heartbeat's
age. Liveness is judged here too, on the controller's own clock from the heartbeats the
watcher saw move, and time in which nobody was heard does not count. It stands alone as the
part of the controller that only listens: a standby runs it and writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable, cast

from ..errors import ConfigError
from .controller_state import ControllerState
from .model import FleetDeployment, NodeInfo
from .rollout import Rollout
from .store import ASSIGNMENTS, DEPLOYMENTS, NODES, ROLLOUTS

log = logging.getLogger("iotwasm.fleet.controller")


class ControllerWatchers(ControllerState):
    """The watchers and liveness of `Controller` (a mixin: the state lives on the controller)."""

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

    # -- liveness --------------------------------------------------------------------------
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
