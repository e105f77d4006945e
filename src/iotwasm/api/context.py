"""What every route of the management API works with: the node, the security state, the audit
log and, in a fleet, the node's fleet agent (`ApiContext`), and the checks routes share: who
may see an object, who may change it, and how a refusal is recorded.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from ..node.bounded_yaml import excerpt
from ..node.manifests import Deployment
from ..node.node import Node
from ..registry.signing import SignatureStore
from .alerts import AlertEvaluator, AlertRule, AlertStore
from .audit import AuditLog, DenialThrottle
from .data import ReplayLog
from .live import History
from .metrics import LatencyHistograms
from .policy import LoadPolicy, PolicyError, desired, namespace_of
from .problems import Problem, not_found
from .security import Principal, SecurityStore
from .stream import read_fleet

try:
    __version__ = _dist_version("iotwasm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"


class ApiContext:
    """What the routes need: the node, the security state and, in a fleet, the node's fleet
    agent (for the read-only fleet views; None when the node is not in a fleet)."""

    def __init__(self, node: Node, data_dir: Path, fleet: Any = None):
        self.node = node
        self.fleet = fleet
        self.fleet_timeout_s = 3.0   # a fleet view never waits longer on NATS than this
        self.security = SecurityStore(data_dir / "api.db")
        self.audit = AuditLog(data_dir / "audit.db")
        self.denials = DenialThrottle(self.audit)
        self.signatures = SignatureStore(Path(node.registry.root) / "signatures.db")
        self.requests = 0
        self.denied = 0
        self.histograms = LatencyHistograms()
        self.alert_rules = AlertStore(data_dir / "api.db")
        self.alerts = AlertEvaluator(node, self.alert_rules, on_fire=self._alert_fired)
        self._acl_seen: dict[str, int] = {}
        #: (actor, tenant, deployment) → [invocations, messages, outputs, dead letters] since the last sweep
        self._invoked: dict[tuple[str, str, str], list[int]] = {}
        self.alerts.after_evaluation.append(self._sweep_acl_denials)
        self.alerts.after_evaluation.append(self._sweep_invocations)
        self.alerts.after_evaluation.append(self._sweep_denials)
        node.admission = LoadPolicy(node, self.security, self.signatures, self._refused_at_load)
        node.state.listeners.append(self._node_event)
        # the dashboard's samples (the server starts them), streams and dead-letter replays
        self.live = History(node, fleet=(lambda: read_fleet(self)) if fleet is not None else None)
        self.open_streams = 0
        self.replays = ReplayLog(data_dir / "api.db")
        #: dead letter ids in their route again, and the replays still going after their answer
        self.replaying: set[int] = set()
        self.replays_finishing: set[asyncio.Task] = set()

    # -- what routes share ---------------------------------------------------------------------
    async def record(self, who: Principal, action: str, target: str, detail: str = "", outcome: str = "ok",
                     tenant: str | None = None) -> None:
        """One audit row for a call by `who` (in its tenant unless `tenant` says otherwise), on
        disk when this returns."""
        await self.audit.record(who.actor, action, target, outcome, detail, tenant=tenant or who.tenant)

    async def deny(self, who: Principal, action: str, target: str, e: Exception,
                   tenant: str | None = None) -> NoReturn:
        """Count and audit a refusal, then raise `e` (answered with its own status)."""
        self.denied += 1
        await self.record(who, action, target, str(e), "denied", tenant)
        raise e

    def visible_names(self, who: Principal, kind: str) -> list[str]:
        """The names of the node's objects of `kind` (running or applied) that `who` may see,
        sorted: what a listing shows, filtered by the caller's namespaces in one place."""
        return sorted(n for (k, n), m in desired(self.node).items()
                      if k == kind and who.may_see(m.metadata.namespace))

    def visible(self, who: Principal, kind: str, name: str) -> str:
        """The object's namespace, or 404 when it does not exist or is not the caller's."""
        ns = namespace_of(self.node, kind, name)
        if ns is None or not who.may_see(ns):
            raise not_found(f"no {kind.lower()} {excerpt(name, quote=True)}")
        return ns

    async def mutable(self, who: Principal, kind: str, name: str, action: str) -> tuple[str, Any]:
        """(namespace, applied manifest) of an object `who` may change through the API: 404 when
        not theirs, 403 when the node's files define it, 409 when the API does not manage it."""
        ns = self.visible(who, kind, name)
        if self.node.file_owned(kind, name):
            await self.deny(who, action, f"{kind.lower()}/{name}", PolicyError(
                f"{kind} {name} is defined in the node's manifest files; change it there"), ns)
        m = self.node.applied.get(kind, name)
        if m is None:
            raise Problem(409, "Conflict", f"{kind} {name} is not managed through the API", "not-managed")
        return ns, m

    # -- what the node tells the audit log (written on the log's thread, in order) ------------
    def _sweep_denials(self) -> None:
        if self.denials.sweep_due():   # else no hop to the log's thread for nothing
            self.audit.submit(self.denials.sweep)

    def _sweep_acl_denials(self) -> None:
        """ACL denials happen per message on the hot path; the audit gets one row per route and
        sweep that saw new ones, with the count, instead of one per message."""
        for name, rec in list(self.node.routes.items()):
            n = rec.runner.stats.acl_denied
            before = self._acl_seen.get(name, 0)
            self._acl_seen[name] = n
            if n > before:
                self.audit.submit(self.audit.append, "node", "acl.denied", f"route/{name}", "denied",
                                  f"{n - before} output(s) refused by topic ACLs ({n} in all)",
                                  tenant=rec.manifest.metadata.namespace)

    def invoked(self, who: Principal, tenant: str, deployment: str, messages: int, outputs: int,
                dead: int) -> None:
        """Count an invocation for the audit. Invocations are traffic, like a route's messages:
        an answer waiting for an audit row's fsync would cost more than the module call, so
        they are written as one row per caller and deployment per sweep, with the counts (a
        refused invocation is audited at once, as every refusal is)."""
        c = self._invoked.setdefault((who.actor, tenant, deployment), [0, 0, 0, 0])
        c[0] += 1
        c[1] += messages
        c[2] += outputs
        c[3] += dead

    def _sweep_invocations(self) -> None:
        counts, self._invoked = self._invoked, {}
        for (actor, tenant, name), (n, msgs, outs, dead) in counts.items():
            self.audit.submit(self.audit.append, actor, "deployment.invoke", f"deployment/{name}", "ok",
                              f"{n} invocation(s): {msgs} message(s), {outs} output(s), {dead} dead letter(s)",
                              tenant=tenant)

    def _alert_fired(self, rule: AlertRule, doc: dict) -> None:
        self.audit.submit(self.audit.append, "node", "alert.fired", f"alert/{rule.name}", "event",
                          f"{rule.metric} {doc['value']:.4g} > {rule.above:g}")

    def _refused_at_load(self, d: Deployment, digest: str, reason: str) -> None:
        self.audit.submit(self.audit.append, "node", "module.refused-at-load", f"deployment/{d.name}", "denied",
                          f"{digest}: {reason}", tenant=d.metadata.namespace)

    SECURITY_KINDS: ClassVar[set[str]] = {"error", "rolled-back", "failed", "manifest-error"}

    def _node_event(self, ev: dict) -> None:
        """Security-relevant node events (limits hit, modules failing, bad manifests) are audited."""
        msg = ev["message"]
        if ev["kind"] in self.SECURITY_KINDS or (ev["kind"] == "state" and "→ error" in msg):
            ns = ev.get("namespace") or ""
            self.audit.submit(self.audit.append, "node", f"node.{ev['kind']}", ev["object"], "event", msg, tenant=ns)

    def close(self) -> None:
        if self.node.state.listeners and self._node_event in self.node.state.listeners:
            self.node.state.listeners.remove(self._node_event)
        self.security.close()
        self.alert_rules.close()
        self._sweep_invocations()
        self.audit.submit(self.denials.flush)
        self.audit.close()
        self.signatures.close()
