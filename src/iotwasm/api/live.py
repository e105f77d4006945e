"""Live numbers for the dashboard: one sample of the node's counters per interval, a short ring
of them, and the followers (open streams) each new sample is handed to.

A sample reads only what the routes, deployments and rules count anyway (as the Prometheus
collector does): nothing on the message path changes, and an idle node with no page open pays
one pass over its objects per interval. Rates are per second over the interval; latencies are
the p50/p99 of the messages (routes: arrival → taken by every sink) and calls (deployments:
one call handles a batch) seen in the interval, so a chart shows what happened then, not a
window that lags by thousands of messages.

The ring keeps the chart numbers only, packed (float32, the objects' names shared between
samples: the greenhouse example's 12 routes and deployments take about 0.4 MB for 10 minutes,
docs/api.md); the latest sample in full (totals, states, last errors, dead letters by step) is
kept beside it for a page that opens now.
Objects are kept with their namespace at the time, so a tenant's view of the history is its
own even after a name moved to another namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..node.node import Node
from ..supervise import Repeats, supervise, until_beat

log = logging.getLogger("iotwasm.api.live")

#: the chart numbers of routes and deployments, in the order the ring keeps them
SERIES = ("in_s", "out_s", "dead_s", "p50_ms", "p99_ms")


def percentiles(values: list[float]) -> tuple[float | None, float | None]:
    """p50 and p99 of `values` (nearest rank), None for none."""
    if not values:
        return None, None
    data = sorted(values)
    n = len(data)
    return round(data[min(n - 1, int(0.5 * n))], 3), round(data[min(n - 1, int(0.99 * n))], 3)


def newest(window: deque, count: int) -> list[float]:
    """The last `count` entries of `window` (all of it when fewer are left)."""
    if count <= 0:
        return []
    items = list(window)   # one C-level copy: safe against appends from worker threads
    return items[-count:] if count < len(items) else items


def read_rss() -> int | None:
    """The process's resident memory in bytes (Linux), None where /proc is not there."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def last_error(node: Node, name: str) -> tuple[str | None, float | None]:
    """What went wrong last in deployment `name`, and when (None when unknown): the failure
    that put its container in error while it is in error, else the newest error of a message
    it could not handle (a dead letter at it as a step of any route), else the container's
    last failure."""
    rec = node.deployments.get(name)
    container = rec.handle.current if rec is not None else None
    failure = str(container.last_error) if container is not None and container.last_error else None
    if container is not None and str(container.state) == "error" and failure:
        return failure, None
    best: tuple[float, str] | None = None
    for route in node.routes.values():
        seen = route.runner.stats.last_dead.get(name)
        if seen is not None and (best is None or seen[0] > best[0]):
            best = seen
    if best is not None:
        return best[1], best[0]
    return failure, None


@dataclass
class Follower:
    """One open stream: `push(kind, doc)` is called on the event loop with each sample
    ("sample") and, when `fleet` is set and the node is in a fleet, each fleet view ("fleet")."""

    push: Callable[[str, dict], None]
    fleet: bool = False


@dataclass
class _Prev:
    t: float
    values: dict = field(default_factory=dict)


class History:
    """Samples `node` every `interval_s` and keeps the last `keep` of them."""

    def __init__(self, node: Node, *, interval_s: float = 1.0, keep: int = 600,
                 fleet: Callable[[], Awaitable[dict]] | None = None, fleet_every_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 cpu: Callable[[], float] = time.process_time, rss: Callable[[], int | None] = read_rss):
        self.node = node
        self.interval_s = interval_s
        self.ring: deque[_Kept] = deque(maxlen=keep)
        #: the latest sample in full, None before the first
        self.current: dict | None = None
        #: the latest fleet view, for followers that open now (None off-fleet or before one)
        self.fleet_view: dict | None = None
        self.followers: list[Follower] = []
        self._fleet = fleet
        self._fleet_every_s = fleet_every_s
        self._fleet_task: asyncio.Task | None = None
        self._fleet_at = float("-inf")
        self._clock, self._wall, self._cpu, self._rss = clock, wall, cpu, rss
        self._prev: _Prev | None = None
        self._task: asyncio.Task | None = None
        self._faults = Repeats(log, "a dashboard sample")

    @property
    def in_fleet(self) -> bool:
        return self._fleet is not None

    # -- sampling ------------------------------------------------------------------------------
    def sample(self) -> dict:
        """Read the node's counters now: the full sample, also kept (ring, `current`) and
        handed to every follower."""
        node, now = self.node, self._clock()
        prev = self._prev
        dt = now - prev.t if prev is not None else 0.0
        old = prev.values if prev is not None else {}
        seen: dict[tuple, float] = {}

        def rate(key: tuple, value: float) -> float | None:
            """Per second since the last sample; None for the first look at a counter."""
            seen[key] = value
            before = old.get(key)
            if before is None or dt <= 0:
                return None
            return round(max(0.0, value - before if value >= before else value) / dt, 3)

        def new_since(key: tuple, value: int) -> int:
            seen[key] = value
            before = old.get(key)
            return value if before is None or value < before else value - before

        cpu = self._cpu()
        cpu_pct = rate(("cpu",), cpu)
        doc: dict[str, Any] = {"t": round(self._wall(), 3), "node": {
            "cpu_pct": None if cpu_pct is None else round(cpu_pct * 100, 1), "rss_bytes": self._rss(),
            "outbox": node.outbox.backlog()}, "routes": {}, "deployments": {}, "rules": {}}

        for name, rec in list(node.routes.items()):
            s, key = rec.runner.stats, ("r", name, id(rec))
            p50, p99 = percentiles(newest(s.latencies_ms, new_since(key + ("lat",), s.delivered)))
            where = {w: {"dead_letters": n, "dead_s": rate(key + ("w", w), n),
                         "last_error": s.last_dead[w][1] if w in s.last_dead else None,
                         "last_error_ts": round(s.last_dead[w][0], 3) if w in s.last_dead else None}
                     for w, n in list(s.dead_by.items())}
            doc["routes"][name] = {
                "ns": rec.manifest.metadata.namespace, "state": "running",
                "in_s": rate(key + ("in",), s.received), "out_s": rate(key + ("out",), s.delivered),
                "dead_s": rate(key + ("dead",), s.dead_letters), "dropped_s": rate(key + ("drop",), s.dropped),
                "p50_ms": p50, "p99_ms": p99, "received": s.received, "delivered": s.delivered,
                "dead_letters": s.dead_letters, "dropped": s.dropped, "queued": rec.runner.depth(),
                "source": rec.manifest.spec.source.type, "steps": list(rec.manifest.spec.steps),
                "sinks": [k.name for k in rec.sinks], "where": where}

        for name, dep in list(node.deployments.items()):
            h = dep.handle
            st, key, version = h.current.stats(), ("d", name, id(h)), id(h.current)
            totals = st.totals()
            p50, p99 = percentiles(newest(h.call_latencies_ms, new_since(key + ("lat",), h.calls)))
            err, err_ts = last_error(node, name)
            doc["deployments"][name] = {
                "ns": dep.manifest.metadata.namespace, "state": st.state,
                "in_s": rate(key + ("in", version), totals.get("messages", 0)),
                "out_s": rate(key + ("out", version), totals.get("outputs", 0)),
                "dead_s": rate(key + ("dead", version), totals.get("dead_letters", 0)),
                "p50_ms": p50, "p99_ms": p99, "messages": totals.get("messages", 0),
                "outputs": totals.get("outputs", 0), "dead_letters": totals.get("dead_letters", 0),
                "errors": totals.get("errors", {}), "restarts": st.restarts, "replicas": st.replicas,
                "evictions": st.scaling.evictions, "revision": h.revision, "last_error": err, "last_error_ts": err_ts}

        if node.rules is not None:
            status = node.rules.status()
            for name, m in list(node.rules.manifests.items()):
                st = status.get(name, {})
                alerts = st.get("alerts") or {}
                doc["rules"][name] = {
                    "ns": m.metadata.namespace, "state": "enabled" if st.get("enabled", True) else "disabled",
                    **{k: st.get(k, 0) for k in ("received", "matched", "emitted", "errors")},
                    "last_error": st.get("last_error"), "alerts_fired": alerts.get("fired")}

        self._prev = _Prev(now, seen)
        self.current = doc
        last = self.ring[-1].keys if self.ring else (None, None)
        (rk, rv), (dk, dv) = _pack(doc["routes"], last[0]), _pack(doc["deployments"], last[1])
        n = doc["node"]
        self.ring.append(_Kept(doc["t"], n["cpu_pct"], n["rss_bytes"], n["outbox"], (rk, dk), (rv, dv)))
        for f in list(self.followers):
            f.push("sample", doc)
        return doc

    def history(self, may_see: Callable[[str], bool], since: float | None = None) -> dict:
        """The kept samples (chart numbers only) as columns — ``t``, ``node`` and per route and
        deployment one list per series, None where there is no value — of the objects whose
        namespace `may_see` accepts; with `since`, only the samples taken after that time."""
        kept = [c for c in list(self.ring) if since is None or c.t > since]
        return {"t": [c.t for c in kept],
                "node": {"cpu_pct": [c.cpu_pct for c in kept], "rss_bytes": [c.rss_bytes for c in kept],
                         "outbox": [c.outbox for c in kept]},
                "routes": _columns(kept, 0, may_see), "deployments": _columns(kept, 1, may_see)}

    @staticmethod
    def visible(doc: dict, may_see: Callable[[str], bool]) -> dict:
        """A full sample with only the routes, deployments and rules `may_see` accepts."""
        return {**doc, **{k: {n: v for n, v in doc[k].items() if may_see(v["ns"])}
                          for k in ("routes", "deployments", "rules")}}

    # -- the fleet -----------------------------------------------------------------------------
    async def _read_fleet(self) -> None:
        assert self._fleet is not None
        try:
            view = await self._fleet()
        except Exception as e:  # noqa: BLE001 - the fleet reader answers problems as documents
            view = {"error": f"{type(e).__name__}: {e}"}
        self.fleet_view = view
        for f in list(self.followers):
            if f.fleet:
                f.push("fleet", view)

    def _maybe_read_fleet(self) -> None:
        if self._fleet is None or not any(f.fleet for f in self.followers):
            return
        if self._fleet_task is not None and not self._fleet_task.done():
            return   # a slow fleet read never holds up the samples
        now = self._clock()
        if now - self._fleet_at >= self._fleet_every_s:
            self._fleet_at = now
            self._fleet_task = asyncio.get_running_loop().create_task(self._read_fleet(), name="dashboard-fleet")

    def follow(self, follower: Follower) -> Callable[[], None]:
        """Add a follower; returns what removes it. A fleet follower gets a fresh fleet view soon."""
        self.followers.append(follower)
        if follower.fleet:
            self._fleet_at = float("-inf")
            try:
                self._maybe_read_fleet()
            except RuntimeError:
                pass   # no running loop (a test): the next tick reads it

        def leave() -> None:
            if follower in self.followers:
                self.followers.remove(follower)
        return leave

    # -- running -------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(until_beat(self.interval_s))   # with the node's other upkeep
            try:
                self.sample()
                self._maybe_read_fleet()
            except Exception as e:  # noqa: BLE001 - logged once (repeats counted); the next one runs
                self._faults.failed(e)

    def start(self) -> None:
        if self._task is None:
            self._task = supervise("dashboard samples", self._loop, log=log)

    async def stop(self) -> None:
        for task in (self._task, self._fleet_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task   # the loop and the fleet read catch their own failures
        self._task = self._fleet_task = None


class _Kept(NamedTuple):
    """One sample as the ring keeps it: the node's numbers, and per kind the objects' (name,
    namespace) pairs (one tuple shared by consecutive samples while the objects stay the
    same) with their SERIES values packed in a float32 array (NaN: no value)."""

    t: float
    cpu_pct: float | None
    rss_bytes: int | None
    outbox: int
    keys: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]
    values: tuple[array, array]


def _pack(objects: dict, previous: tuple | None) -> tuple[tuple, array]:
    keys = tuple((name, v["ns"]) for name, v in objects.items())
    if keys == previous:
        keys = previous   # shared, not one more tuple per sample
    vals = array("f", (math.nan if v[k] is None else v[k] for v in objects.values() for k in SERIES))
    return keys, vals


def _columns(kept: list[_Kept], kind: int, may_see: Callable[[str], bool]) -> dict[str, dict[str, list]]:
    """Per object name, per series, one value (or None) per kept sample."""
    out: dict[str, dict[str, list]] = {}
    n = len(kept)
    for i, c in enumerate(kept):
        vals = c.values[kind]
        for j, (name, ns) in enumerate(c.keys[kind]):
            if not may_see(ns):
                continue
            series = out.get(name)
            if series is None:
                series = out[name] = {k: [None] * n for k in SERIES}
            for m, k in enumerate(SERIES):
                v = vals[j * len(SERIES) + m]
                series[k][i] = None if math.isnan(v) else round(v, 3)
    return out

