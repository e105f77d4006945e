"""A node's deployments: a manifest bound to a module digest becomes a running container, a
changed one an update (health-gated, rolled back on failure) or a scale, and each keeps its
revision history.

`DeploymentLifecycle` is the part of `Node` (a mixin: the state lives on the node, declared
below) that applies Deployment manifests: binding the module, admission, the container with its
capabilities (kv, twins, guest logs), revisions, updates and scaling, and instance upkeep.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..container import InstanceBudget, Transition, WasmContainer
from ..engine import Runtime
from ..engine.limits import format_duration_ms
from ..errors import ConfigError, IotwasmError, StorageError
from ..messaging.acl import TopicACL
from .binding import ModuleBinding
from .deployment import DeploymentHandle
from .devices import DeviceRegistry
from .logs import GuestLogs, printable
from .manifests import Deployment, digest_of_manifest, to_document
from .state import NodeState, SqliteKeyValue

if TYPE_CHECKING:
    from .node import NodeConfig

log = logging.getLogger("iotwasm.node")

#: up to this many deployments the node looks on its loop whether any needs instance upkeep
#: (~2.4 µs a look: a thread hop costs more); beyond, the upkeep thread looks every second
INLINE_UPKEEP = 64


@dataclass
class DeploymentRecord:
    manifest: Deployment
    digest: str            # of the manifest spec
    module_digest: str
    handle: DeploymentHandle
    uid: str


class DeploymentLifecycle:
    """Deployments of a `Node` (a mixin; see the module's doc)."""

    # the node's state these methods use (set in Node.__init__)
    config: NodeConfig
    deployments: dict[str, DeploymentRecord]
    runtime: Runtime
    binding: ModuleBinding
    budget: InstanceBudget
    state: NodeState
    devices: DeviceRegistry
    guest_logs: GuestLogs
    admission: Callable[[Deployment, str], None] | None
    batch_trace: Callable[..., Any] | None

    if TYPE_CHECKING:
        def _event(self, kind: str, obj: str, message: str, *, of: str | None = None,
                   uid: str | None = None, namespace: str | None = None) -> None: ...

    def instances_need_upkeep(self) -> bool:
        """Whether `maintain_instances` has anything to do now. Asked on the event loop, where
        a look costs a few µs per deployment: beyond `INLINE_UPKEEP` deployments it answers yes
        without looking, and the thread that maintains them looks instead (as every second
        before), so that a node with thousands of deployments does not hold its loop."""
        if len(self.deployments) > INLINE_UPKEEP:
            return True
        for rec in list(self.deployments.values()):
            try:
                if rec.handle.current.upkeep_due():
                    return True
            except Exception:   # `maintain_instances` meets it again and logs it
                return True
        return False

    def maintain_instances(self) -> None:
        """Each deployment's instances: close those idle past their cool-down, make missing
        spares (instantiates: call it off the event loop)."""
        for rec in list(self.deployments.values()):
            try:
                rec.handle.current.maintain()
            except Exception:   # one deployment's trouble never stops the others' upkeep
                log.exception("deployment %s: instance upkeep failed", rec.manifest.name)

    def _processor(self, name: str):
        rec = self.deployments.get(name)
        return rec.handle if rec is not None else None

    def _handle_event(self, name: str, uid: str, namespace: str, kind: str, message: str) -> None:
        """Events of a deployment's versions (called from worker threads)."""
        self._event(kind, name, message, uid=uid, namespace=namespace)
        rec = self.deployments.get(name)
        if rec is None or rec.uid != uid:
            return
        try:
            if kind == "rolled-back" and rec.handle.last_rolled_back_revision:
                self.state.set_revision_status(uid, rec.handle.last_rolled_back_revision, "rolled-back", message)
            elif kind == "healthy":
                self.state.promote_revision(uid, rec.handle.revision, message)
        except StorageError as e:   # the revision history lags; the deployment runs on
            log.warning("deployment %s: revision %s not recorded: %s", name, kind, e)

    def revision(self, name: str, revision: int) -> Deployment | None:
        """A revision's manifest, bound to the module digest it ran (for rolling back)."""
        return self.binding.revision(name, revision)

    async def _apply_deployment(self, d: Deployment, base: Path, uid: str) -> None:
        digest = digest_of_manifest(d)
        current = self.deployments.get(d.name)
        running = (current.digest, current.module_digest) if current is not None else None
        module_digest, module_path = await asyncio.to_thread(self.binding.bind, d, uid, digest, base, running)
        if current is not None and current.digest == digest and current.module_digest == module_digest:
            return
        timeout = d.limits().timeout_ms
        if timeout is not None and timeout > self.runtime.max_timeout_ms:
            raise ConfigError(f"resources.timeout {d.spec.resources.timeout} is above this node's "
                              f"maximum of {format_duration_ms(self.runtime.max_timeout_ms)} per call "
                              f"(iotwasm up --max-timeout)")
        if self.admission is not None:
            await asyncio.to_thread(self.admission, d, module_digest)
        if current is not None and self._only_scaled(current.manifest, d) and \
                module_digest == current.module_digest:
            await asyncio.to_thread(current.handle.current.set_scaling, d.spec.scaling())
            current.manifest, current.digest = d, digest
            self._event("scaled", d.name, f"replicas {d.spec.replicas_text()}, prewarm {d.spec.prewarm}",
                        uid=uid, namespace=d.metadata.namespace)
            return
        ns = d.metadata.namespace
        container = self._container(d, module_path, uid, module_digest)
        manifest_json = to_document(d)   # the node's own database keeps secret values
        try:
            await asyncio.to_thread(container.start)
        except IotwasmError as e:
            if current is not None:
                self.state.add_revision(uid, d.name, module_digest, manifest_json, "refused", str(e))
                raise ConfigError(f"update refused, revision {current.handle.revision} keeps "
                                  f"running: {e}") from None
            # a first deployment whose module fails stays in error and restarts by policy;
            # routes through it hold their messages meanwhile
            self._event("error", d.name, str(e), uid=uid, namespace=ns)
        gated = current is not None and d.spec.update_strategy.rollback
        # a node that starts again with the same spec and module goes on with the revision that
        # served before: a restart is not a change
        rev = self.state.serving_revision(uid, module_digest, manifest_json) if current is None else None
        if rev is None:
            rev = self.state.add_revision(uid, d.name, module_digest, manifest_json,
                                          "gating" if gated else "serving")
            if not gated:
                self.state.promote_revision(uid, rev)
        acl = TopicACL(d.spec.capabilities.topics.publish, d.spec.capabilities.topics.subscribe,
                       principal=f"deployment {d.name}")
        if current is None:
            handle = DeploymentHandle(d.name, container, acl, rev,
                                      on_event=functools.partial(self._handle_event, d.name, uid, ns))
            handle.trace = self.batch_trace
            self.deployments[d.name] = DeploymentRecord(d, digest, module_digest, handle, uid)
            self._event("created", d.name, f"revision {rev}, module {module_digest[:19]}, "
                                           f"{d.spec.replicas_text()} replica(s)", uid=uid, namespace=ns)
        else:
            gate = d.spec.update_strategy.health_gate
            handle = current.handle
            handle.acl = acl
            if d.spec.update_strategy.rollback:
                # off the loop: a superseded version still under watch is stopped, which waits
                # for its running batches
                await asyncio.to_thread(handle.update, container, rev, gate.messages, gate.max_trap_rate)
            else:
                old = handle.current
                handle.current, handle.revision = container, rev
                await asyncio.to_thread(old.stop, "replaced")
            current.manifest, current.digest, current.module_digest = d, digest, module_digest

    @staticmethod
    def _only_scaled(old: Deployment, new: Deployment) -> bool:
        a, b = to_document(old), to_document(new)   # a changed secret is not a scale
        for key in ("replicas", "weights", "prewarm"):
            a["spec"].pop(key, None), b["spec"].pop(key, None)
        return a == b

    def _container(self, d: Deployment, module_path: Path, uid: str, module_digest: str) -> WasmContainer:
        caps = d.capabilities()
        restart = d.spec.restart_policy.policy()
        guest_log = logging.getLogger(f"iotwasm.guest.{d.name}")
        name, ns = d.name, d.metadata.namespace

        def on_log(_container: str, level: int, text: str) -> None:
            if self.guest_logs.add(name, level, text):   # False: the rate limit refused the line
                guest_log.log(10 + 10 * max(0, min(level, 3)), "%s", printable(text))

        def on_transition(tr: Transition) -> None:
            self.state.event("state", name, f"{tr.source} → {tr.target}: {tr.reason}", uid=uid, namespace=ns)

        def twin(device: str) -> bytes | None:
            return self._twin_json(ns, device)

        container = WasmContainer(
            d.name, module_path, runtime=self.runtime, limits=d.limits(), capabilities=caps,
            scaling=d.spec.scaling(), budget=self.budget, clock=self.config.clock,
            strategy=d.spec.strategy, weights=d.spec.weights or None,
            restart=restart, kv=SqliteKeyValue(self.state, uid, caps.kv_quota), digest=module_digest,
            on_log=on_log, on_transition=on_transition)
        if caps.allows("twin"):   # linked only when granted; a deployment reads its own namespace's devices
            container.host.twin = twin
        return container

    def _twin_json(self, namespace: str, device: str) -> bytes | None:
        """A device's twin for the `twin` host function (called on the guest's worker thread)."""
        try:
            twin = self.devices.get(namespace, device)
        except StorageError:
            return None
        if twin is None:
            return None
        doc = twin.to_dict()
        doc.pop("namespace")
        return json.dumps(doc, separators=(",", ":")).encode()
