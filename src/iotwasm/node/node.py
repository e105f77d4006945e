"""One edge node: desired state (manifests) → running deployments and routes.

A sync loop, like a kubelet's, watches the manifest file or directory: added, changed and
removed manifests are applied without a restart; a manifest that fails validation is reported
(every problem, with file and field path) and the node keeps running what it had. State lives
in SQLite under the data directory. With an MQTT broker, the node publishes a retained status
on ``iotwasm/nodes/{node}/status`` and leaves an MQTT last will that marks it offline if it
dies. Shutdown is graceful: sources stop, queued batches drain, uplink outboxes get a chance
to flush, containers stop.

Storage: the data directory is checked when the node is made — a directory or database that
cannot be written, or a corrupt one, stops it there with one `StorageError` naming the file.
Later, a full disk holds the work that needs it (routes, forwarders, rules) instead of
dropping it; `storage_problems()` says what is held and why (readiness reports it), and
everything goes on by itself once space is back.

Every deployment, route and rule the node reconciles has an identity (a uid, see node/state.py):
its kv data, revisions, dead letters and events are kept under it, so an object deleted and a
name created again never share state. A deployment is bound to a module digest when it is
applied (node/binding.py); a tag that moves later changes nothing that runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..container import InstanceBudget
from ..engine import Runtime
from ..engine.runtime import DEFAULT_MAX_TIMEOUT_MS
from ..errors import IotwasmError, StorageError
from ..messaging.bus import Bus, Will
from ..messaging.transports import open_bus
from ..messaging.worker_bus import WorkerBus
from ..pipeline import LocalStore, Outbox
from ..pipeline.connectors.builtin import subject_to_topic  # noqa: F401 - part of this module's API
from ..registry import ModuleStore
from ..supervise import until_beat
from ..pipeline.http_ingest import IngestServer
from .device_link import DeviceLink
from .devices import DeviceRegistry, Twin
from .invoke import Invocations
from .applied import AppliedManifests
from .binding import ModuleBinding
from .logs import GuestLogs
from .datadir import secure_data_dir
from .reserve import DiskReserve
from .manifests import Deployment, ManifestError, Route, Rule, digest_of_manifest, load_path
from .deployments import DeploymentLifecycle, DeploymentRecord
from .routes import BuildContext, RouteLifecycle, RouteRecord
from .rules import NodeRules
from .state import NodeState
from .views import NodeViews
from .watch import ManifestWatch

log = logging.getLogger("iotwasm.node")

#: after a change in the manifest directory, wait this long for the rest of the write to land
WRITE_SETTLE_S = 0.05
#: how often archived state past `NodeConfig.keep_deleted_s` is looked for besides each reconcile
PURGE_INTERVAL_S = 3600.0


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
    #: how long an http ingest request waits for its route before it is answered 503
    http_ack_timeout_s: float = 10.0
    #: how long the state of a deleted deployment, route or rule (kv data, dead letters,
    #: revisions, events) is kept, archived under its identity, before it is purged
    keep_deleted_s: float = 7 * 86400
    #: the longest one call into a module may run (`iotwasm up --max-timeout`); a deployment
    #: whose resources.timeout asks for more is refused
    max_timeout_ms: float = DEFAULT_MAX_TIMEOUT_MS
    #: a device that sends nothing for this long is flagged silent (docs/devices.md)
    device_silence_s: float = 600.0
    #: the time of devices' last-seen and silence (tests inject a clock they advance)
    device_clock: Callable[[], float] = time.time
    #: the node-wide instance budget (`iotwasm up --max-instances/--max-memory`): beyond it, an
    #: instance needed on demand evicts the least recently used idle one of another deployment
    max_instances: int | None = None
    max_memory: str | None = None
    #: monotonic seconds for the containers' cool-downs and restart backoff (tests inject one)
    clock: Callable[[], float] = time.monotonic


class Node(DeploymentLifecycle, RouteLifecycle, NodeViews):
    def __init__(self, config: NodeConfig):
        self.config = config
        d = Path(config.data_dir)
        try:
            secure_data_dir(d)
            #: disk space kept so that a restart on a full disk still opens its databases
            self.reserve = DiskReserve(d)
            self.reserve.settle()
            self.runtime = Runtime(cache_dir=d / "cache", max_timeout_ms=config.max_timeout_ms)
            self.registry = ModuleStore(d / "modules", runtime=self.runtime)
        except OSError as e:
            raise StorageError("data directory", e.filename or d, e.strerror or str(e)) from None
        from ..engine.limits import parse_size
        self.budget = InstanceBudget(config.max_instances,
                                     parse_size(config.max_memory) if config.max_memory else None)
        self.state = NodeState(d / "node.db")
        self.devices = DeviceRegistry(self.state, silent_after_s=config.device_silence_s, clock=config.device_clock)
        self.device_link = DeviceLink(self.devices, self._device_event)
        self.outbox = Outbox(d / "outbox.db")
        self.store = LocalStore(d / "store.db")
        from ..pipeline.rules import RuleStateStore
        self._rule_state = RuleStateStore(d / "rules.db")
        self.deployments: dict[str, DeploymentRecord] = {}
        self.routes: dict[str, RouteRecord] = {}
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
        self.applied = AppliedManifests(self.state, resolve=self.registry.resolve)
        self.binding = ModuleBinding(self.state, self.registry, self.applied)
        #: (kind, name) → (uid, namespace) of every object of the last reconcile
        self._ids: dict[tuple[str, str], tuple[str, str]] = {}
        self.guest_logs = GuestLogs()
        #: called with (deployment, module digest) before a module is loaded; raises
        #: IotwasmError to refuse it (the API layer's tenant and signature policy)
        self.admission: Callable[[Deployment, str], None] | None = None
        #: problems of the last reconcile (empty = everything desired is running)
        self.last_problems: list[str] = []
        self._sync_lock = asyncio.Lock()
        self._file_owned: set[tuple[str, str]] = set()
        #: wraps every batch of every deployment when set (see DeploymentHandle.trace)
        #: tracing hooks (`api.tracing.enable_tracing`): around each deployment call, each
        #: route batch, and each fleet invocation; None (the default) costs a check each
        self.batch_trace: Callable[..., Any] | None = None
        self.route_trace: Any | None = None    # a pipeline.route.BatchTrace
        self.invoke_trace: Any | None = None
        self.rules: NodeRules | None = None  # created once the bus exists (start)
        #: synchronous calls of deployments (the API's invoke), each on worker threads of its own
        self.invocations = Invocations(self)

    # -- life ------------------------------------------------------------------------------
    async def start(self) -> None:
        will = Will(self.status_topic, json.dumps({"node": self.config.name, "state": "offline",
                                                    "reason": "lost"}).encode(), qos=1, retain=True)
        if self.config.broker and self.config.broker.startswith("mqtt"):
            self.bus = open_bus(self.config.broker, will=will,
                                client_id=f"iotwasm-node-{self.config.name}")
        else:
            self.bus = open_bus(self.config.broker)
        if isinstance(self.bus, WorkerBus):   # a worker without its ingress has no work left
            self.bus.on_lost = self.stop
        try:
            await self.bus.connect(timeout=10)
        except IotwasmError as e:
            # edge autonomy: run anyway; the bus keeps reconnecting and the outbox keeps data
            log.warning("node bus %s not reachable yet (%s); continuing, reconnecting in background",
                        self.config.broker, e)
        self.state.event("node", self.config.name, f"started (bus: {self.config.broker or 'in-process'})")
        await self.device_link.start(self.bus)
        self.rules = NodeRules(self.bus, self.outbox, self.store, self._rule_state, self._processor,
                               lambda kind, name, msg: self._event(kind, name, msg, of="Rule"),
                               build_context=lambda owner, ns: BuildContext(self, owner, ns))
        await self.sync()
        self.ready = True
        if isinstance(self.bus, WorkerBus):
            self.bus.started()
        await self._publish_status("online")

    async def run(self) -> None:
        """Start, then sync until `stop()`; always shuts down gracefully."""
        await self.start()
        last_status = last_purge = time.monotonic()
        reported = self.storage_problems()
        # a change in the manifest directory wakes the loop at once; the interval stays the fallback
        watch = ManifestWatch(self.config.manifests, self._wake) if self.config.manifests else None
        if watch is not None and not watch.start():
            watch = None
        try:
            while not self._stop.is_set():
                try:
                    # on the beat the dashboard's samples and the alerts keep: one wake-up for all
                    await asyncio.wait_for(self._wake.wait(), timeout=until_beat(self.config.sync_interval_s))
                except asyncio.TimeoutError:
                    pass
                if self._stop.is_set():
                    break
                if self._wake.is_set():
                    await asyncio.sleep(WRITE_SETTLE_S)   # an editor's save is several events
                    self._wake.clear()
                await self.sync()
                for rec in list(self.deployments.values()):
                    if rec.handle.current.restart_due_in() == 0:
                        # a restart instantiates (guest init code): never on the loop
                        await asyncio.to_thread(rec.handle.current.tick)
                # instances on demand: idle ones closed after their cool-down, spares made
                if self.instances_need_upkeep():
                    await asyncio.to_thread(self.maintain_instances)
                if self.state.write_error is not None:
                    await asyncio.to_thread(self.state.flush)   # events kept while the disk was full
                if self.reserve.missing:   # released at a start on a full disk, or never made
                    await asyncio.to_thread(self.reserve.restore)
                try:
                    await self.device_link.sweep()
                except StorageError as e:   # flagged at a later turn
                    log.warning("silent devices not flagged: %s", e)
                problems = self.storage_problems()
                if time.monotonic() - last_status > self.config.status_interval_s or problems != reported:
                    last_status, reported = time.monotonic(), problems
                    await self._publish_status("online")
                if time.monotonic() - last_purge > PURGE_INTERVAL_S:   # also when nothing changes
                    last_purge = time.monotonic()
                    await asyncio.to_thread(self._purge_deleted)
        finally:
            if watch is not None:
                watch.stop()
            await self.shutdown()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def shutdown(self) -> None:
        log.info("node %s shutting down: draining routes", self.config.name)
        # stop taking everywhere first, keeping the brokers' sessions: a message given back
        # by one route must not make a bus reconnect for the sake of another still taking
        for rec in self.routes.values():
            rec.source.pause()
        if self.rules is not None:
            await self.rules.stop(self.config.drain_timeout_s)
        self._rule_state.close()
        for rec in self.routes.values():
            await self._stop_source(rec)
        for name in list(self.routes):
            await self._remove_route(name, drain=True, stopping=True)
        self.invocations.close()
        for name in list(self.deployments):
            await asyncio.to_thread(self.deployments.pop(name).handle.stop, "node stopping")
        if self._ingest is not None:
            await self._ingest.stop()
        await self.device_link.stop()
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

    # -- desired state ---------------------------------------------------------------------
    def _stamp(self) -> tuple | None:
        p = self.config.manifests
        if p is None:
            return (("applied", self.applied.generation),)
        files = sorted([*p.glob("*.yaml"), *p.glob("*.yml")]) if p.is_dir() else [p]
        out: list[tuple[str, int | None, int | None]] = []   # None: the file cannot be read
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
            await asyncio.to_thread(self._after_reconcile)
            return problems

    def _after_reconcile(self) -> None:
        try:
            self.state.finish_adoption()   # once, after the first reconcile since an upgrade
        except StorageError as e:   # tried again after the next reconcile
            self._retry_on_storage(e)
            log.warning("archiving state no object adopted postponed: %s", e)
        self._purge_deleted()

    def _purge_deleted(self) -> None:
        try:
            purged = self.state.purge_retired(self.config.keep_deleted_s)
        except StorageError as e:   # housekeeping: tried again at the next interval
            log.warning("purging deleted objects' state postponed: %s", e)
            return
        if purged:
            log.info("purged the archived state of %d deleted object(s)", purged)

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
        # identities first: an object that went away, or whose name moved to another
        # namespace, is retired with its state; one that is new gets a new uid and no state
        try:
            uids, retired = await asyncio.to_thread(
                self.state.reconcile, [(m.kind, m.metadata.namespace, m.name) for m in manifests])
        except StorageError as e:   # nothing changes until identities can be recorded
            self._retry_on_storage(e)
            self._event("failed", "manifests", f"not applied: {e}")
            return [f"manifests not applied: {e}"]
        namespaces: dict[tuple[str, str], str] = {(m.kind, m.name): m.metadata.namespace for m in manifests}
        self._ids = {key: (uid, namespaces[key]) for key, uid in uids.items()}
        # routes that change or go away stop first, so no batch runs on a removed deployment;
        # so do routes through a deployment that goes away (they start again when it returns,
        # over the new one, instead of holding messages for a stopped container)
        gone = {n for n, rec in self.deployments.items() if uids.get(("Deployment", n)) != rec.uid}
        for name in [n for n, rec in self.routes.items() if uids.get(("Route", n)) != rec.uid or
                     gone & set(rec.manifest.spec.deployments())]:
            await self._remove_route(name, drain=True)
        for name in gone:
            rec = self.deployments.pop(name)
            await asyncio.to_thread(rec.handle.stop)
            self.guest_logs.forget(name)
            self._event("removed", name, "deployment removed", uid=rec.uid,
                        namespace=rec.manifest.metadata.namespace)
        for name, d in deps.items():
            try:
                await self._apply_deployment(d, base, uids[("Deployment", name)])
            except IotwasmError as e:
                problems.append(f"Deployment {name}: {e}")
                self._event("failed", name, str(e), of="Deployment")
                self._retry_on_storage(e)
        for name, r in routes.items():
            try:
                if name not in self.routes:
                    await self._start_route(r, uids[("Route", name)])
                elif digest_of_manifest(r) != self.routes[name].digest:
                    await self._replace_route(r)
            except IotwasmError as e:
                problems.append(f"Route {name}: {e}")
                self._event("failed", name, str(e), of="Route")
                self._retry_on_storage(e)
        if self.rules is not None:
            for kind, ns, name, uid in retired:   # a rule's window checkpoints go with it
                if kind == "Rule" and await self.rules.forget(name):
                    self._event("removed", name, "rule removed", uid=uid, namespace=ns)
            problems += await self.rules.apply({m.name: m for m in manifests if isinstance(m, Rule)})
        for p in problems:
            log.error("%s", p)
        return problems

    def _retry_on_storage(self, e: IotwasmError) -> None:
        """A manifest that failed on storage is applied again at the next sync (the disk
        may have room by then), not only when the manifests change."""
        if isinstance(e, StorageError):
            self._manifest_stamp = None

    def _event(self, kind: str, obj: str, message: str, *, of: str | None = None, uid: str | None = None,
               namespace: str | None = None) -> None:
        """An event about object `obj`: of the `of` kind's live object of that name, or of the
        identity given (`uid`, `namespace`); with neither, a node-wide event."""
        if uid is None and of is not None:
            uid, namespace = self._ids.get((of, obj), (None, None))
        log.info("%s %s: %s", obj, kind, message)
        self.state.event(kind, obj, message, uid=uid, namespace=namespace)

    def _device_event(self, kind: str, twin: Twin, message: str) -> None:
        self._event(kind, f"device/{twin.device}", message, uid=twin.uid, namespace=twin.namespace)

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
