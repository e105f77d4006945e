"""The node's side of rules: `Rule` manifests → the pipeline's RuleRunner.

Kept apart from node.py so the node only calls `apply`, `set_enabled`, `status` and `stop`.
Bulk enable/disable (by name or tag) is remembered in the node database together with the
digest of the manifest it applied to: it survives restarts, and a changed manifest (whose
`enabled` then counts again) supersedes it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from ..engine.limits import parse_duration_ms
from ..errors import ConfigError, ContainerUnavailable, IotwasmError
from ..pipeline import LocalStore, Outbox, connectors
from ..pipeline.rules import (Action, AlertPolicy, EventTime, RuleDefinition, RuleRunner, RuleSpec,
                              RuleStateStore, WasmFunction)
from .manifests import Rule, digest_of_manifest

log = logging.getLogger("iotwasm.node")


class _DeploymentRef:
    """A rule's function looks its deployment up at each call: a deployment that is removed
    and created again (a new handle) is found again; one that is gone fails the evaluations
    with a clear error instead of calling a stopped container."""

    def __init__(self, lookup: Callable[[str], object | None], name: str):
        self.lookup, self.name = lookup, name

    def process(self, messages):
        handle = self.lookup(self.name)
        if handle is None:
            raise ContainerUnavailable(f"deployment {self.name!r} is not on this node")
        return handle.process(messages)


class NodeRules:
    def __init__(self, bus, outbox: Outbox, store: LocalStore, state: RuleStateStore,
                 deployments: Callable[[str], object | None], event: Callable[[str, str, str], None],
                 build_context: Callable[[str, str], Any] | None = None):
        self.bus = bus
        self.state = state
        #: what a `sink` action's connector is built with (`connectors.BuildContext`), by
        #: rule and its namespace
        self.build_context = build_context
        self.deployments = deployments
        self.event = event
        self.runner = RuleRunner(bus, outbox=outbox, store=store, state=state,
                                 processors=lambda n: _DeploymentRef(deployments, n) if deployments(n) else None)
        self.digests: dict[str, str] = {}
        self.manifests: dict[str, Rule] = {}
        state._db.execute("CREATE TABLE IF NOT EXISTS rule_enabled (rule TEXT PRIMARY KEY, "
                          "digest TEXT NOT NULL, enabled INTEGER NOT NULL)")
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self.runner.start()
            self._started = True

    def _override(self, name: str, digest: str) -> bool | None:
        with self.state._lock:
            row = self.state._db.execute("SELECT digest, enabled FROM rule_enabled WHERE rule = ?",
                                         (name,)).fetchone()
        return bool(row[1]) if row and row[0] == digest else None

    def definition(self, r: Rule) -> RuleDefinition:
        s = r.spec
        funcs = {}
        for f in s.functions:
            if self.deployments(f.deployment) is None:
                raise ConfigError(f"function {f.name}: deployment {f.deployment!r} is not on this node")
            funcs[f.name] = WasmFunction(f.name, _DeploymentRef(self.deployments, f.deployment), f.kind,
                                         deployment=f.deployment)
        idle = s.event_time.idle_timeout
        et = EventTime(s.event_time.field, s.event_time.unit, int(parse_duration_ms(s.event_time.lateness)),
                       int(parse_duration_ms(idle)) if idle is not None else None)
        actions = []
        for a in s.actions:
            t = a.type
            body = getattr(a, t)
            if t == "sink":
                actions.append(Action("sink", build=self._sink_builder(r.name, r.metadata.namespace, body)))
                continue
            actions.append(Action(t, topic=getattr(body, "topic", ""), payload=getattr(body, "payload", ""),
                                  qos=getattr(body, "qos", 1), url=getattr(body, "url", ""),
                                  table=getattr(body, "table", "rules"),
                                  deployment=getattr(body, "deployment", "")))
        alert = None
        if s.alert is not None:
            al = s.alert
            alert = AlertPolicy(al.severity, al.dedup, int(parse_duration_ms(al.cooldown)),
                                int(parse_duration_ms(al.for_)), al.topic, al.webhook, al.message)
        return RuleDefinition(RuleSpec(r.name, s.sql, et, funcs), actions, alert, list(s.tags), s.enabled)

    def _sink_builder(self, rule: str, namespace: str, spec) -> Callable[[str], Any]:
        """A `sink` action's factory: the connector of its kind, built as a route's sink is
        (through the outbox unless the action turns store-and-forward off, with its circuit
        breaker and retries)."""
        if self.build_context is None:
            raise ConfigError("sink actions need the node's connectors")
        kind = connectors.registry.get("sink", spec.type)
        ctx = self.build_context(f"rule:{rule}", namespace)

        async def build(name: str):
            sink_ctx = ctx.for_sink(name, spec) if hasattr(ctx, "for_sink") else ctx
            return await kind.build(sink_ctx, spec.config, name,
                                    self.runner.outbox if spec.store_and_forward else None)

        return build

    async def apply(self, rules: dict[str, Rule]) -> list[str]:
        """Reconcile to `rules`: create, update (keeping window state that applies), delete."""
        await self.start()
        problems = []
        for name in [n for n in self.digests if n not in rules]:
            await self.runner.remove(name)
            self.digests.pop(name)
            self.manifests.pop(name, None)
            self.event("removed", name, "rule removed")
        for name, r in rules.items():
            digest = digest_of_manifest(r)
            if self.digests.get(name) == digest:
                continue
            try:
                if self.bus.partitioned:
                    raise ConfigError("a worker of `iotwasm up --workers` sees only its share of the "
                                      "devices, so a rule's windows and aggregates would be partial; "
                                      "run rules on a node without --workers")
                d = self.definition(r)
                override = self._override(name, digest)
                if override is not None:
                    d.enabled = override
                await self.runner.put(d)
            except IotwasmError as e:
                problems.append(f"Rule {name}: {e}")
                self.event("failed", name, str(e))
                continue
            verb = "updated" if name in self.digests else "created"
            self.digests[name] = digest
            self.manifests[name] = r
            self.event(verb, name, f"rule {'enabled' if d.enabled else 'disabled'}: {r.spec.sql.strip()[:120]}")
        return problems

    async def forget(self, name: str) -> bool:
        """The rule's object is gone (deleted, or its name moved to another namespace): stop it if
        it runs and delete its window checkpoints and enable override, so a rule created with
        this name later starts empty. Returns whether it was running."""
        running = name in self.digests
        if running:
            await self.runner.remove(name)
            self.digests.pop(name)
            self.manifests.pop(name, None)

        def delete() -> None:
            self.state.delete(name)
            self.state.delete(f"alert:{name}")
            with self.state._lock:
                self.state._db.execute("DELETE FROM rule_enabled WHERE rule = ?", (name,))
        await asyncio.to_thread(delete)
        return running

    async def set_enabled(self, enabled: bool, *, names: list[str] | None = None,
                          tag: str | None = None) -> list[str]:
        changed = await self.runner.set_enabled(enabled, names=names, tag=tag)
        with self.state._lock:
            self.state._db.executemany("INSERT OR REPLACE INTO rule_enabled VALUES (?,?,?)",
                                       [(n, self.digests[n], int(enabled)) for n in changed])
        for n in changed:
            self.event("enabled" if enabled else "disabled", n, f"rule {'enabled' if enabled else 'disabled'}"
                       + (f" (tag {tag})" if tag else ""))
        return changed

    def status(self) -> dict:
        return self.runner.status()

    async def stop(self, drain: float) -> None:
        if self._started:
            await self.runner.stop(drain)
            self._started = False
