"""One edge node: desired state (manifests) → running deployments and routes.

A sync loop, like a kubelet's, watches the manifest file or directory: added, changed and
removed manifests are applied without a restart; a manifest that fails validation is reported
(every problem, with file and field path) and the node keeps running what it had. State lives
in SQLite under the data directory. With an MQTT broker, the node publishes a retained status
on ``iotwasm/nodes/{node}/status`` and leaves an MQTT last will that marks it offline if it
dies. Shutdown is graceful: sources stop, queued batches drain, uplink outboxes get a chance
to flush, containers stop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..container import RestartPolicy, WasmContainer
from ..engine import Runtime
from ..engine.limits import parse_duration_ms
from ..errors import ConfigError, IotwasmError
from ..message import DeadLetter
from ..messaging.acl import TopicACL
from ..messaging.bus import Bus, Will, open_bus
from ..pipeline import (BatchPolicy, BusSink, BusSource, LocalStore, LogSink, Outbox, QueuePolicy,
                        RouteRunner, SensorSource, StoreSink, TopicPattern, WebhookSink)
from ..registry import ModuleStore
from ..sensors import SensorField
from ..pipeline.http_ingest import IngestServer
from .deployment import DeploymentHandle
from .applied import AppliedManifests
from .logs import GuestLogs, printable
from .manifests import Deployment, ManifestError, Route, Rule, digest_of_manifest, load_path
from .rules import NodeRules
from .state import NodeState, SqliteKeyValue
from .watch import ManifestWatch

log = logging.getLogger("iotwasm.node")

#: after a change in the manifest directory, wait this long for the rest of the write to land
WRITE_SETTLE_S = 0.05


@dataclass
class NodeConfig:
    data_dir: Path = Path(".iotwasm")
    manifests: Path | None = None
    broker: str | None = None      # the node's bus: None = in-process; mqtt://… or nats://…
    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0] or "node")
    sync_interval_s: float = 1.0
    drain_timeout_s: float = 10.0
    status_interval_s: float = 10.0
    http: str = "127.0.0.1:8181"   # where routes with an http source are served


@dataclass
class _DeploymentRecord:
    manifest: Deployment
    digest: str            # of the manifest spec
    module_digest: str
    handle: DeploymentHandle


@dataclass
class _RouteRecord:
    manifest: Route
    digest: str
    runner: RouteRunner
    source: object
    sinks: list


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        d = Path(config.data_dir)
        d.mkdir(parents=True, exist_ok=True)
        self.runtime = Runtime(cache_dir=d / "cache")
        self.registry = ModuleStore(d / "modules", runtime=self.runtime)
        self.state = NodeState(d / "node.db")
        self.outbox = Outbox(d / "outbox.db")
        self.store = LocalStore(d / "store.db")
        self.deployments: dict[str, _DeploymentRecord] = {}
        self.routes: dict[str, _RouteRecord] = {}
        self.bus: Bus | None = None
        self._buses: dict[str, Bus] = {}
        self._manifest_stamp: tuple | None = None
        self.last_manifest_error: str | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()       # stop, or the manifest directory changed
        self._ingest: IngestServer | None = None
        self.started = time.time()
        self.ready = False
        # manifests applied through the API, reconciled together with the files
        self.applied = AppliedManifests(self.state)
        self.guest_logs = GuestLogs()
        #: called with (deployment, module digest) before a module is loaded; raises
        #: IotwasmError to refuse it (the API layer's tenant and signature policy)
        self.admission: Callable[[Deployment, str], None] | None = None
        #: problems of the last reconcile (empty = everything desired is running)
        self.last_problems: list[str] = []
        self._sync_lock = asyncio.Lock()
        self._file_owned: set[tuple[str, str]] = set()
        #: wraps every batch of every deployment when set (see DeploymentHandle.trace)
        self.batch_trace = None
        self.rules: NodeRules | None = None  # created once the bus exists (start)

    # -- life ------------------------------------------------------------------------------
    @property
    def status_topic(self) -> str:
        return f"iotwasm/nodes/{self.config.name}/status"

    async def start(self) -> None:
        will = Will(self.status_topic, json.dumps({"node": self.config.name, "state": "offline",
                                                    "reason": "lost"}).encode(), qos=1, retain=True)
        if self.config.broker and self.config.broker.startswith("mqtt"):
            self.bus = open_bus(self.config.broker, will=will,
                                client_id=f"iotwasm-node-{self.config.name}")
        else:
            self.bus = open_bus(self.config.broker)
        try:
            await self.bus.connect(timeout=10)
        except IotwasmError as e:
            # edge autonomy: run anyway; the bus keeps reconnecting and the outbox keeps data
            log.warning("node bus %s not reachable yet (%s); continuing, reconnecting in background",
                        self.config.broker, e)
        self.state.event("node", self.config.name, f"started (bus: {self.config.broker or 'in-process'})")
        from ..pipeline.rules import RuleStateStore
        self.rules = NodeRules(self.bus, self.outbox, self.store, RuleStateStore(Path(self.config.data_dir) / "rules.db"),
                               self._processor, self._event)
        await self.sync()
        self.ready = True
        await self._publish_status("online")

    async def run(self) -> None:
        """Start, then sync until `stop()`; always shuts down gracefully."""
        await self.start()
        last_status = time.monotonic()
        # a change in the manifest directory wakes the loop at once; the interval stays the fallback
        watch = ManifestWatch(self.config.manifests, self._wake) if self.config.manifests else None
        if watch is not None and not watch.start():
            watch = None
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.config.sync_interval_s)
                except asyncio.TimeoutError:
                    pass
                if self._stop.is_set():
                    break
                if self._wake.is_set():
                    await asyncio.sleep(WRITE_SETTLE_S)   # an editor's save is several events
                    self._wake.clear()
                await self.sync()
                for rec in self.deployments.values():
                    rec.handle.current.tick()
                if time.monotonic() - last_status > self.config.status_interval_s:
                    last_status = time.monotonic()
                    await self._publish_status("online")
        finally:
            if watch is not None:
                watch.stop()
            await self.shutdown()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def shutdown(self) -> None:
        log.info("node %s shutting down: draining routes", self.config.name)
        if self.rules is not None:
            await self.rules.stop(self.config.drain_timeout_s)
            self.rules.state.close()
        for rec in self.routes.values():
            await self._stop_source(rec)
        for name in list(self.routes):
            await self._remove_route(name, drain=True)
        for name in list(self.deployments):
            await asyncio.to_thread(self.deployments.pop(name).handle.stop)
        if self._ingest is not None:
            await self._ingest.stop()
        await self._publish_status("offline", reason="shutdown")
        for bus in [self.bus, *self._buses.values()]:
            if bus is not None:
                try:
                    await bus.close()
                except Exception:
                    log.exception("closing bus")
        self.state.event("node", self.config.name, "stopped")
        self.runtime.close()
        self.outbox.close()
        self.store.close()
        self.state.close()

    async def _publish_status(self, state: str, reason: str = "") -> None:
        if self.bus is None:
            return
        body = {"node": self.config.name, "state": state, "started": self.started, "time": time.time(),
                "deployments": {n: str(r.handle.current.state) for n, r in self.deployments.items()},
                "routes": list(self.routes)}
        if reason:
            body["reason"] = reason
        try:
            await self.bus.publish(self.status_topic, json.dumps(body).encode(), qos=1, retain=True)
        except IotwasmError as e:
            log.debug("status not published: %s", e)

    # -- desired state ---------------------------------------------------------------------
    def _stamp(self) -> tuple | None:
        p = self.config.manifests
        if p is None:
            return (("applied", self.applied.generation),)
        files = sorted([*p.glob("*.yaml"), *p.glob("*.yml")]) if p.is_dir() else [p]
        out = []
        for f in files:
            try:
                st = f.stat()
                out.append((str(f), st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(f), None, None))
        return (*out, ("applied", self.applied.generation))

    async def sync(self) -> list[str]:
        """Re-read the manifests (files and API-applied) when they changed, and apply them."""
        async with self._sync_lock:
            stamp = self._stamp()
            if stamp is None or stamp == self._manifest_stamp:
                return self.last_problems
            self._manifest_stamp = stamp
            try:
                files = load_path(self.config.manifests) if self.config.manifests else []
                applied = self.applied.all()
            except ManifestError as e:
                self.last_manifest_error = str(e)
                log.error("manifests not applied:\n  %s", "\n  ".join(e.problems))
                self.state.event("manifest-error", str(self.config.manifests), "; ".join(e.problems))
                return e.problems
            self.last_manifest_error = None
            owned = self._file_owned = {(m.kind, m.name) for m in files}
            clash = [f"{m.kind} {m.name}: defined in the manifest files; the API copy is ignored"
                     for m in applied if (m.kind, m.name) in owned]
            problems = clash + await self.apply(files + [m for m in applied if (m.kind, m.name) not in owned])
            self.last_problems = problems
            return problems

    def file_owned(self, kind: str, name: str) -> bool:
        """Whether the watched manifest files defined `kind`/`name` at the last sync (the API
        may not change it)."""
        return (kind, name) in self._file_owned

    async def apply(self, manifests: list[Deployment | Route | Rule]) -> list[str]:
        """Reconcile running state to `manifests`; returns the problems found (also logged)."""
        problems: list[str] = []
        deps = {m.name: m for m in manifests if isinstance(m, Deployment)}
        routes = {m.name: m for m in manifests if isinstance(m, Route)}
        base = self.config.manifests.parent if self.config.manifests and self.config.manifests.is_file() \
            else self.config.manifests or Path.cwd()
        # routes that change or go away stop first, so no batch runs on a removed deployment;
        # so do routes through a deployment that goes away (they start again when it returns,
        # over the new one, instead of holding messages for a stopped container)
        gone = {n for n in self.deployments if n not in deps}
        for name in [n for n in self.routes if n not in routes or
                     digest_of_manifest(routes[n]) != self.routes[n].digest or
                     gone & set(self.routes[n].manifest.spec.steps)]:
            await self._remove_route(name, drain=True)
        for name in [n for n in self.deployments if n not in deps]:
            rec = self.deployments.pop(name)
            await asyncio.to_thread(rec.handle.stop)
            self._event("removed", name, "deployment removed")
        for name, d in deps.items():
            try:
                await self._apply_deployment(d, base)
            except IotwasmError as e:
                problems.append(f"Deployment {name}: {e}")
                self._event("failed", name, str(e))
        for name, r in routes.items():
            if name in self.routes:
                continue
            try:
                await self._start_route(r)
            except IotwasmError as e:
                problems.append(f"Route {name}: {e}")
                self._event("failed", name, str(e))
        if self.rules is not None:
            problems += await self.rules.apply({m.name: m for m in manifests if isinstance(m, Rule)})
        for p in problems:
            log.error("%s", p)
        return problems

    def _processor(self, name: str):
        rec = self.deployments.get(name)
        return rec.handle if rec is not None else None

    def _handle_event(self, name: str, kind: str, message: str) -> None:
        """Events of a deployment's versions (called from worker threads)."""
        self._event(kind, name, message)
        rec = self.deployments.get(name)
        if rec is None:
            return
        if kind == "rolled-back" and rec.handle.last_rolled_back_revision:
            self.state.set_revision_status(name, rec.handle.last_rolled_back_revision, "rolled-back", message)
        elif kind == "healthy":
            self.state.promote_revision(name, rec.handle.revision, message)

    def _event(self, kind: str, obj: str, message: str) -> None:
        log.info("%s %s: %s", obj, kind, message)
        self.state.event(kind, obj, message)

    def _resolve_module(self, ref: str, base: Path):
        path = Path(ref)
        if not path.is_absolute():
            path = base / path
        if ref.endswith((".wasm", ".wat")) or path.exists():
            rec = self.registry.add(path)
        else:
            rec = self.registry.get(ref)
        return rec.digest, self.registry.path(rec.digest)

    async def _apply_deployment(self, d: Deployment, base: Path) -> None:
        digest = digest_of_manifest(d)
        current = self.deployments.get(d.name)
        if current is not None and current.digest == digest:
            return
        module_digest, module_path = await asyncio.to_thread(self._resolve_module, d.spec.module, base)
        if self.admission is not None:
            await asyncio.to_thread(self.admission, d, module_digest)
        if current is not None and self._only_scaled(current.manifest, d) and \
                module_digest == current.module_digest:
            await asyncio.to_thread(current.handle.current.scale, d.spec.replicas)
            current.manifest, current.digest = d, digest
            self._event("scaled", d.name, f"replicas {d.spec.replicas}")
            return
        container = self._container(d, module_path)
        manifest_json = d.model_dump(mode="json", by_alias=True)
        try:
            await asyncio.to_thread(container.start)
        except IotwasmError as e:
            if current is not None:
                self.state.add_revision(d.name, module_digest, manifest_json, "refused", str(e))
                raise ConfigError(f"update refused, revision {current.handle.revision} keeps "
                                  f"running: {e}") from None
            # a first deployment whose module fails stays in error and restarts by policy;
            # routes through it hold their messages meanwhile
            self._event("error", d.name, str(e))
        gated = current is not None and d.spec.update_strategy.rollback
        rev = self.state.add_revision(d.name, module_digest, manifest_json, "gating" if gated else "serving")
        if not gated:
            self.state.promote_revision(d.name, rev)
        acl = TopicACL(d.spec.capabilities.topics.publish, d.spec.capabilities.topics.subscribe,
                       principal=f"deployment {d.name}")
        if current is None:
            handle = DeploymentHandle(d.name, container, acl, rev,
                                      on_event=lambda kind, msg, n=d.name: self._handle_event(n, kind, msg))
            handle.trace = self.batch_trace
            self.deployments[d.name] = _DeploymentRecord(d, digest, module_digest, handle)
            self._event("created", d.name, f"revision {rev}, module {module_digest[:19]}, "
                                           f"{d.spec.replicas} replica(s)")
        else:
            gate = d.spec.update_strategy.health_gate
            handle = current.handle
            handle.acl = acl
            if d.spec.update_strategy.rollback:
                handle.update(container, rev, gate.messages, gate.max_trap_rate)
            else:
                old = handle.current
                handle.current, handle.revision = container, rev
                await asyncio.to_thread(old.stop, "replaced")
            current.manifest, current.digest, current.module_digest = d, digest, module_digest

    @staticmethod
    def _only_scaled(old: Deployment, new: Deployment) -> bool:
        a = old.model_dump(by_alias=True)
        b = new.model_dump(by_alias=True)
        a["spec"].pop("replicas"), b["spec"].pop("replicas")
        a["spec"].pop("weights"), b["spec"].pop("weights")
        return a == b

    def _container(self, d: Deployment, module_path: Path) -> WasmContainer:
        caps = d.capabilities()
        r = d.spec.restart_policy
        restart = RestartPolicy(mode=r.mode, backoff_s=parse_duration_ms(r.backoff) / 1000,
                                max_backoff_s=parse_duration_ms(r.max_backoff) / 1000,
                                crash_loop_batches=r.crash_loop_batches)
        guest_log = logging.getLogger(f"iotwasm.guest.{d.name}")
        return WasmContainer(
            d.name, module_path, runtime=self.runtime, limits=d.limits(), capabilities=caps,
            replicas=d.spec.replicas, strategy=d.spec.strategy, weights=d.spec.weights or None,
            restart=restart, kv=SqliteKeyValue(self.state, d.name, caps.kv_quota),
            on_log=lambda name, level, text, n=d.name: (
                self.guest_logs.add(n, level, text)
                and guest_log.log(10 + 10 * max(0, min(level, 3)), "%s", printable(text))),
            on_transition=lambda tr, n=d.name: self.state.event(
                "state", n, f"{tr.source} → {tr.target}: {tr.reason}"))

    # -- routes ----------------------------------------------------------------------------
    async def _bus_for(self, url: str | None) -> Bus:
        if url is None:
            assert self.bus is not None
            return self.bus
        bus = self._buses.get(url)
        if bus is None:
            bus = self._buses[url] = open_bus(url)
            # never wait for an uplink: its outbox keeps the data and the bus keeps reconnecting
            try:
                await bus.connect(timeout=0.5)
            except IotwasmError as e:
                log.warning("bus %s not reachable yet (%s); reconnecting in background", url, e)
        return bus

    async def _start_route(self, r: Route) -> None:
        spec = r.spec
        steps = []
        for name in spec.steps:
            rec = self.deployments.get(name)
            if rec is None:
                raise ConfigError(f"step {name!r} is not a deployment on this node")
            steps.append(rec.handle)
        src = spec.source
        src_pattern = None
        if src.type in ("mqtt", "bus"):
            src_pattern = TopicPattern.parse((src.mqtt or src.bus).topic)
        elif src.type == "nats":
            src_pattern = TopicPattern.parse(subject_to_topic(src.nats.subject))
        elif src.type == "sensors":
            src_pattern = TopicPattern.parse("devices/{device}/frame")
        elif src.type == "http":
            src_pattern = TopicPattern.parse(src.http.topic)
        if steps and src_pattern is not None and not steps[0].acl.can_subscribe(src_pattern.filter):
            raise ConfigError(f"deployment {steps[0].name} may not receive {src_pattern.filter!r} "
                              f"(subscribe grants: {', '.join(steps[0].acl.subscribe) or 'none'})")
        sinks = []
        for i, s in enumerate(spec.sinks):
            sink_name = f"{r.name}/{i}:{s.type}"
            saf = self.outbox if s.store_and_forward else None
            if s.type in ("mqtt", "bus"):
                ep = s.mqtt or s.bus
                bus = await self._bus_for(getattr(ep, "url", None))
                sinks.append(BusSink(sink_name, bus, ep.topic, qos=getattr(ep, "qos", 1),
                                     retain=getattr(ep, "retain", False), outbox=saf))
            elif s.type == "nats":
                bus = await self._bus_for(s.nats.url or self.config.broker)
                sinks.append(BusSink(sink_name, bus, subject_to_topic(s.nats.subject),
                                     qos=1 if s.nats.jetstream else 0, outbox=saf))
            elif s.type == "store":
                sinks.append(StoreSink(sink_name, self.store, s.store.table, r.name))
            elif s.type == "webhook":
                sinks.append(WebhookSink(sink_name, s.webhook.url,
                                         timeout_s=parse_duration_ms(s.webhook.timeout) / 1000, outbox=saf))
            else:
                sinks.append(LogSink(sink_name, s.log.level))
        lanes = max([d.current.replicas for d in steps] or [1])
        runner = RouteRunner(r.name, steps, sinks,
                             batch=BatchPolicy(spec.batch.max_size,
                                               parse_duration_ms(spec.batch.max_linger) / 1000),
                             queue=QueuePolicy(spec.queue.capacity, spec.queue.overflow),
                             lanes=lanes, order_key=spec.order_by, dead_letter=self._dead_letter)
        for s in sinks:
            if hasattr(s, "start"):
                await s.start()
        runner.start()
        if src.type == "sensors":
            ss = src.sensors
            field_ = SensorField(devices=ss.devices, sensors=tuple(ss.sensors), anomaly_rate=ss.anomaly_rate,
                                 corrupt_rate=ss.corrupt_rate, seed=ss.seed)
            source = SensorSource(field_, ss.rate, runner)
        elif src.type == "http":
            source = _HttpSource(await self._ingest_server(), src.http.path, src.http.topic, runner)
        elif src.type == "nats":
            n = src.nats
            bus = await self._bus_for(n.url or self.config.broker)
            source = BusSource(bus, subject_to_topic(n.subject), runner, qos=1 if n.jetstream else 0,
                               queue=n.queue, durable=n.durable)
        else:
            ep = src.mqtt or src.bus
            bus = await self._bus_for(getattr(ep, "url", None))
            source = BusSource(bus, ep.topic, runner, qos=getattr(ep, "qos", 1))
        await source.start()
        self.routes[r.name] = _RouteRecord(r, digest_of_manifest(r), runner, source, sinks)
        self._event("started", r.name, f"route {src.type} → {' → '.join(spec.steps) or '(no steps)'} → "
                                       f"{', '.join(s.type for s in spec.sinks)}")

    async def _ingest_server(self) -> IngestServer:
        if self._ingest is None:
            host, _, port = self.config.http.rpartition(":")
            server = IngestServer(host or "127.0.0.1", int(port))
            await server.start()
            self._ingest = server
        return self._ingest

    async def _stop_source(self, rec: _RouteRecord) -> None:
        try:
            await rec.source.stop()
        except Exception:
            log.exception("stopping source of %s", rec.manifest.name)

    async def _remove_route(self, name: str, drain: bool) -> None:
        rec = self.routes.pop(name, None)
        if rec is None:
            return
        await self._stop_source(rec)
        await rec.runner.stop(self.config.drain_timeout_s if drain else 0)
        for s in rec.sinks:
            if hasattr(s, "stop"):
                await s.stop(drain_timeout=2.0 if drain else 0)
        self._event("stopped", name, "route stopped" + (" after draining" if drain else ""))

    async def _dead_letter(self, route: str, step: str, dl: DeadLetter, variables: dict) -> None:
        m = dl.message
        await asyncio.to_thread(self.state.dead_letter, route, step, dl.error.kind, str(dl.error),
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

    # -- views -----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        deps = {}
        for name, rec in self.deployments.items():
            st = rec.handle.current.stats()
            deps[name] = {"state": st.state, "revision": rec.handle.revision, "replicas": st.replicas,
                          "module": rec.module_digest, "restarts": st.restarts,
                          "rollbacks": rec.handle.rollbacks, **st.totals(), "last_error": st.last_error}
        routes = {}
        for name, rec in self.routes.items():
            s = rec.runner.stats
            routes[name] = {"received": s.received, "delivered": s.delivered, "dead_letters": s.dead_letters,
                            "dropped": s.dropped, "acl_denied": s.acl_denied, "queued": rec.runner.depth(),
                            "p50_ms": round(s.percentile(0.5), 3), "p99_ms": round(s.percentile(0.99), 3),
                            "backlog": sum(getattr(k, "backlog", lambda: 0)() for k in rec.sinks)}
        return {"node": self.config.name, "ready": self.ready, "deployments": deps, "routes": routes,
                "rules": self.rules.status() if self.rules is not None else {},
                "outbox_backlog": self.outbox.backlog(), "manifest_error": self.last_manifest_error}


class _HttpSource:
    """An http source is a path on the node's ingest server."""

    def __init__(self, server: IngestServer, path: str, topic: str, runner: RouteRunner):
        self.server, self.path, self.topic, self.runner = server, path, topic, runner

    async def start(self) -> None:
        self.server.add(self.path, self.topic, self.runner)

    async def stop(self) -> None:
        self.server.remove(self.runner)


def subject_to_topic(subject: str) -> str:
    """Manifests write NATS endpoints as NATS subjects (`in.{device}`, `a.*`, `a.>`); the
    buses speak MQTT-style topics, which NatsBus maps back one-to-one."""
    if "/" in subject:
        return subject  # already topic-style
    return "/".join({"*": "+", ">": "#"}.get(seg, seg) for seg in subject.split("."))
