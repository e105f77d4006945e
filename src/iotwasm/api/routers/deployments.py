"""Deployments: list, describe, delete, scale, suspend, resume, history, rollback and guest logs."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ...errors import IotwasmError
from .. import sse
from ..context import ApiContext
from ..deps import Ctx, Operator, Viewer
from ..guard import GuardedRoute
from ..live import last_error
from ..metrics import subject_of
from ..openapi import errors
from ..policy import PolicyError, QuotaExceeded, admit_manifests, desired
from ..problems import Problem, not_found
from ..security import Principal

router = APIRouter(tags=["deployments"], route_class=GuardedRoute)


class ScaleBody(BaseModel):
    replicas: int = Field(ge=1, le=10_000)


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


@router.get("/v1/deployments", summary="List deployments")
async def list_deployments(ctx: Ctx, who: Viewer) -> list[dict]:
    names = {n for (k, n), m in desired(ctx.node).items()
             if k == "Deployment" and who.may_see(m.metadata.namespace)}
    return [deployment_view(ctx, n) for n in sorted(names)]


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


@router.post("/v1/deployments/{name}/scale", summary="Change the number of replicas",
             responses=errors(409, why_409="not managed through the API"))
async def scale(name: str, body: ScaleBody, ctx: Ctx, who: Operator) -> dict:
    _, m = await ctx.mutable(who, "Deployment", name, "deployment.scale")
    if body.replicas > m.spec.resources.max_instances:
        raise Problem(422, "Invalid request", f"replicas {body.replicas} exceeds resources.maxInstances "
                      f"{m.spec.resources.max_instances}", "validation")
    spec = m.spec.model_copy(update={"replicas": body.replicas, "weights": []})
    return await reapply(ctx, who, m.model_copy(update={"spec": spec}), "deployment.scale",
                         f"replicas {body.replicas}")


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
