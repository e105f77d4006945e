"""A node's routes: how one is built from its manifest, started, replaced and removed, and
where what it cannot deliver goes.

`RouteLifecycle` is the part of `Node` (a mixin: the state lives on the node, declared below)
that turns a Route manifest into a running `RouteRunner` with its source and sinks, hands a
changed route's work to its new version, and writes dead letters — those of steps and sinks,
and the messages an uplink refused for good after they were stored (`SinkRejected`).
`BuildContext` is what a connector's factory gets of the node.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, IotwasmError
from ..message import DeadLetter, Message
from ..messaging.bus import Bus
from ..pipeline import BatchPolicy, QueuePolicy, RouteRunner, TopicPattern, connectors
from ..pipeline.connectors.base import SourceConnector
from ..pipeline.http_ingest import IngestServer
from ..engine.limits import parse_duration_ms
from .manifests import Route, digest_of_manifest
from .traffic import breaker_for, retry_for, split_steps, with_faults

if TYPE_CHECKING:
    from ..pipeline import LocalStore, Outbox
    from .device_link import DeviceLink
    from .deployments import DeploymentRecord
    from .node import NodeConfig
    from .state import NodeState

log = logging.getLogger("iotwasm.node")


@dataclass
class RouteRecord:
    manifest: Route
    digest: str
    runner: RouteRunner
    source: SourceConnector
    sinks: list
    uid: str

    def connectors(self) -> dict:
        """Health and counters of the route's source and sinks (docs/connectors.md)."""
        spec = self.manifest.spec
        return {"source": connectors.status_of(self.source, spec.source.type),
                "sinks": [connectors.status_of(k, s.type) for k, s in zip(self.sinks, spec.sinks)]}


class RouteLifecycle:
    """Routes of a `Node` (a mixin; see the module's doc)."""

    # the node's state these methods use (set in Node.__init__)
    config: NodeConfig
    routes: dict[str, RouteRecord]
    deployments: dict[str, DeploymentRecord]
    outbox: Outbox
    store: LocalStore
    state: NodeState
    bus: Bus | None
    device_link: DeviceLink
    route_trace: Any | None
    _ingest: IngestServer | None

    if TYPE_CHECKING:
        def _event(self, kind: str, obj: str, message: str, *, of: str | None = None,
                   uid: str | None = None, namespace: str | None = None) -> None: ...
        async def _bus_for(self, url: str | None) -> Bus: ...

    async def _start_route(self, r: Route, uid: str) -> None:
        rec = await self._build_route(r, uid)
        for s in rec.sinks:
            if hasattr(s, "start"):
                await s.start()
        rec.runner.start()
        await rec.source.start()
        self.routes[r.name] = rec
        spec = r.spec
        self._event("started", r.name, f"route {spec.source.type} → {' → '.join(spec.steps) or '(no steps)'} → "
                                       f"{', '.join(s.type for s in spec.sinks)}", uid=uid,
                    namespace=r.metadata.namespace)

    async def _replace_route(self, r: Route) -> None:
        """A route's manifest changed: the new version takes over the old one's work.

        The new route is built first (if that fails, the old one keeps running and the
        problem is reported). An unchanged source stays subscribed and is pointed at the new
        route; a changed one stops taking before the new one starts. The old route hands
        its queue over (`RouteRunner.hand_over`), its batches in flight finish and are
        confirmed, then its sinks stop and the new route starts: nothing is dropped,
        acknowledged unprocessed, or run twice."""
        old = self.routes[r.name]
        new = await self._build_route(r, old.uid)
        keep = old.manifest.spec.source == r.spec.source
        if keep:
            new.source = old.source
            old.source.retarget(new.runner)
        else:
            old.source.pause()  # what it still hands on goes through the old route to the new
        await old.runner.hand_over(new.runner)
        await old.runner.stop(self.config.drain_timeout_s)
        for s in old.sinks:
            if hasattr(s, "stop"):
                await s.stop(drain_timeout=2.0)
        for s in new.sinks:
            if hasattr(s, "start"):
                await s.start()
        new.runner.start()
        self.routes[r.name] = new
        if not keep:
            try:
                await new.source.start()
            finally:
                await self._remove_source(old)
        self._event("updated", r.name, "route replaced; queued messages handed over"
                    + ("" if keep else ", new source"), uid=old.uid, namespace=r.metadata.namespace)

    async def _build_route(self, r: Route, uid: str) -> RouteRecord:
        """The parts of a route — steps, sinks, runner, source — made, none started yet."""
        spec = r.spec
        steps = []
        for name in spec.steps:
            rec = self.deployments.get(name)
            if rec is None:
                raise ConfigError(f"step {name!r} is not a deployment on this node")
            steps.append(rec.handle)
        steps = split_steps(spec, steps, self.deployments, on_event=lambda kind, msg: self._event(
            kind, r.name, msg, uid=uid, namespace=r.metadata.namespace))
        src = spec.source
        if self.bus is not None and self.bus.partitioned and not (
                src.type == "bus" or (src.type == "mqtt" and getattr(src.config, "url", None) is None)):
            # each worker would read the whole source: every message once per worker
            raise ConfigError(f"a worker of `iotwasm up --workers` runs only routes fed by the node's "
                              f"broker (source mqtt without url, or bus), not a {src.type} source")
        ctx = BuildContext(self, r.name, r.metadata.namespace)
        source_kind = connectors.registry.get("source", src.type)
        pattern = source_kind.pattern(src.config) if source_kind.pattern else None
        src_pattern = TopicPattern.parse(pattern) if pattern is not None else None
        if steps and src_pattern is not None and not steps[0].acl.can_subscribe(src_pattern.filter):
            raise ConfigError(f"deployment {steps[0].name} may not receive {src_pattern.filter!r} "
                              f"(subscribe grants: {', '.join(steps[0].acl.subscribe) or 'none'})")
        sinks = []
        for i, s in enumerate(spec.sinks):
            kind = connectors.registry.get("sink", s.type)
            sink_name = f"{r.name}/{i}:{s.type}"
            sink = await kind.build(ctx.for_sink(sink_name, s), s.config, sink_name,
                                    self.outbox if s.store_and_forward else None)
            if hasattr(sink, "reject"):   # an uplink: what it refuses for good is a dead letter
                sink.reject = functools.partial(self._sink_rejected, uid, r.name, sink_name)
            sinks.append(sink)
        lanes = max([self.deployments[d].handle.current.replicas for d in spec.deployments()] or [1])
        steps, sinks, injected = with_faults(spec, steps, sinks)
        if injected:   # never mistaken for real failures
            log.warning("route %s: fault injection on: %s", r.name, "; ".join(injected))
            self._event("faults", r.name, "fault injection on: " + "; ".join(injected), uid=uid,
                        namespace=r.metadata.namespace)
        runner = RouteRunner(r.name, steps, sinks,
                             batch=BatchPolicy(spec.batch.max_size,
                                               parse_duration_ms(spec.batch.max_linger) / 1000),
                             queue=QueuePolicy(spec.queue.capacity, spec.queue.overflow),
                             lanes=lanes, order_key=spec.order_by,
                             dead_letter=lambda route, step, dl, variables: self._dead_letter(uid, route, step, dl))
        runner.trace = self.route_trace
        source = await source_kind.build(ctx, src.config, runner)
        return RouteRecord(r, digest_of_manifest(r), runner, source, sinks, uid)

    async def _ingest_server(self) -> IngestServer:
        if self._ingest is None:
            host, _, port = self.config.http.rpartition(":")
            server = IngestServer(host or "127.0.0.1", int(port), ack_timeout_s=self.config.http_ack_timeout_s)
            await server.start()
            self._ingest = server
        return self._ingest

    async def _stop_source(self, rec: RouteRecord) -> None:
        """The node stops: the source stops taking and keeps its broker-side state."""
        try:
            await rec.source.stop()
        except Exception:
            log.exception("stopping source of %s", rec.manifest.name)

    async def _remove_source(self, rec: RouteRecord) -> None:
        """The route (or its source) is gone: the source also ends its subscription."""
        try:
            await rec.source.remove()
        except Exception:
            log.exception("removing source of %s", rec.manifest.name)

    async def _remove_route(self, name: str, drain: bool, stopping: bool = False) -> None:
        """Drain and stop a route; `stopping` (the node stops) keeps its source's broker-side
        state, otherwise the source ends its subscription too."""
        rec = self.routes.pop(name, None)
        if rec is None:
            return
        await (self._stop_source(rec) if stopping else self._remove_source(rec))
        await rec.runner.stop(self.config.drain_timeout_s if drain else 0)
        for s in rec.sinks:
            if hasattr(s, "stop"):
                await s.stop(drain_timeout=2.0 if drain else 0)
        self._event("stopped", name, "route stopped" + (" after draining" if drain else ""), uid=rec.uid,
                    namespace=rec.manifest.metadata.namespace)

    async def _sink_rejected(self, uid: str, route: str, sink: str, topic: str, payload: bytes,
                             why: IotwasmError) -> None:
        """A stored message its uplink refused for good: a dead letter of its route, counted
        there as one of the sink's (`RouteRunner.dead_letter`, like the route's own)."""
        dl = DeadLetter(0, Message(topic, payload), why)
        rec = self.routes.get(route)
        if rec is not None and rec.uid == uid:
            await rec.runner.dead_letter(sink, dl, {})
        else:   # the route is gone while its sink drains: written, with no route to count it
            await self._dead_letter(uid, route, sink, dl)

    async def _dead_letter(self, uid: str, route: str, step: str, dl: DeadLetter) -> None:
        m = dl.message
        await asyncio.to_thread(self.state.dead_letter, uid, route, step, dl.error.kind, str(dl.error),
                                m.topic, m.payload)
        rec = self.routes.get(route)
        template = rec.manifest.spec.dead_letter if rec else "deadletter/{route}"
        topic = template.replace("{route}", route)
        if self.bus is not None and "{" not in topic:
            body = {"route": route, "step": step, "kind": dl.error.kind, "error": str(dl.error),
                    "topic": m.topic, "timestamp_ms": m.timestamp_ms,
                    "payload": m.payload.decode("utf-8", "replace")}
            try:
                await self.bus.publish(topic, json.dumps(body).encode(), qos=0)
            except IotwasmError:
                pass  # kept in the node database either way


class BuildContext:
    """What a connector's factory gets of the node (`connectors.BuildContext`)."""

    def __init__(self, node: Any, route: str, namespace: str = "default"):
        self.node, self.route, self.namespace = node, route, namespace
        self.outbox, self.store, self.broker = node.outbox, node.store, node.config.broker
        #: the node's devices, for the `twin` sink (device_link.py)
        self.device_link = node.device_link
        #: the sink being built (`for_sink`): its circuit breaker and its retries
        self.breaker: Any = None
        self.retries: int = 0
        self.retry_backoff: Any = None

    def for_sink(self, name: str, sink: Any) -> "BuildContext":
        """This context for one sink of a manifest: its `circuitBreaker` (uplinks, unless
        turned off) and `retry` options, made once here so every kind gets them alike."""
        ctx = copy.copy(self)
        ctx.breaker = breaker_for(name, sink)
        ctx.retries, ctx.retry_backoff = retry_for(sink)
        return ctx

    async def bus_for(self, url: str | None) -> Bus:
        return await self.node._bus_for(url)

    async def ingest_server(self) -> IngestServer:
        return await self.node._ingest_server()
