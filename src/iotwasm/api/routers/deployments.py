"""Deployments: list, describe, delete, scale, suspend, resume, history, rollback, guest logs
and synchronous invocation."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field, model_validator

from ...container import BudgetSpent
from ...errors import ContainerUnavailable, IotwasmError
from ...message import Message
from ...node.invoke import MAX_MESSAGES, Invocation, NotInvocable
from ...node.manifests import ReplicaRange
from .. import sse
from ..context import ApiContext
from ..deps import Ctx, Operator, Viewer
from ..guard import BodyLimit, GuardedRoute
from ..live import last_error
from ..metrics import subject_of
from ..openapi import errors
from ..policy import PolicyError, QuotaExceeded, admit_manifests
from ..problems import Problem, not_found
from ..security import Principal

router = APIRouter(tags=["deployments"], route_class=GuardedRoute)


class ScaleBody(BaseModel):
    replicas: int | None = Field(None, ge=1, le=10_000, description="a fixed number of instances")
    min: int | None = Field(None, ge=0, le=10_000, description="with max: instances on demand, at least this many")
    max: int | None = Field(None, ge=1, le=10_000, description="with min: instances on demand, at most this many")

    @model_validator(mode="after")
    def _one_form(self) -> ScaleBody:
        if (self.replicas is None) == (self.max is None) or (self.replicas is not None and self.min is not None):
            raise ValueError("give replicas (a fixed number) or max with an optional min (a range)")
        if self.max is not None and (self.min or 0) > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


#: an invocation's body: up to MAX_MESSAGES messages, 1 MiB of payload as base64 and some room
MAX_INVOKE_BODY = 2 * 1024 * 1024


class InvokeMessage(BaseModel):
    topic: str | None = Field(None, min_length=1, max_length=1024,
                              description="default: invoke/<deployment> (under the tenant's topic prefix)")
    payload: str | None = Field(None, description="the payload as UTF-8 text")
    payload_b64: str | None = Field(None, description="the payload as base64 (for bytes that are not text)")

    @model_validator(mode="after")
    def _one_payload(self) -> InvokeMessage:
        if self.payload is not None and self.payload_b64 is not None:
            raise ValueError("give payload or payload_b64, not both")
        return self

    def data(self) -> bytes:
        if self.payload_b64 is not None:
            try:
                return base64.b64decode(self.payload_b64, validate=True)
            except (binascii.Error, ValueError) as e:
                raise ValueError(f"payload_b64 is not base64: {e}") from None
        return (self.payload or "").encode()


class InvokeBody(BaseModel):
    messages: list[InvokeMessage] = Field(min_length=1, max_length=MAX_MESSAGES)


class RollbackBody(BaseModel):
    revision: int | None = Field(None, ge=1, description="default: the revision before the serving one")


def deployment_view(ctx: ApiContext, name: str, full: bool = False) -> dict:
    node = ctx.node
    rec = node.deployments.get(name)
    manifest = rec.manifest if rec else node.applied.deployment(name)
    if manifest is None:
        raise not_found(f"deployment {name!r} not found")
    out: dict[str, Any] = {"name": name, "namespace": manifest.metadata.namespace,
                           "source": "file" if node.file_owned("Deployment", name) else "api",
                           "module": manifest.spec.module}
    if rec is None:
        out.update(state="pending", revision=None, replicas=manifest.spec.model_dump(mode="json")["replicas"])
    else:
        st = rec.handle.current.stats()
        out.update(state=st.state, revision=rec.handle.revision, replicas=st.replicas,
                   scaling=scaling_view(st), evictions=st.scaling.evictions,
                   module_digest=rec.module_digest, restarts=st.restarts, rollbacks=rec.handle.rollbacks,
                   last_error=last_error(node, name)[0], **{k: v for k, v in st.totals().items()})
        if full:
            out["instances"] = [i.to_dict() for i in st.instances]
            out["ready_guests"] = rec.handle.current.ready_guests()
    if full:
        out["manifest"] = manifest.model_dump(mode="json", by_alias=True)
        out["events"] = node.state.events(name, limit=20)
    return out


def scaling_view(st) -> dict:
    """Instances on demand: the bounds and what the pool did (`replicas` is how many it holds now)."""
    return {"min": st.min_replicas, "max": st.max_replicas, "prewarm": st.prewarm, **st.scaling.to_dict()}


@router.get("/v1/deployments", summary="List deployments")
async def list_deployments(ctx: Ctx, who: Viewer) -> list[dict]:
    return [deployment_view(ctx, n) for n in ctx.visible_names(who, "Deployment")]


@router.get("/v1/deployments/{name}", summary="Describe a deployment")
async def get_deployment(name: str, ctx: Ctx, who: Viewer) -> dict:
    ctx.visible(who, "Deployment", name)
    return deployment_view(ctx, name, full=True)


@router.delete("/v1/deployments/{name}", summary="Delete a deployment",
               responses=errors(409, why_409="a route or rule uses it, or it is not managed through the API"))
async def delete_deployment(name: str, ctx: Ctx, who: Operator) -> dict:
    node = ctx.node
    ns, _ = await ctx.mutable(who, "Deployment", name, "deployment.delete")
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
    await ctx.record(who, "deployment.delete", f"deployment/{name}", tenant=ns)
    return {"deleted": name}


async def reapply(ctx: ApiContext, who: Principal, m, action: str, detail: str) -> dict:
    node = ctx.node
    try:
        admit_manifests(node, ctx.security, who, [m])
    except (PolicyError, QuotaExceeded) as e:
        await ctx.deny(who, action, f"deployment/{m.name}", e, m.metadata.namespace)
    node.applied.put(m, who.actor)
    problems = await node.sync()
    await ctx.record(who, action, f"deployment/{m.name}", detail, tenant=m.metadata.namespace)
    mine = [p for p in problems if subject_of(p) == ("Deployment", m.name)]
    if mine:
        raise Problem(422, "Refused", mine[0], "apply-failed")
    return deployment_view(ctx, m.name)


@router.post("/v1/deployments/{name}/scale",
             summary="Change the number of replicas: a fixed number, or a range the node scales within",
             responses=errors(409, why_409="not managed through the API"))
async def scale(name: str, body: ScaleBody, ctx: Ctx, who: Operator) -> dict:
    _, m = await ctx.mutable(who, "Deployment", name, "deployment.scale")
    top = body.replicas if body.replicas is not None else body.max
    if top > m.spec.resources.max_instances:
        raise Problem(422, "Invalid request", f"replicas {top} exceeds resources.maxInstances "
                      f"{m.spec.resources.max_instances}", "validation")
    if m.spec.prewarm > top:
        raise Problem(422, "Invalid request", f"replicas {top} is below the deployment's prewarm {m.spec.prewarm}",
                      "validation")
    if body.replicas is not None:
        replicas: Any = body.replicas
        what = f"replicas {body.replicas}"
    else:   # a range keeps its cool-down
        old = m.spec.replicas
        cooldown = old.cooldown if isinstance(old, ReplicaRange) else ReplicaRange.model_fields["cooldown"].default
        replicas = ReplicaRange(min=body.min or 0, max=body.max, cooldown=cooldown)
        what = f"replicas {replicas.min}..{replicas.max}"
    spec = m.spec.model_copy(update={"replicas": replicas, "weights": []})
    return await reapply(ctx, who, m.model_copy(update={"spec": spec}), "deployment.scale", what)


async def _lifecycle(ctx: ApiContext, who: Principal, name: str, verb: str, done: str) -> dict:
    ns = ctx.visible(who, "Deployment", name)
    rec = ctx.node.deployments.get(name)
    if rec is None:
        raise Problem(409, "Conflict", f"deployment {name} is not running", "not-running")
    container = rec.handle.current
    try:
        await asyncio.to_thread(getattr(container, verb), f"{done} by {who.name}")
    except IotwasmError as e:
        raise Problem(409, "Conflict", str(e), "lifecycle") from None
    await ctx.record(who, f"deployment.{verb}", f"deployment/{name}", tenant=ns)
    return deployment_view(ctx, name)


@router.post("/v1/deployments/{name}/suspend",
             summary="Stop taking batches; instances stay warm and messages wait in the route",
             responses=errors(409, why_409="not running, or already suspended"))
async def suspend(name: str, ctx: Ctx, who: Operator) -> dict:
    return await _lifecycle(ctx, who, name, "suspend", "suspended")


@router.post("/v1/deployments/{name}/resume", summary="Resume a suspended deployment",
             responses=errors(409, why_409="not running, or not suspended"))
async def resume(name: str, ctx: Ctx, who: Operator) -> dict:
    return await _lifecycle(ctx, who, name, "resume", "resumed")


@router.get("/v1/deployments/{name}/history", summary="Revision history")
async def history(name: str, ctx: Ctx, who: Viewer) -> list[dict]:
    ctx.visible(who, "Deployment", name)
    return ctx.node.state.history(name)


@router.post("/v1/deployments/{name}/rollback",
             summary="Apply an earlier revision's manifest again (as a new revision)",
             responses=errors(409, why_409="no earlier revision, or not managed through the API"))
async def rollback(name: str, ctx: Ctx, who: Operator, body: RollbackBody | None = None) -> dict:
    node = ctx.node
    await ctx.mutable(who, "Deployment", name, "deployment.rollback")
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
    m = node.revision(name, target)  # bound to the digest that revision ran
    if m is None:
        raise Problem(404, "Not found", f"deployment {name} has no revision {target}", "not-found")
    return await reapply(ctx, who, m, "deployment.rollback", f"to revision {target}")


@router.get("/v1/deployments/{name}/logs",
            summary="Guest log lines (host log calls and WASI stderr); follow=true streams them (SSE)",
            responses={200: {"description": "the lines (a JSON list), or with follow=true a stream of `log` "
                                            "events", "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def logs(name: str, ctx: Ctx, who: Viewer, since: int = Query(0, ge=0),
               limit: int = Query(200, ge=1, le=10_000), follow: bool = False):
    node = ctx.node
    ctx.visible(who, "Deployment", name)
    lines = [ln.to_dict() for ln in node.guest_logs.lines(name, since, limit)]
    if not follow:
        return lines
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue(maxsize=10_000)

    def on_line(line):
        if line.deployment == name:
            loop.call_soon_threadsafe(sse.put, q, line.to_dict())
    node.guest_logs.followers.append(on_line)
    return sse.stream(lines, q, lambda: node.guest_logs.followers.remove(on_line), "log")


def payload_json(payload: bytes) -> dict:
    """A payload as text when it is UTF-8, else as base64: JSON carries every byte either way."""
    try:
        return {"payload": payload.decode()}
    except UnicodeDecodeError:
        return {"payload_b64": base64.b64encode(payload).decode()}


def invocation_view(inv: Invocation) -> dict:
    return {"deployment": inv.deployment, "revision": inv.revision, "elapsed_ms": round(inv.elapsed_ms, 3),
            "outputs": [{"index": o.index, "topic": o.topic, **payload_json(o.payload)} for o in inv.outputs],
            "dead_letters": [{"index": d.index, "topic": d.message.topic, "kind": d.error.kind,
                              "error": str(d.error)} for d in inv.dead_letters]}


@router.post("/v1/deployments/{name}/invoke", dependencies=[Depends(BodyLimit(MAX_INVOKE_BODY))],
             summary="Run messages through a deployment and answer its outputs and dead letters",
             responses=errors(409, 503, why_409="not running (suspended, in error, or not started)",
                              why_503="it has no instance and the node's instance budget is spent with "
                                      "nothing idle to evict; send again"))
async def invoke(name: str, body: InvokeBody, ctx: Ctx, who: Operator) -> dict:
    """The deployment's limits and topic grants apply as in a route: a trap, a limit or a topic
    it may not receive or emit is a dead letter in the answer, not an error of the call. A
    tenant whose topics are confined to a prefix invokes only with topics under it."""
    ns = ctx.visible(who, "Deployment", name)
    tenant = ctx.security.tenant(ns)
    prefix = tenant.topic_prefix if tenant else ""
    messages = []
    for i, m in enumerate(body.messages):
        try:
            data = m.data()
        except ValueError as e:
            raise Problem(422, "Invalid request", f"body.messages[{i}]: {e}", "validation") from None
        topic = m.topic or f"{prefix}invoke/{name}"
        if prefix and not topic.startswith(prefix):
            await ctx.deny(who, "deployment.invoke", f"deployment/{name}", PolicyError(
                f"body.messages[{i}].topic: {topic!r} is outside the topic prefix {prefix!r} of tenant {ns}"), ns)
        messages.append(Message(topic, data))
    try:
        inv = await ctx.node.invocations.invoke(name, messages)
    except BudgetSpent as e:
        raise Problem(503, "Unavailable", str(e), "budget-spent") from None
    except (NotInvocable, ContainerUnavailable) as e:
        raise Problem(409, "Conflict", str(e), "not-running") from None
    ctx.invoked(who, ns, name, len(messages), len(inv.outputs), len(inv.dead_letters))
    return invocation_view(inv)
