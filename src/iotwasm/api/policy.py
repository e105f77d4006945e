"""Tenant policy: what a principal may publish and apply, and what a node may load.

`module_owner` runs before a pushed module is stored: module names are scoped by namespace
(`acme/filter` is acme's, `filter` the node's), and a tenant publishes under its own only.
`admit_manifests` runs before anything an API caller applies is stored: namespace ownership,
topic confinement, quotas, module references (bound to a digest here) and grants reserved to
administrators.
`LoadPolicy` is installed as the node's admission hook and runs whenever a deployment's module
is about to be loaded, from files or the API alike: if the namespace's tenant requires
signatures, the blob on disk must still hash to its digest and carry a signature by a key the
tenant trusts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from ..engine.limits import parse_size
from ..engine.module import digest_of
from ..errors import ConfigError, IotwasmError
from ..node.manifests import Deployment, Route, Rule
from ..node.node import Node, subject_to_topic
from ..registry import name_namespace
from ..registry.signing import Signature, SignatureError, SignatureStore, load_public, verify_any
from .security import Principal, SecurityStore, Tenant


class PolicyError(ConfigError):
    """A request the caller's role or tenant does not allow."""

    kind = "forbidden"
    status_code = 403
    title = "Forbidden"


class QuotaExceeded(ConfigError):
    """A change that would take a tenant over one of its quotas."""

    kind = "quota"
    status_code = 403
    title = "Quota exceeded"


def _confined(topic: str, prefix: str) -> bool:
    return not prefix or topic.startswith(prefix)


def _topics_of_route(r: Route) -> list[tuple[str, str]]:
    out = []
    src = r.spec.source
    source_ep = src.mqtt or src.bus
    if source_ep is not None:
        out.append(("spec.source topic", source_ep.topic))
    elif src.nats:
        out.append(("spec.source.nats.subject", subject_to_topic(src.nats.subject)))
    elif src.http:
        out.append(("spec.source.http.topic", src.http.topic))
    elif src.sensors:
        out.append(("spec.source.sensors", "devices/{device}/frame"))
    else:
        field = src.modbus or src.opcua or src.coap
        if field is not None:
            out.append((f"spec.source.{src.type}.topic", field.topic))
    for i, s in enumerate(r.spec.sinks):
        sink_ep = s.mqtt or s.bus
        if sink_ep is not None:
            out.append((f"spec.sinks[{i}] topic", sink_ep.topic))
        elif s.nats:
            out.append((f"spec.sinks[{i}].nats.subject", subject_to_topic(s.nats.subject)))
    out.append(("spec.deadLetter", r.spec.dead_letter))
    return out


def _external_endpoints(r: Route) -> list[str]:
    found = []
    for where, ep in [("spec.source", r.spec.source.mqtt or r.spec.source.nats),
                      *[(f"spec.sinks[{i}]", s.mqtt or s.nats) for i, s in enumerate(r.spec.sinks)]]:
        if ep is not None and getattr(ep, "url", None):
            found.append(f"{where}.url")
    found += [f"spec.sinks[{i}].webhook" for i, s in enumerate(r.spec.sinks) if s.webhook]
    # field connectors reach other hosts (PLCs, databases); a plugin may do anything
    found += [f"spec.source.{k}" for k in ("modbus", "opcua", "coap", "connector")
              if getattr(r.spec.source, k) is not None]
    found += [f"spec.sinks[{i}].{k}" for i, s in enumerate(r.spec.sinks) for k in ("postgres", "connector")
              if getattr(s, k) is not None]
    return found


def _is_node_path(node: Node, ref: str) -> bool:
    """Whether the node would read `ref` as a file (it tries paths before registry names)."""
    m = node.config.manifests
    base = m.parent if m and m.is_file() else (m or Path.cwd())
    try:
        return Path(ref).is_absolute() or (base / ref).exists()
    except (OSError, ValueError):
        return True


def module_owner(who: Principal, name: str | None) -> str:
    """The namespace a module `who` pushes as `name` is recorded to belong to: the caller's
    tenant, or for a node-wide token the name's namespace ("" — shared with every tenant —
    for a node name or none). Raises PolicyError when a tenant names a module outside its own
    namespace: adding a version to, or re-pointing a tag of, another namespace's name would
    change what that namespace's deployments run when they are next applied."""
    ns = name_namespace(name) if name else None
    if who.tenant is None:
        return ns or ""
    if ns is not None and ns != who.tenant:
        where = "is in the node's namespace" if ns == "" else f"belongs to namespace {ns!r}"
        raise PolicyError(f"module name {name!r} {where}; tenant {who.tenant} publishes under "
                          f"'{who.tenant}/' (e.g. {who.tenant}/{(name or '').split('/', 1)[-1]})")
    return who.tenant


def may_deploy(who: Principal, owners: set[str]) -> bool:
    """A tenant deploys modules it owns and modules shared with every tenant (owner ""); one
    without any owner came from the node's own manifest files and is the node's alone."""
    return who.tenant is None or who.tenant in owners or "" in owners


def namespace_of(node: Node, kind: str, name: str) -> str | None:
    """The namespace of a deployment or route the node knows (running or applied)."""
    if kind == "Deployment" and name in node.deployments:
        return node.deployments[name].manifest.metadata.namespace
    if kind == "Route" and name in node.routes:
        return node.routes[name].manifest.metadata.namespace
    if kind == "Rule" and node.rules is not None and name in node.rules.manifests:
        return node.rules.manifests[name].metadata.namespace
    m = node.applied.get(kind, name)
    return m.metadata.namespace if m else None


def desired(node: Node) -> dict[tuple[str, str], Deployment | Route | Rule]:
    """Everything the node should run: running objects overlaid with API-applied ones."""
    out: dict[tuple[str, str], Deployment | Route | Rule] = {}
    for n, drec in node.deployments.items():
        out[("Deployment", n)] = drec.manifest
    for n, rrec in node.routes.items():
        out[("Route", n)] = rrec.manifest
    if node.rules is not None:
        for n, r in node.rules.manifests.items():
            out[("Rule", n)] = r
    for m in node.applied.all():
        out[(m.kind, m.name)] = m
    return out


def admit_manifests(node: Node, security: SecurityStore, who: Principal,
                    manifests: list[Deployment | Route | Rule]) -> None:
    """Raise PolicyError / QuotaExceeded / ConfigError naming the first manifest and field
    that the caller may not apply; nothing is stored before this passes."""
    current = desired(node)
    after = dict(current)
    for m in manifests:
        after[(m.kind, m.name)] = m
    for m in manifests:
        label = f"{m.kind} {m.name}"
        ns = m.metadata.namespace
        if not who.may_see(ns):
            raise PolicyError(f"{label}: namespace {ns!r} is not yours (your tenant: {who.tenant})")
        existing = current.get((m.kind, m.name))
        if existing is not None and existing.metadata.namespace != ns:
            raise PolicyError(f"{label}: the name is taken by namespace {existing.metadata.namespace!r}")
        if node.file_owned(m.kind, m.name):
            raise PolicyError(f"{label}: defined in the node's manifest files; change it there")
        tenant = security.tenant(ns)
        prefix = tenant.topic_prefix if tenant else ""
        confined = who.tenant is not None or bool(prefix)
        if isinstance(m, Deployment):
            ref = m.spec.module
            if ref.endswith((".wasm", ".wat")) or _is_node_path(node, ref):
                raise ConfigError(f"{label} spec.module: {ref!r} is a file path; the API takes registry "
                                  "references (name:version or sha256:…); push the module first")
            # bound once, when applied: a manifest read back to be scaled or rolled back keeps
            # the digest it was bound to, whatever the tag says now
            digest = m.bound_module
            if digest is None:
                try:
                    digest = node.registry.resolve(ref)
                except IotwasmError as e:
                    raise ConfigError(f"{label} spec.module: {e}") from None
            owners = security.module_tenants(digest)
            if not may_deploy(who, owners):
                if owners:
                    raise PolicyError(f"{label} spec.module: module {digest[:19]} belongs to another tenant")
                raise PolicyError(f"{label} spec.module: module {digest[:19]} is not shared with tenant "
                                  f"{who.tenant} (a node admin grants it by pushing it as {who.tenant}/<name>, "
                                  "or shares it with every tenant by pushing it under a node name)")
            m.bind_module(digest)
            if m.spec.capabilities.files and not (who.has("admin") and who.tenant is None):
                raise PolicyError(f"{label} spec.capabilities.files: host file grants need a node admin token")
            grant = m.spec.capabilities.http
            if grant is not None and not (who.has("admin") and who.tenant is None):
                private = [p.text for p in grant.grant().patterns
                           if (ip := p.literal_ip()) is not None and not ip.is_global]
                if grant.private_networks or private:
                    what = "privateNetworks" if grant.private_networks else f"allow {private[0]!r}"
                    raise PolicyError(f"{label} spec.capabilities.http: {what}: reaching the node's "
                                      f"private networks needs a node admin token")
            topics = m.spec.capabilities.topics
            for what, items in (("publish", topics.publish), ("subscribe", topics.subscribe)):
                for t in items:
                    if not _confined(t, prefix):
                        raise PolicyError(f"{label} spec.capabilities.topics.{what}: {t!r} is outside the "
                                          f"topic prefix {prefix!r} of tenant {ns}")
        elif isinstance(m, Rule):
            _admit_rule(m, label, ns, prefix, confined, after)
        else:
            for step in m.spec.deployments():
                dep = after.get(("Deployment", step))
                if dep is not None and dep.metadata.namespace != ns:
                    where = "spec.steps" if step in m.spec.steps else "spec.split"
                    raise PolicyError(f"{label} {where}: {step!r} is a deployment of another namespace")
            for where, t in _topics_of_route(m):
                if not _confined(t, prefix):
                    raise PolicyError(f"{label} {where}: {t!r} is outside the topic prefix {prefix!r} "
                                      f"of tenant {ns}")
            http = m.spec.source.http
            if http is not None and confined and not http.path.startswith(f"/{ns}/"):
                raise PolicyError(f"{label} spec.source.http.path: {http.path!r} must start with '/{ns}/' "
                                  "(ingest paths are shared by all tenants of the node)")
            external = _external_endpoints(m)
            if external and confined:
                raise PolicyError(f"{label} {external[0]}: other brokers, webhooks and field connectors need a node admin "
                                  "token and an unconfined namespace")
        if tenant is not None:
            check_quota(tenant, [d for d in after.values()
                                 if isinstance(d, Deployment) and d.metadata.namespace == ns])


def _admit_rule(m: Rule, label: str, ns: str, prefix: str, confined: bool, after: dict) -> None:
    """A rule reads a topic filter, writes topics, may call out and may use deployments: the
    same confinement as a route's source, sinks, webhooks and steps."""
    from ..pipeline.rules import CompiledRule, RuleSpec

    class _Sig:
        def __init__(self, kind: str):
            self.kind = kind
    s = m.spec
    funcs = {f.name: _Sig(f.kind) for f in s.functions}
    topics = [("spec.sql FROM", CompiledRule(RuleSpec(m.name, s.sql, functions=funcs)).filter)]
    external = []
    deployments = [(f"spec.functions[{i}].deployment", f.deployment) for i, f in enumerate(s.functions)]
    for i, a in enumerate(s.actions):
        body = getattr(a, a.type)
        if a.type in ("publish", "command"):
            topics.append((f"spec.actions[{i}].{a.type}.topic", body.topic))
        elif a.type in ("webhook", "sink"):   # a sink action may reach any host (docs/connectors.md)
            external.append(f"spec.actions[{i}].{a.type}")
        elif a.type == "invoke":
            deployments.append((f"spec.actions[{i}].invoke.deployment", body.deployment))
            if body.topic:
                topics.append((f"spec.actions[{i}].invoke.topic", body.topic))
    if s.alert is not None:
        topics.append(("spec.alert.topic", s.alert.topic))
        if s.alert.webhook:
            external.append("spec.alert.webhook")
    for where, dep_name in deployments:
        dep = after.get(("Deployment", dep_name))
        if dep is not None and dep.metadata.namespace != ns:
            raise PolicyError(f"{label} {where}: {dep_name!r} is a deployment of another namespace")
    for where, t in topics:
        if not _confined(t, prefix):
            raise PolicyError(f"{label} {where}: {t!r} is outside the topic prefix {prefix!r} of tenant {ns}")
    if external and confined:
        raise PolicyError(f"{label} {external[0]}: webhooks and sinks need a node admin token and an unconfined "
                          "namespace")


def check_quota(tenant: Tenant, deployments: list[Deployment]) -> None:
    n = len(deployments)
    instances = sum(d.spec.max_replicas for d in deployments)
    memory = sum(d.spec.max_replicas * parse_size(d.spec.resources.memory) for d in deployments)
    if tenant.max_deployments is not None and n > tenant.max_deployments:
        raise QuotaExceeded(f"tenant {tenant.name}: {n} deployments exceed its quota of {tenant.max_deployments}")
    if tenant.max_instances is not None and instances > tenant.max_instances:
        raise QuotaExceeded(f"tenant {tenant.name}: {instances} instances exceed its quota of "
                            f"{tenant.max_instances}")
    if tenant.max_memory is not None and memory > parse_size(tenant.max_memory):
        raise QuotaExceeded(f"tenant {tenant.name}: {memory:,} bytes of memory (replicas × "
                            f"resources.memory) exceed its quota of {tenant.max_memory}")


class Signatures(Protocol):
    """Where check_signed finds a digest's signatures (a SignatureStore, or a view over one)."""

    def for_digest(self, digest: str) -> list[Signature]: ...


def check_signed(security: SecurityStore, signatures: Signatures, namespace: str, digest: str,
                 data: bytes | None = None) -> str | None:
    """If `namespace`'s tenant requires signatures, verify them for `digest` (and that `data`,
    when given, really has that digest); returns the verifying key id, None when not required."""
    tenant = security.tenant(namespace)
    if tenant is None or not tenant.require_signatures:
        return None
    if data is not None and digest_of(data) != digest:
        raise SignatureError(f"module bytes do not match {digest} (modified on disk)")
    trusted = {k: load_public(pem, f"trusted key {k}") for k, pem in security.trusted_keys(namespace).items()}
    if not trusted:
        raise SignatureError(f"tenant {namespace} requires signatures but trusts no key")
    return verify_any(signatures.for_digest(digest), digest, trusted)


class LoadPolicy:
    """The node's admission hook: signatures are checked again at every load."""

    def __init__(self, node: Node, security: SecurityStore, signatures: SignatureStore,
                 on_refused: Callable[[Deployment, str, str], None]):
        self.node, self.security, self.signatures, self.on_refused = node, security, signatures, on_refused

    def __call__(self, d: Deployment, digest: str) -> None:
        ns = d.metadata.namespace
        tenant = self.security.tenant(ns)
        if tenant is None or not tenant.require_signatures:
            return
        try:
            data = self.node.registry.blob_path(digest).read_bytes()
            check_signed(self.security, self.signatures, ns, digest, data)
        except (SignatureError, OSError) as e:
            self.on_refused(d, digest, str(e))
            raise SignatureError(f"module {digest[:19]} refused at load: {e}") from None
