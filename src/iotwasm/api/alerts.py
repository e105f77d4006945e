"""Threshold alert rules on the node's metrics, with a cooldown.

A rule watches one quantity of one route or deployment (or of the node) and fires when it is
above its threshold at an evaluation; after firing it stays quiet for `cooldown_s`, so a
lasting problem gives one alert per cooldown instead of one per second. Firing publishes a
JSON document on a topic of the node's bus and/or POSTs it to a webhook, records a node event
(kind ``alert``) and an audit row.

Quantities (rates are over the interval since the previous evaluation):

* ``route_error_rate``: dead letters / received messages of a route (a message received
  in an earlier interval and dead-lettered in this one counts as received here too)
* ``route_backlog``: store-and-forward backlog of a route's sinks
* ``route_queue_depth``: messages waiting in a route
* ``deployment_errors``: new errors of a deployment (all kinds)
* ``deployment_restarts``: new restarts of a deployment
* ``outbox_backlog``: the node's whole store-and-forward backlog (no target)
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from ..errors import IotwasmError
from ..node.node import Node
from ..sqlite import open_db
from ..supervise import Repeats, supervise, until_beat

log = logging.getLogger("iotwasm.alerts")

Metric = Literal["route_error_rate", "route_backlog", "route_queue_depth", "deployment_errors",
                 "deployment_restarts", "outbox_backlog"]
METRICS = ("route_error_rate", "route_backlog", "route_queue_depth", "deployment_errors",
           "deployment_restarts", "outbox_backlog")


@dataclass
class AlertRule:
    name: str
    metric: str
    above: float
    target: str | None = None
    cooldown_s: float = 300.0
    topic: str | None = None
    webhook: str | None = None
    # state, not configuration
    last_fired: float | None = field(default=None, compare=False)
    fired: int = field(default=0, compare=False)

    def config(self) -> dict:
        d = asdict(self)
        d.pop("last_fired"), d.pop("fired")
        return d


class AlertStore:
    def __init__(self, path: str | Path):
        # the file is shared with the SecurityStore (api.db), hence its FULL sync
        self._db = open_db(path, synchronous="FULL", what="alert rules",
                           schema="CREATE TABLE IF NOT EXISTS alert_rules (name TEXT PRIMARY KEY, spec TEXT NOT NULL)")
        self._lock = threading.Lock()

    def put(self, rule: AlertRule) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO alert_rules VALUES (?,?)", (rule.name, json.dumps(rule.config())))

    def delete(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM alert_rules WHERE name = ?", (name,)).rowcount > 0

    def all(self) -> list[AlertRule]:
        with self._lock:
            rows = self._db.execute("SELECT spec FROM alert_rules ORDER BY name").fetchall()
        return [AlertRule(**json.loads(r[0])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class AlertEvaluator:
    """Evaluates the stored rules every `interval_s` in the node's event loop."""

    def __init__(self, node: Node, store: AlertStore, on_fire=None, interval_s: float = 1.0):
        self.node, self.store, self.interval_s = node, store, interval_s
        self.on_fire = on_fire or (lambda rule, doc: None)
        self._state: dict[str, AlertRule] = {}
        self._prev: dict[tuple, float] = {}
        self._task: asyncio.Task | None = None
        #: called after each evaluation (periodic security sweeps share this loop)
        self.after_evaluation: list = []

    def rules(self) -> list[AlertRule]:
        out = []
        for r in self.store.all():
            old = self._state.get(r.name)
            if old is not None and old.config() == r.config():
                r.last_fired, r.fired = old.last_fired, old.fired
            out.append(r)
        self._state = {r.name: r for r in out}
        return out

    def _delta(self, key: tuple, value: float) -> float:
        prev = self._prev.get(key)
        self._prev[key] = value
        return 0.0 if prev is None else max(0.0, value - prev)

    def value(self, rule: AlertRule) -> float | None:
        """The rule's quantity now, None when its target does not exist (yet)."""
        node, m, t = self.node, rule.metric, rule.target
        if m == "outbox_backlog":
            return float(node.outbox.backlog())
        if m.startswith("route_"):
            rec = node.routes.get(t or "")
            if rec is None:
                return None
            s = rec.runner.stats
            if m == "route_error_rate":
                received = self._delta((rule.name, "received"), s.received)
                dead = self._delta((rule.name, "dead"), s.dead_letters)
                # a batch received in one interval may be dead-lettered in the next
                return dead / max(received, dead) if dead else 0.0
            if m == "route_backlog":
                return float(sum(getattr(k, "backlog", lambda: 0)() for k in rec.sinks))
            return float(rec.runner.depth())
        drec = node.deployments.get(t or "")
        if drec is None:
            return None
        st = drec.handle.current.stats()
        if m == "deployment_errors":
            return self._delta((rule.name, "errors"), sum(st.totals()["errors"].values()))
        return self._delta((rule.name, "restarts"), st.restarts)

    async def evaluate(self) -> list[dict]:
        fired = []
        now = time.time()
        for rule in self.rules():
            v = self.value(rule)
            if v is None or v <= rule.above:
                continue
            if rule.last_fired is not None and now - rule.last_fired < rule.cooldown_s:
                continue
            rule.last_fired, rule.fired = now, rule.fired + 1
            doc = {"alert": rule.name, "metric": rule.metric, "target": rule.target, "value": v,
                   "above": rule.above, "node": self.node.config.name, "ts": now}
            await self._deliver(rule, doc)
            fired.append(doc)
        return fired

    async def _deliver(self, rule: AlertRule, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.node.state.event("alert", rule.target or self.node.config.name,
                              f"{rule.name}: {rule.metric} {doc['value']:.4g} > {rule.above:g}")
        if rule.topic and self.node.bus is not None:
            try:
                await self.node.bus.publish(rule.topic, body, qos=1)
            except IotwasmError as e:
                log.warning("alert %s not published on %s: %s", rule.name, rule.topic, e)
        if rule.webhook:
            try:
                async with httpx.AsyncClient(timeout=5) as c:
                    await c.post(rule.webhook, content=body, headers={"Content-Type": "application/json"})
            except httpx.HTTPError as e:
                log.warning("alert %s webhook %s failed: %s", rule.name, rule.webhook, e)
        self.on_fire(rule, doc)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(until_beat(self.interval_s))   # with the node's other upkeep
            try:
                await self.evaluate()
                for hook in list(self.after_evaluation):
                    hook()
            except Exception as e:  # noqa: BLE001 - logged once (repeats counted); the next one runs
                self._faults.failed(e)

    def start(self) -> None:
        self._faults = Repeats(log, "alert evaluation")
        self._task = supervise("alert evaluation", self._loop, log=log)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
