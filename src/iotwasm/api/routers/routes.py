"""Routes: list with counters, describe with recent dead letters, delete (drains first)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ...node.traffic import traffic_view
from ..context import ApiContext
from ..deps import Ctx, Operator, Viewer
from ..guard import GuardedRoute
from ..openapi import errors
from ..problems import not_found

router = APIRouter(tags=["routes"], route_class=GuardedRoute)


def route_view(ctx: ApiContext, name: str, full: bool = False) -> dict:
    node = ctx.node
    rec = node.routes.get(name)
    manifest = rec.manifest if rec else node.applied.route(name)
    if manifest is None:
        raise not_found(f"route {name!r} not found")
    out: dict[str, Any] = {"name": name, "namespace": manifest.metadata.namespace,
                           "source": manifest.spec.source.type, "steps": manifest.spec.steps,
                           "sinks": [s.type for s in manifest.spec.sinks],
                           "state": "running" if rec else "pending"}
    problem = next((p.split(": ", 1)[1] for p in node.last_problems if p.startswith(f"Route {name}: ")), None)
    if problem is not None:
        out["problem"] = problem  # why it is not running, or why its last edit was refused
    if rec is not None:
        s = rec.runner.stats
        out.update(received=s.received, delivered=s.delivered, dead_letters=s.dead_letters,
                   dropped=s.dropped, acl_denied=s.acl_denied, queued=rec.runner.depth(),
                   p50_ms=round(s.percentile(0.5), 3), p99_ms=round(s.percentile(0.99), 3),
                   # what lingering gathers (`batch.maxLinger`): messages per call of the steps
                   batches=s.batches,
                   messages_per_batch=round(s.processed / s.batches, 1) if s.batches else None)
        out.update(traffic_view(rec.runner, rec.sinks))   # breakers by sink, splits by step, faults
        out["connectors"] = rec.connectors()
        if rec.runner.storage.error is not None:   # held: the storage cannot take its results
            out["held"] = str(rec.runner.storage.error)
    if full:
        out["manifest"] = manifest.model_dump(mode="json", by_alias=True)
        out["dead_letters_recent"] = [{**d, "payload": d["payload"].decode("utf-8", "replace")}
                                      for d in node.state.dead_letters(name, limit=10)]
    return out


@router.get("/v1/routes", summary="List routes")
async def list_routes(ctx: Ctx, who: Viewer) -> list[dict]:
    return [route_view(ctx, n) for n in ctx.visible_names(who, "Route")]


@router.get("/v1/routes/{name}", summary="Describe a route")
async def get_route(name: str, ctx: Ctx, who: Viewer) -> dict:
    ctx.visible(who, "Route", name)
    return route_view(ctx, name, full=True)


@router.delete("/v1/routes/{name}", summary="Delete a route (drains it first)",
               responses=errors(409, why_409="not managed through the API"))
async def delete_route(name: str, ctx: Ctx, who: Operator) -> dict:
    ns, _ = await ctx.mutable(who, "Route", name, "route.delete")
    ctx.node.applied.delete("Route", name)
    await ctx.node.sync()
    await ctx.record(who, "route.delete", f"route/{name}", tenant=ns)
    return {"deleted": name}
