"""The node's management API (FastAPI): modules, manifests, deployments, routes, logs, events,
tokens, tenants, audit, metrics and health; in a fleet, read-only views of the fleet (api/fleet.py).

Every route except the two probes (``/healthz``, ``/readyz``) and the dashboard's static files
(``/ui/``, api/dashboard, which hold no data) needs a bearer token with a
sufficient role, and tenant tokens see only their namespace: an object of another namespace is
answered 404, exactly like one that does not exist, so names do not leak across tenants.
Errors are RFC 9457 problem documents (``application/problem+json``) with one clear line in
``detail``. Every mutating call and every denied request goes to the audit log; denials of
requests without a valid token at a bounded rate, with counts of what was left out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, IotwasmError, ModuleNotFound, StorageError
from ..node.manifests import Deployment, ManifestError, parse_documents
from ..node.node import Node
from ..registry.signing import Signature, SignatureError, SignatureStore
from .alerts import METRICS, AlertEvaluator, AlertRule, AlertStore
from .audit import AuditLog, DenialThrottle
from .live import last_error
from .metrics import LatencyHistograms, exposition, readiness
from .policy import (LoadPolicy, PolicyError, QuotaExceeded, admit_manifests, check_signed, desired,
                     namespace_of)
from .security import ROLES, Principal, SecurityStore, Tenant, TokenExpired, expiry_seconds, utc

MAX_MODULE = 64 * 1024 * 1024
MAX_MANIFEST = 1024 * 1024
PROBLEM = "application/problem+json"

try:
    from importlib.metadata import version as _dist_version
    __version__ = _dist_version("iotwasm")
except Exception:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"


class Problem(Exception):
    """An error answered as a problem document."""

    def __init__(self, status: int, title: str, detail: str, kind: str | None = None,
                 extra: dict | None = None):
        self.status, self.title, self.detail = status, title, detail
        self.kind = kind or title.lower().replace(" ", "-")
        self.extra = extra or {}   # extension members (RFC 9457 §3.2)


def problem_response(status: int, title: str, detail: str, kind: str, instance: str = "",
                     extra: dict | None = None) -> JSONResponse:
    body = {"type": f"https://iotwasm.io/problems/{kind}", "title": title, "status": status,
            "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def _error_status(e: IotwasmError) -> tuple[int, str]:
    if isinstance(e, StorageError):   # the node's disk, not the request: try again later
        return 503, "Storage unavailable"
    if isinstance(e, PolicyError):
        return 403, "Forbidden"
    if isinstance(e, QuotaExceeded):
        return 403, "Quota exceeded"
    if isinstance(e, ModuleNotFound):
        return 404, "Not found"
    if isinstance(e, SignatureError):
        return 422, "Signature refused"
    if isinstance(e, ConfigError):
        return 422, "Invalid request"
    return 422, "Refused"


# --- request and response bodies -----------------------------------------------------------

class ScaleBody(BaseModel):
    replicas: int = Field(ge=1, le=10_000)


class RollbackBody(BaseModel):
    revision: int | None = Field(None, ge=1, description="default: the revision before the serving one")


class TokenBody(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: Literal["viewer", "operator", "admin"]
    tenant: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    expires_in: str | None = Field(None, max_length=40, examples=["12h", "30d"],
                                   description="lifetime from now: a number with a unit s, m, h or d, at most "
                                               "3650d; omitted: the token never expires")

    @field_validator("expires_in")
    @classmethod
    def _lifetime(cls, v: str | None) -> str | None:
        if v is not None:
            expiry_seconds(v)
        return v


class TenantBody(BaseModel):
    topic_prefix: str = Field("", max_length=200, description="every topic of the tenant must start with it")
    max_memory: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?\s*([kKMGT]i?|[kKMGT]?B?)?$")
    max_instances: int | None = Field(None, ge=0)
    max_deployments: int | None = Field(None, ge=0)
    require_signatures: bool = False


class KeyBody(BaseModel):
    public_pem: str = Field(min_length=1, max_length=10_000)


class AlertBody(BaseModel):
    metric: Literal[METRICS]  # type: ignore[valid-type]
    above: float = Field(allow_inf_nan=False)
    target: str | None = Field(None, max_length=63, description="route or deployment name")
    cooldown_s: float = Field(300.0, ge=0, le=7 * 86400)
    topic: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^#+]+$")
    webhook: str | None = Field(None, pattern=r"^https?://", max_length=2000)


class Applied(BaseModel):
    kind: str
    name: str
    namespace: str
    action: str


class ApplyResult(BaseModel):
    applied: list[Applied]
    problems: list[str]


# --- the app --------------------------------------------------------------------------------

class ApiContext:
    """What the routes need: the node, the security state and, in a fleet, the node's fleet
    agent (for the read-only fleet views; None when the node is not in a fleet)."""

    def __init__(self, node: Node, data_dir: Path, fleet=None):
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
        self.alerts.after_evaluation.append(self._sweep_acl_denials)
        self.alerts.after_evaluation.append(self.denials.sweep)
        node.admission = LoadPolicy(node, self.security, self.signatures, self._refused_at_load)
        node.state.listeners.append(self._node_event)

    def _sweep_acl_denials(self) -> None:
        """ACL denials happen per message on the hot path; the audit gets one row per route and
        sweep that saw new ones, with the count, instead of one per message."""
        for name, rec in list(self.node.routes.items()):
            n = rec.runner.stats.acl_denied
            before = self._acl_seen.get(name, 0)
            self._acl_seen[name] = n
            if n > before:
                self.audit.append("node", "acl.denied", f"route/{name}", "denied",
                                  f"{n - before} output(s) refused by topic ACLs ({n} in all)",
                                  tenant=rec.manifest.metadata.namespace)

    def _alert_fired(self, rule: AlertRule, doc: dict) -> None:
        self.audit.append("node", "alert.fired", f"alert/{rule.name}", "event",
                          f"{rule.metric} {doc['value']:.4g} > {rule.above:g}")

    def _refused_at_load(self, d: Deployment, digest: str, reason: str) -> None:
        self.audit.append("node", "module.refused-at-load", f"deployment/{d.name}", "denied",
                          f"{digest}: {reason}", tenant=d.metadata.namespace)

    SECURITY_KINDS = {"error", "rolled-back", "failed", "manifest-error"}

    def _node_event(self, ev: dict) -> None:
        """Security-relevant node events (limits hit, modules failing, bad manifests) are audited."""
        msg = ev["message"]
        if ev["kind"] in self.SECURITY_KINDS or (ev["kind"] == "state" and "→ error" in msg):
            ns = namespace_of(self.node, "Deployment", ev["object"]) or ""
            self.audit.append("node", f"node.{ev['kind']}", ev["object"], "event", msg, tenant=ns)

    def close(self) -> None:
        if self.node.state.listeners and self._node_event in self.node.state.listeners:
            self.node.state.listeners.remove(self._node_event)
        self.security.close()
        self.alert_rules.close()
        self.denials.flush()
        self.audit.close()
        self.signatures.close()


def create_app(ctx: ApiContext) -> FastAPI:
    node = ctx.node
    app = FastAPI(title="iotwasm node API", version=__version__,
                  description="Manage one iotwasm node: modules, manifests, deployments, routes, rules, "
                              "logs, events, tokens, tenants and the audit log; in a fleet, read-only fleet "
                              "views. Errors are RFC 9457 problem documents.")
    bearer = HTTPBearer(auto_error=False, description="an API token (iot_…)")

    # -- errors ---------------------------------------------------------------------------
    @app.exception_handler(Problem)
    async def _problem(request: Request, e: Problem):
        return problem_response(e.status, e.title, e.detail, e.kind, request.url.path, e.extra)

    @app.exception_handler(IotwasmError)
    async def _iotwasm(request: Request, e: IotwasmError):
        status, title = _error_status(e)
        return problem_response(status, title, str(e), e.kind, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return problem_response(e.status_code, {404: "Not found", 405: "Method not allowed"}.get(
            e.status_code, "HTTP error"), str(e.detail), f"http-{e.status_code}", request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        detail = f"{where}: {first.get('msg')}" + (f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else "")
        return problem_response(422, "Invalid request", detail, "validation", request.url.path)

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):
        return problem_response(500, "Internal error", f"{type(e).__name__}: {e}", "internal", request.url.path)

    # -- auth -----------------------------------------------------------------------------
    def require(role: str):
        async def dep(request: Request,
                      cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
            ctx.requests += 1
            where = f"{request.method} {request.url.path}"
            # without a valid token, denials are audited at a bounded rate, grouped by route
            route = f"{request.method} {getattr(request.scope.get('route'), 'path', request.url.path)}"
            if cred is None or cred.scheme.lower() != "bearer":
                ctx.denied += 1
                ctx.denials.denied("anonymous", where, "no bearer token", route)
                raise Problem(401, "Unauthorized", "this call needs 'Authorization: Bearer <token>'",
                              "unauthorized")
            try:
                who = ctx.security.authenticate(cred.credentials)
            except TokenExpired as e:
                ctx.denied += 1
                ctx.denials.denied(e.who.actor, where, str(e), route, tenant=e.who.tenant)
                raise Problem(401, "Unauthorized", str(e), "token-expired")
            if who is None:
                ctx.denied += 1
                ctx.denials.denied("anonymous", where, "unknown or revoked token", route)
                raise Problem(401, "Unauthorized", "unknown or revoked token", "unauthorized")
            if not who.has(role):
                ctx.denied += 1
                ctx.audit.append(who.actor, "auth.denied", where, "denied",
                                 f"needs role {role}, token has {who.role}", tenant=who.tenant)
                raise Problem(403, "Forbidden", f"{where} needs role {role}; this token has role {who.role}",
                              "forbidden")
            return who
        return dep

    viewer, operator, admin = require("viewer"), require("operator"), require("admin")

    def audit(who: Principal, action: str, target: str, detail: str = "", outcome: str = "ok",
              tenant: str | None = None) -> None:
        ctx.audit.append(who.actor, action, target, outcome, detail, tenant=tenant or who.tenant)

    def visible(who: Principal, kind: str, name: str) -> str:
        """The object's namespace, or 404 when it does not exist or is not the caller's."""
        ns = namespace_of(node, kind, name)
        if ns is None or not who.may_see(ns):
            raise Problem(404, "Not found", f"no {kind.lower()} {name!r}", "not-found")
        return ns

    def deny(who: Principal, action: str, target: str, e: Exception, tenant: str | None = None):
        ctx.denied += 1
        audit(who, action, target, str(e), "denied", tenant)
        raise e

    # -- probes and node ------------------------------------------------------------------
    @app.get("/healthz", tags=["health"], summary="Liveness: the API answers (no token needed)")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: manifests reconciled and brokers connected",
             responses={503: {"description": "not ready; reasons listed"}})
    async def readyz():
        r = readiness(node)
        return JSONResponse(r, status_code=200 if r["ready"] else 503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse,
             summary="Prometheus metrics (viewer token)")
    async def metrics(who: Principal = Depends(viewer)):
        def api_counters():
            from prometheus_client.core import CounterMetricFamily
            c = CounterMetricFamily("iotwasm_api_requests", "Authenticated API requests seen")
            c.add_metric([], ctx.requests)
            yield c
            c = CounterMetricFamily("iotwasm_api_denied", "API requests and actions refused")
            c.add_metric([], ctx.denied)
            yield c
        # on the loop, not a worker thread: the routes' latency windows are changed by the loop
        text = exposition(node, api_counters, ctx.histograms)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/node", tags=["node"], summary="Node information")
    async def node_info(who: Principal = Depends(viewer)) -> dict:
        snap = node.snapshot()
        return {"name": node.config.name, "version": __version__, "uptime_s": round(time.time() - node.started, 3),
                "bus": node.config.broker or "in-process", "manifests": str(node.config.manifests or ""),
                "readiness": readiness(node), "outbox_backlog": snap["outbox_backlog"],
                "deployments": sum(1 for r in node.deployments.values() if who.may_see(r.manifest.metadata.namespace)),
                "routes": sum(1 for r in node.routes.values() if who.may_see(r.manifest.metadata.namespace)),
                "you": {"token": who.token_id, "name": who.name, "role": who.role, "tenant": who.tenant}}

    # -- modules --------------------------------------------------------------------------
    def module_view(rec, who: Principal) -> dict:
        owners = ctx.security.module_tenants(rec.digest)
        return {"digest": rec.digest, "name": rec.name, "size": rec.size, "abi": rec.abi, "tags": list(rec.tags),
                "added_at": rec.added_at, "signed_by": [s.key_id for s in ctx.signatures.for_digest(rec.digest)],
                "owners": sorted(owners) if who.tenant is None else None,
                "used_by": [n for n, d in node.deployments.items() if d.module_digest == rec.digest
                            and who.may_see(d.manifest.metadata.namespace)]}

    def module_visible(rec, who: Principal) -> bool:
        if who.tenant is None:
            return True
        owners = ctx.security.module_tenants(rec.digest)
        return who.tenant in owners or "" in owners

    def get_module(ref: str, who: Principal):
        try:
            rec = node.registry.get(ref)
        except IotwasmError as e:
            raise Problem(404, "Not found", str(e), "not-found") from None
        if not module_visible(rec, who):
            raise Problem(404, "Not found", f"no module {ref!r} in the module store", "not-found")
        return rec

    @app.post("/v1/modules", tags=["modules"], status_code=201,
              summary="Upload a module (raw wasm body, streamed); optionally tag and sign it",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/wasm": {"schema": {"type": "string", "format": "binary"}}}}})
    async def push_module(request: Request, name: str | None = Query(None, max_length=128),
                          version: str | None = Query(None, max_length=128),
                          force: bool = Query(False, description="re-point an existing name:version"),
                          namespace: str | None = Query(None, description="tenant whose signing policy "
                                                        "applies (default: the token's tenant)"),
                          signature: str | None = Query(None, description="base64url of the .sig document"),
                          who: Principal = Depends(operator)) -> dict:
        ns = namespace if namespace is not None else (who.tenant or "default")
        if not who.may_see(ns):
            deny(who, "module.push", name or "", PolicyError(f"namespace {ns!r} is not yours"))
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=node.registry.root)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_MODULE:
                        raise Problem(413, "Too large", f"module larger than {MAX_MODULE:,} bytes", "too-large")
                    f.write(chunk)
            data = Path(tmp).read_bytes()
        finally:
            Path(tmp).unlink(missing_ok=True)
        if not data:
            raise Problem(422, "Invalid request", "empty body: send the module's bytes", "validation")
        from ..engine.module import digest_of
        digest = digest_of(data)
        sig = None
        if signature:
            try:
                sig = Signature.from_json(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                                          "signature parameter")
            except (ValueError, SignatureError) as e:
                raise Problem(422, "Invalid request", f"signature parameter: {e}", "validation") from None
        try:
            check_signed(ctx.security, _with(ctx.signatures, sig), ns, digest, data)
        except SignatureError as e:
            deny(who, "module.push", digest, e, ns)
        try:
            rec = await asyncio.to_thread(node.registry.add, data, name=name or None, version=version or None,
                                          force=force)
        except IotwasmError as e:
            audit(who, "module.push", digest, str(e), "refused", ns)
            raise
        if sig is not None and sig.digest == digest:
            ctx.signatures.add(sig)
        ctx.security.own_module(rec.digest, who.tenant or "")
        audit(who, "module.push", rec.digest, f"{size} bytes" + (f" as {name}:{version}" if version else ""), tenant=ns)
        return module_view(rec, who)

    @app.get("/v1/modules", tags=["modules"], summary="List modules")
    async def list_modules(who: Principal = Depends(viewer)) -> list[dict]:
        recs = await asyncio.to_thread(node.registry.list)
        return [module_view(r, who) for r in recs if module_visible(r, who)]

    @app.get("/v1/modules/{ref:path}", tags=["modules"], summary="Inspect a module")
    async def inspect_module(ref: str, who: Principal = Depends(viewer)) -> dict:
        rec = get_module(ref, who)
        return {**module_view(rec, who), "info": rec.info.to_dict()}

    @app.delete("/v1/modules/{ref:path}", tags=["modules"], summary="Delete a module no deployment uses")
    async def delete_module(ref: str, who: Principal = Depends(operator)) -> dict:
        rec = get_module(ref, who)
        owners = ctx.security.module_tenants(rec.digest)
        if who.tenant is not None and owners - {who.tenant}:
            deny(who, "module.delete", rec.digest, PolicyError(f"module {rec.digest[:19]} is shared with "
                                                               "other tenants; only a node admin can delete it"))
        users = {name for (kind, name), d in desired(node).items()
                 if kind == "Deployment" and _uses(node, d, rec.digest)}
        users |= {name for name, d in node.deployments.items() if d.module_digest == rec.digest}
        if users:
            raise Problem(409, "Conflict", f"module {rec.digest[:19]} is used by deployment(s) "
                          f"{', '.join(sorted(users))}", "in-use")
        await asyncio.to_thread(node.registry.remove, rec.digest, True)
        ctx.signatures.remove(rec.digest)
        ctx.security.disown_module(rec.digest)
        audit(who, "module.delete", rec.digest)
        return {"deleted": rec.digest}

    # -- manifests ------------------------------------------------------------------------
    @app.post("/v1/apply", tags=["manifests"], summary="Apply manifests (YAML or JSON documents)",
              response_model=ApplyResult,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/yaml": {"schema": {"type": "string"}}}}})
    async def apply(request: Request, who: Principal = Depends(operator)) -> ApplyResult:
        body = await request.body()
        if len(body) > MAX_MANIFEST:
            raise Problem(413, "Too large", f"manifests larger than {MAX_MANIFEST:,} bytes", "too-large")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Problem(422, "Invalid request", "manifests must be UTF-8 text", "validation") from None
        try:
            manifests = parse_documents(text, "request")
        except ManifestError as e:
            raise Problem(422, "Invalid manifest", "; ".join(e.problems), "manifest") from None
        if not manifests:
            raise Problem(422, "Invalid manifest", "no manifest documents in the body", "manifest")
        names = [(m.kind, m.name) for m in manifests]
        if len(set(names)) != len(names):
            raise Problem(422, "Invalid manifest", "a manifest is given twice in one request", "manifest")
        try:
            admit_manifests(node, ctx.security, who, manifests)
        except (PolicyError, QuotaExceeded) as e:
            deny(who, "apply", ", ".join(f"{k}/{n}" for k, n in names), e,
                 manifests[0].metadata.namespace)
        out = []
        for m in manifests:
            old = node.applied.get(m.kind, m.name)
            action = "created" if old is None else ("unchanged" if old == m else "configured")
            node.applied.put(m, who.actor)
            out.append(Applied(kind=m.kind, name=m.name, namespace=m.metadata.namespace, action=action))
            audit(who, "apply", f"{m.kind.lower()}/{m.name}", action, tenant=m.metadata.namespace)
        problems = await node.sync()
        mine = {n for _, n in names}
        problems = [p for p in problems if any(n in p for n in mine)]
        if node.last_manifest_error:
            problems.append("stored, but not reconciled while the node's manifest files are invalid: "
                            + node.last_manifest_error.splitlines()[0])
        return ApplyResult(applied=out, problems=problems)

    # -- deployments ----------------------------------------------------------------------
    def deployment_view(name: str, full: bool = False) -> dict:
        rec = node.deployments.get(name)
        applied = node.applied.get("Deployment", name)
        manifest = rec.manifest if rec else applied
        out: dict[str, Any] = {"name": name, "namespace": manifest.metadata.namespace,
                               "source": "file" if node.file_owned("Deployment", name) else "api",
                               "module": manifest.spec.module}
        if rec is None:
            out.update(state="pending", revision=None, replicas=manifest.spec.replicas)
        else:
            st = rec.handle.current.stats()
            out.update(state=st.state, revision=rec.handle.revision, replicas=st.replicas,
                       module_digest=rec.module_digest, restarts=st.restarts, rollbacks=rec.handle.rollbacks,
                       last_error=last_error(node, name)[0], **{k: v for k, v in st.totals().items()})
            if full:
                out["instances"] = [i.to_dict() for i in st.instances]
        if full:
            out["manifest"] = manifest.model_dump(mode="json", by_alias=True)
            out["events"] = node.state.events(name, limit=20)
        return out

    def mutable(who: Principal, kind: str, name: str, action: str):
        ns = visible(who, kind, name)
        if node.file_owned(kind, name):
            deny(who, action, f"{kind.lower()}/{name}", PolicyError(
                f"{kind} {name} is defined in the node's manifest files; change it there"), ns)
        m = node.applied.get(kind, name)
        if m is None:
            raise Problem(409, "Conflict", f"{kind} {name} is not managed through the API", "not-managed")
        return ns, m

    @app.get("/v1/deployments", tags=["deployments"], summary="List deployments")
    async def list_deployments(who: Principal = Depends(viewer)) -> list[dict]:
        names = {n for (k, n), m in desired(node).items() if k == "Deployment" and who.may_see(m.metadata.namespace)}
        return [deployment_view(n) for n in sorted(names)]

    @app.get("/v1/deployments/{name}", tags=["deployments"], summary="Describe a deployment")
    async def get_deployment(name: str, who: Principal = Depends(viewer)) -> dict:
        visible(who, "Deployment", name)
        return deployment_view(name, full=True)

    @app.delete("/v1/deployments/{name}", tags=["deployments"], summary="Delete a deployment")
    async def delete_deployment(name: str, who: Principal = Depends(operator)) -> dict:
        ns, _ = mutable(who, "Deployment", name, "deployment.delete")
        users = [r for r, rec in node.routes.items() if name in rec.manifest.spec.steps]
        if users:
            raise Problem(409, "Conflict", f"deployment {name} is a step of route(s) {', '.join(users)}; "
                          "delete those first", "in-use")
        from .rules import rules_using
        if rules_using(node, name):
            raise Problem(409, "Conflict", f"deployment {name} is used by rule(s) "
                          f"{', '.join(rules_using(node, name))}; delete those first", "in-use")
        node.applied.delete("Deployment", name)
        await node.sync()
        node.guest_logs.forget(name)
        audit(who, "deployment.delete", f"deployment/{name}", tenant=ns)
        return {"deleted": name}

    async def reapply(who: Principal, m, action: str, detail: str) -> dict:
        try:
            admit_manifests(node, ctx.security, who, [m])
        except (PolicyError, QuotaExceeded) as e:
            deny(who, action, f"deployment/{m.name}", e, m.metadata.namespace)
        node.applied.put(m, who.actor)
        problems = await node.sync()
        audit(who, action, f"deployment/{m.name}", detail, tenant=m.metadata.namespace)
        mine = [p for p in problems if m.name in p]
        if mine:
            raise Problem(422, "Refused", mine[0], "apply-failed")
        return deployment_view(m.name)

    @app.post("/v1/deployments/{name}/scale", tags=["deployments"], summary="Change the number of replicas")
    async def scale(name: str, body: ScaleBody, who: Principal = Depends(operator)) -> dict:
        _, m = mutable(who, "Deployment", name, "deployment.scale")
        if body.replicas > m.spec.resources.max_instances:
            raise Problem(422, "Invalid request", f"replicas {body.replicas} exceeds resources.maxInstances "
                          f"{m.spec.resources.max_instances}", "validation")
        spec = m.spec.model_copy(update={"replicas": body.replicas, "weights": []})
        return await reapply(who, m.model_copy(update={"spec": spec}), "deployment.scale",
                             f"replicas {body.replicas}")

    @app.post("/v1/deployments/{name}/suspend", tags=["deployments"],
              summary="Stop taking batches; instances stay warm and messages wait in the route")
    async def suspend(name: str, who: Principal = Depends(operator)) -> dict:
        ns = visible(who, "Deployment", name)
        rec = node.deployments.get(name)
        if rec is None:
            raise Problem(409, "Conflict", f"deployment {name} is not running", "not-running")
        try:
            await asyncio.to_thread(rec.handle.current.suspend, f"suspended by {who.name}")
        except IotwasmError as e:
            raise Problem(409, "Conflict", str(e), "lifecycle") from None
        audit(who, "deployment.suspend", f"deployment/{name}", tenant=ns)
        return deployment_view(name)

    @app.post("/v1/deployments/{name}/resume", tags=["deployments"], summary="Resume a suspended deployment")
    async def resume(name: str, who: Principal = Depends(operator)) -> dict:
        ns = visible(who, "Deployment", name)
        rec = node.deployments.get(name)
        if rec is None:
            raise Problem(409, "Conflict", f"deployment {name} is not running", "not-running")
        try:
            await asyncio.to_thread(rec.handle.current.resume, f"resumed by {who.name}")
        except IotwasmError as e:
            raise Problem(409, "Conflict", str(e), "lifecycle") from None
        audit(who, "deployment.resume", f"deployment/{name}", tenant=ns)
        return deployment_view(name)

    @app.get("/v1/deployments/{name}/history", tags=["deployments"], summary="Revision history")
    async def history(name: str, who: Principal = Depends(viewer)) -> list[dict]:
        visible(who, "Deployment", name)
        return node.state.history(name)

    @app.post("/v1/deployments/{name}/rollback", tags=["deployments"],
              summary="Apply an earlier revision's manifest again (as a new revision)")
    async def rollback(name: str, body: RollbackBody | None = None, who: Principal = Depends(operator)) -> dict:
        mutable(who, "Deployment", name, "deployment.rollback")
        hist = node.state.history(name)
        rec = node.deployments.get(name)
        target = body.revision if body else None
        if target is None:
            serving = rec.handle.revision if rec else None
            earlier = [h["revision"] for h in hist if serving is None or h["revision"] < serving
                       if h["status"] in ("replaced", "serving")]
            if not earlier:
                raise Problem(409, "Conflict", f"deployment {name} has no earlier revision to roll back to",
                              "no-revision")
            target = earlier[-1]
        text = node.state.revision_manifest(name, target)
        if text is None:
            raise Problem(404, "Not found", f"deployment {name} has no revision {target}", "not-found")
        m = parse_documents(text, f"revision {target}")[0]
        return await reapply(who, m, "deployment.rollback", f"to revision {target}")

    @app.get("/v1/deployments/{name}/logs", tags=["deployments"],
             summary="Guest log lines (host log calls and WASI stderr); follow=true streams them (SSE)")
    async def logs(name: str, since: int = Query(0, ge=0), limit: int = Query(200, ge=1, le=10_000),
                   follow: bool = False, who: Principal = Depends(viewer)):
        visible(who, "Deployment", name)
        lines = [ln.to_dict() for ln in node.guest_logs.lines(name, since, limit)]
        if not follow:
            return lines
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue(maxsize=10_000)

        def on_line(line):
            if line.deployment == name:
                loop.call_soon_threadsafe(_put, q, line.to_dict())
        node.guest_logs.followers.append(on_line)
        return _sse(lines, q, lambda: node.guest_logs.followers.remove(on_line), "log")

    # -- routes ---------------------------------------------------------------------------
    def route_view(name: str, full: bool = False) -> dict:
        rec = node.routes.get(name)
        manifest = rec.manifest if rec else node.applied.get("Route", name)
        out: dict[str, Any] = {"name": name, "namespace": manifest.metadata.namespace,
                               "source": manifest.spec.source.type, "steps": manifest.spec.steps,
                               "sinks": [s.type for s in manifest.spec.sinks],
                               "state": "running" if rec else "pending"}
        if rec is not None:
            s = rec.runner.stats
            out.update(received=s.received, delivered=s.delivered, dead_letters=s.dead_letters,
                       dropped=s.dropped, acl_denied=s.acl_denied, queued=rec.runner.depth(),
                       p50_ms=round(s.percentile(0.5), 3), p99_ms=round(s.percentile(0.99), 3))
            if rec.runner.storage.error is not None:   # held: the storage cannot take its results
                out["held"] = str(rec.runner.storage.error)
        if full:
            out["manifest"] = manifest.model_dump(mode="json", by_alias=True)
            out["dead_letters_recent"] = [{**d, "payload": d["payload"].decode("utf-8", "replace")}
                                          for d in node.state.dead_letters(name, limit=10)]
        return out

    @app.get("/v1/routes", tags=["routes"], summary="List routes")
    async def list_routes(who: Principal = Depends(viewer)) -> list[dict]:
        names = {n for (k, n), m in desired(node).items() if k == "Route" and who.may_see(m.metadata.namespace)}
        return [route_view(n) for n in sorted(names)]

    @app.get("/v1/routes/{name}", tags=["routes"], summary="Describe a route")
    async def get_route(name: str, who: Principal = Depends(viewer)) -> dict:
        visible(who, "Route", name)
        return route_view(name, full=True)

    @app.delete("/v1/routes/{name}", tags=["routes"], summary="Delete a route (drains it first)")
    async def delete_route(name: str, who: Principal = Depends(operator)) -> dict:
        ns, _ = mutable(who, "Route", name, "route.delete")
        node.applied.delete("Route", name)
        await node.sync()
        audit(who, "route.delete", f"route/{name}", tenant=ns)
        return {"deleted": name}

    # -- events ---------------------------------------------------------------------------
    def event_visible(who: Principal, ev: dict) -> bool:
        if who.tenant is None:
            return True
        ns = namespace_of(node, "Deployment", ev["object"]) or namespace_of(node, "Route", ev["object"]) \
            or namespace_of(node, "Rule", ev["object"])
        return ns == who.tenant

    @app.get("/v1/events", tags=["events"], summary="Recent node events (state changes, updates, errors)")
    async def events(limit: int = Query(100, ge=1, le=10_000), object: str | None = Query(None, max_length=200),
                     who: Principal = Depends(viewer)) -> list[dict]:
        evs = node.state.events(object, limit=limit)
        return [e for e in evs if event_visible(who, e)]

    @app.get("/v1/events/stream", tags=["events"], summary="Node events as server-sent events",
             response_class=StreamingResponse)
    async def event_stream(who: Principal = Depends(viewer)):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue(maxsize=10_000)

        def on_event(ev: dict):
            loop.call_soon_threadsafe(_put, q, ev)
        node.state.listeners.append(on_event)
        filtered = _Filtered(q, lambda ev: event_visible(who, ev))
        return _sse([], filtered, lambda: node.state.listeners.remove(on_event), "event")

    # -- tokens, tenants, keys ------------------------------------------------------------
    @app.post("/v1/tokens", tags=["security"], status_code=201,
              summary="Create a token (the secret is shown only in this answer)")
    async def create_token(body: TokenBody, who: Principal = Depends(admin)) -> dict:
        if who.tenant is not None and body.tenant != who.tenant:
            deny(who, "token.create", body.name, PolicyError("a tenant admin creates tokens of its own tenant only"))
        lifetime = expiry_seconds(body.expires_in) if body.expires_in else None
        token_id, secret, expires = ctx.security.create_token(body.name, body.role, body.tenant, lifetime)
        audit(who, "token.create", f"token/{token_id}", f"{body.name} role {body.role} tenant {body.tenant}"
              + (f" expires {utc(expires)}" if expires else ""))
        return {"id": token_id, "token": secret, "name": body.name, "role": body.role, "tenant": body.tenant,
                "expires": expires}

    @app.get("/v1/tokens", tags=["security"], summary="List tokens (never their secrets)")
    async def list_tokens(who: Principal = Depends(admin)) -> list[dict]:
        return [t for t in ctx.security.tokens() if who.tenant is None or t["tenant"] == who.tenant]

    @app.delete("/v1/tokens/{token_id}", tags=["security"], summary="Revoke a token")
    async def revoke_token(token_id: str, who: Principal = Depends(admin)) -> dict:
        tok = next((t for t in ctx.security.tokens() if t["id"] == token_id), None)
        if tok is None or (who.tenant is not None and tok["tenant"] != who.tenant) or tok["revoked"]:
            raise Problem(404, "Not found", f"no active token {token_id!r}", "not-found")
        ctx.security.revoke(token_id)
        audit(who, "token.revoke", f"token/{token_id}")
        return {"revoked": token_id}

    def node_admin(who: Principal, action: str, target: str) -> None:
        if who.tenant is not None:
            deny(who, action, target, PolicyError("tenants are managed by a node admin (token without tenant)"))

    @app.get("/v1/tenants", tags=["security"], summary="List tenants")
    async def list_tenants(who: Principal = Depends(viewer)) -> list[dict]:
        return [t.to_dict() for t in ctx.security.tenants() if who.may_see(t.name)]

    @app.get("/v1/tenants/{name}", tags=["security"], summary="Show a tenant")
    async def get_tenant(name: str, who: Principal = Depends(viewer)) -> dict:
        t = ctx.security.tenant(name)
        if t is None or not who.may_see(name):
            raise Problem(404, "Not found", f"no tenant {name!r}", "not-found")
        return t.to_dict()

    @app.put("/v1/tenants/{name}", tags=["security"], summary="Create or change a tenant (node admin)")
    async def put_tenant(name: str, body: TenantBody, who: Principal = Depends(admin)) -> dict:
        node_admin(who, "tenant.put", f"tenant/{name}")
        from ..node.manifests import NAME
        if not NAME.match(name):
            raise Problem(422, "Invalid request", f"tenant name {name!r} must be a namespace name "
                          "(lowercase letters, digits, '-')", "validation")
        t = Tenant(name=name, **body.model_dump())
        ctx.security.put_tenant(t)
        audit(who, "tenant.put", f"tenant/{name}", json.dumps(body.model_dump()), tenant=name)
        return ctx.security.tenant(name).to_dict()

    @app.delete("/v1/tenants/{name}", tags=["security"], summary="Delete a tenant's policy (node admin)")
    async def delete_tenant(name: str, who: Principal = Depends(admin)) -> dict:
        node_admin(who, "tenant.delete", f"tenant/{name}")
        if not ctx.security.delete_tenant(name):
            raise Problem(404, "Not found", f"no tenant {name!r}", "not-found")
        audit(who, "tenant.delete", f"tenant/{name}", tenant=name)
        return {"deleted": name}

    @app.post("/v1/tenants/{name}/keys", tags=["security"], status_code=201,
              summary="Trust a public key for a tenant's modules (node admin)")
    async def trust_key(name: str, body: KeyBody, who: Principal = Depends(admin)) -> dict:
        node_admin(who, "key.trust", f"tenant/{name}")
        from ..registry.signing import key_id, load_public
        try:
            kid = key_id(load_public(body.public_pem))
        except SignatureError as e:
            raise Problem(422, "Invalid request", str(e), "validation") from None
        ctx.security.trust(name, kid, body.public_pem)
        audit(who, "key.trust", f"tenant/{name}", f"key {kid}", tenant=name)
        return {"tenant": name, "key_id": kid}

    @app.delete("/v1/tenants/{name}/keys/{key_id}", tags=["security"], summary="Stop trusting a key (node admin)")
    async def distrust_key(name: str, key_id: str, who: Principal = Depends(admin)) -> dict:
        node_admin(who, "key.distrust", f"tenant/{name}")
        if not ctx.security.distrust(name, key_id):
            raise Problem(404, "Not found", f"tenant {name!r} does not trust key {key_id!r}", "not-found")
        audit(who, "key.distrust", f"tenant/{name}", f"key {key_id}", tenant=name)
        return {"tenant": name, "distrusted": key_id}

    # -- alerts ---------------------------------------------------------------------------
    def alert_view(r: AlertRule) -> dict:
        state = ctx.alerts._state.get(r.name)
        return {**r.config(), "fired": state.fired if state else 0,
                "last_fired": state.last_fired if state else None}

    @app.get("/v1/alerts", tags=["alerts"], summary="Threshold alert rules and how often they fired")
    async def list_alerts(who: Principal = Depends(viewer)) -> list[dict]:
        rules = ctx.alert_rules.all()
        if who.tenant is not None:
            rules = [r for r in rules if r.target and (namespace_of(node, "Route", r.target) == who.tenant
                                                       or namespace_of(node, "Deployment", r.target) == who.tenant)]
        return [alert_view(r) for r in rules]

    @app.put("/v1/alerts/{name}", tags=["alerts"], summary="Create or change an alert rule (operator without tenant)")
    async def put_alert(name: str, body: AlertBody, who: Principal = Depends(operator)) -> dict:
        if who.tenant is not None:
            deny(who, "alert.put", f"alert/{name}", PolicyError("alert rules are set by node operators "
                                                                "(tokens without tenant)"))
        from ..node.manifests import NAME
        if not NAME.match(name):
            raise Problem(422, "Invalid request", f"alert name {name!r}: lowercase letters, digits and '-'",
                          "validation")
        if body.metric != "outbox_backlog" and not body.target:
            raise Problem(422, "Invalid request", f"metric {body.metric} needs a target", "validation")
        if not body.topic and not body.webhook:
            raise Problem(422, "Invalid request", "an alert needs a topic, a webhook or both", "validation")
        rule = AlertRule(name=name, **body.model_dump())
        ctx.alert_rules.put(rule)
        audit(who, "alert.put", f"alert/{name}", json.dumps(rule.config()))
        return alert_view(rule)

    @app.delete("/v1/alerts/{name}", tags=["alerts"], summary="Delete an alert rule (operator without tenant)")
    async def delete_alert(name: str, who: Principal = Depends(operator)) -> dict:
        if who.tenant is not None:
            deny(who, "alert.delete", f"alert/{name}", PolicyError("alert rules are set by node operators "
                                                                   "(tokens without tenant)"))
        if not ctx.alert_rules.delete(name):
            raise Problem(404, "Not found", f"no alert rule {name!r}", "not-found")
        audit(who, "alert.delete", f"alert/{name}")
        return {"deleted": name}

    # -- audit ----------------------------------------------------------------------------
    @app.get("/v1/audit", tags=["audit"], summary="Query the audit log (newest first)")
    async def audit_query(since: float | None = None, until: float | None = None,
                          actor: str | None = Query(None, max_length=200),
                          tenant: str | None = Query(None, max_length=63),
                          action: str | None = Query(None, max_length=100),
                          limit: int = Query(100, ge=1, le=10_000), who: Principal = Depends(admin)) -> list[dict]:
        if who.tenant is not None:
            tenant = who.tenant
        return ctx.audit.query(since, until, actor, tenant, action, limit)

    from .rules import install as _install_rules
    _install_rules(app, node, viewer=viewer, operator=operator, audit=audit, visible=visible, mutable=mutable)

    from .fleet import install as _install_fleet
    _install_fleet(app, ctx, viewer=viewer, operator=operator, deny=deny, audit=audit)

    @app.get("/v1/audit/verify", tags=["audit"], summary="Verify the audit log's hash chain")
    async def audit_verify(who: Principal = Depends(admin)) -> dict:
        return await asyncio.to_thread(ctx.audit.verify)

    from .stream import install as _install_stream   # the dashboard's stream, history, dead letters
    _install_stream(app, ctx, viewer=viewer, operator=operator, audit=audit, visible=visible,
                    event_visible=event_visible)

    from .dashboard import install as _install_dashboard
    _install_dashboard(app)

    return app


# --- helpers --------------------------------------------------------------------------------

def _uses(node: Node, d: Deployment, digest: str) -> bool:
    try:
        return node.registry.resolve(d.spec.module) == digest
    except IotwasmError:
        return False


class _with:
    """A signature store view that also offers one signature not stored yet (the upload's)."""

    def __init__(self, store: SignatureStore, extra: Signature | None):
        self.store, self.extra = store, extra

    def for_digest(self, digest: str) -> list[Signature]:
        return [*([self.extra] if self.extra else []), *self.store.for_digest(digest)]


def _put(q: asyncio.Queue, item) -> None:
    try:
        q.put_nowait(item)
    except asyncio.QueueFull:
        pass  # a follower too slow to keep up misses lines; the ring still has them


class _Filtered:
    def __init__(self, q: asyncio.Queue, keep):
        self.q, self.keep = q, keep

    async def get(self):
        while True:
            item = await self.q.get()
            if self.keep(item):
                return item


def _sse(initial: list[dict], q, cleanup, event: str) -> StreamingResponse:
    async def gen():
        try:
            for item in initial:
                yield f"event: {event}\ndata: {json.dumps(item)}\n\n"
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), timeout=15)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: {event}\ndata: {json.dumps(item)}\n\n"
        finally:
            try:
                cleanup()
            except ValueError:
                pass
    return StreamingResponse(gen(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


__all__ = ["ApiContext", "Problem", "ROLES", "create_app"]
