"""Probes, metrics and the node's own description: ``/healthz``, ``/readyz`` (no token),
``/metrics`` and ``/v1/node``."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from ..context import __version__
from ..deps import Ctx, MaybeCaller, Viewer
from ..guard import GuardedRoute
from ..metrics import exposition, readiness

READINESS = {"type": "object", "required": ["ready", "reasons"],
             "properties": {"ready": {"type": "boolean"}, "reasons": {"type": "array", "items": {"type": "string"}}}}

router = APIRouter(route_class=GuardedRoute)


@router.get("/healthz", tags=["health"], summary="Liveness: the API answers (no token needed)")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="Readiness: manifests reconciled and brokers connected",
            description="No token needed. Without one the reasons are generic (`manifest problems`, "
                        "`bus not connected`, …); a token without tenant gets them in full, a tenant token "
                        "those about its own namespace.",
            responses={200: {"content": {"application/json": {"schema": READINESS}}},
                       503: {"description": "not ready; reasons listed", "content": {"application/json": {
                           "schema": READINESS}}}})
async def readyz(ctx: Ctx, who: MaybeCaller):
    r = readiness(ctx.node, who, anonymous=who is None)
    return JSONResponse(r, status_code=200 if r["ready"] else 503)


@router.get("/metrics", tags=["health"], response_class=PlainTextResponse,
            summary="Prometheus metrics (viewer token)")
async def metrics(ctx: Ctx, who: Viewer):
    def api_counters():
        from prometheus_client.core import CounterMetricFamily
        c = CounterMetricFamily("iotwasm_api_requests", "Authenticated API requests seen")
        c.add_metric([], ctx.requests)
        yield c
        c = CounterMetricFamily("iotwasm_api_denied", "API requests and actions refused")
        c.add_metric([], ctx.denied)
        yield c
    # on the loop, not a worker thread: the routes' latency windows are changed by the loop
    text = exposition(ctx.node, api_counters, ctx.histograms, who)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@router.get("/v1/node", tags=["node"], summary="Node information")
async def node_info(ctx: Ctx, who: Viewer) -> dict:
    node = ctx.node
    snap = node.snapshot()
    everything = who.tenant is None   # the node's files and backlog are every tenant's together
    return {"name": node.config.name, "version": __version__, "uptime_s": round(time.time() - node.started, 3),
            "bus": node.config.broker or "in-process",
            "manifests": str(node.config.manifests or "") if everything else None,
            "readiness": readiness(node, who), "outbox_backlog": snap["outbox_backlog"] if everything else None,
            "deployments": sum(1 for r in node.deployments.values() if who.may_see(r.manifest.metadata.namespace)),
            "routes": sum(1 for r in node.routes.values() if who.may_see(r.manifest.metadata.namespace)),
            "you": {"token": who.token_id, "name": who.name, "role": who.role, "tenant": who.tenant}}
