"""The dashboard's live feed: one server-sent event stream per open page, and the sample
history it starts from.

``GET /v1/stream`` is read with ``fetch`` (the token stays in the Authorization header, never
in a URL). It carries, in this order: ``hello`` (who you are, the sample interval, whether
fleet views will follow), ``history`` (the kept samples), the latest ``sample``, then each new
``sample`` as it is taken, each node ``event`` as it happens and, for tokens without tenant on
a node in a fleet, a ``fleet`` view every couple of seconds. Everything is cut to what the
token may see: a tenant's stream holds its namespace's routes, deployments, rules and events
only (node-wide numbers — CPU, memory, outbox backlog — are everyone's). The token is checked
again at every sample: a revoked or expired one gets an ``end`` event and the stream closes.

A follower too slow to keep up misses samples (its queue is bounded); the page shows the
gap. At most `MAX_STREAMS` streams are open at once (429 beyond).
"""

# no `from __future__ import annotations`: FastAPI reads the closures' Annotated[..., Depends(viewer)]
# when the routes are defined

import asyncio
import json
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import StreamingResponse

from ..fleet.status import FleetUnavailable, FleetView
from .live import Follower, History
from .security import Principal, TokenExpired

#: open streams per node
MAX_STREAMS = 32
#: items waiting for one slow follower before it misses some
QUEUE = 256
#: a comment line this often keeps proxies from closing a quiet stream
KEEPALIVE_S = 15.0


def sse(kind: str, doc: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n"


async def read_fleet(ctx) -> dict:
    """The fleet as the page shows it (the /v1/fleet views in one document), or why not."""
    agent = ctx.fleet
    try:
        v = await FleetView.read(agent.store, agent.url, ctx.fleet_timeout_s)
    except FleetUnavailable as e:
        return {"error": f"{e}; this node keeps running its last assignment", "url": agent.url,
                "node": agent.id, "connected": False}
    return {"summary": {"url": agent.url, "connected": True, "node": agent.id,
                        "assignment_revision": agent.applied_revision, **v.summary()},
            "nodes": v.node_rows(), "deployments": v.deployment_rows(), "rollouts": v.rollout_records()}


def install(app: FastAPI, ctx, *, viewer: Callable, operator: Callable, audit: Callable, visible: Callable,
            event_visible: Callable[[Principal, dict], bool]) -> None:
    """Add what the dashboard reads and does beyond the resource routes: /v1/stream and
    /v1/history over a `History` of `ctx.node` (kept as ``ctx.live``; the server starts it),
    and the dead-letter and results routes (api/data.py, its replay log kept as ``ctx.replays``)."""
    from .app import Problem
    from .data import install as install_data

    node = ctx.node
    history = ctx.live = History(node, fleet=(lambda: read_fleet(ctx)) if ctx.fleet is not None else None)
    ctx.replays = install_data(app, ctx, viewer=viewer, operator=operator, audit=audit, visible=visible)
    router = APIRouter(tags=["stream"])
    open_streams: list[int] = [0]

    @router.get("/v1/history", summary="The kept samples: rates and latencies per route and deployment, "
                "node CPU, memory and outbox backlog")
    async def samples(who: Annotated[Principal, Depends(viewer)],
                      since: float | None = Query(None, description="only samples taken after this time (s)")) -> dict:
        return {"interval_s": history.interval_s, "keep": history.ring.maxlen, **history.history(who.may_see, since)}

    @router.get("/v1/stream", summary="Live samples, node events and fleet views as server-sent events",
                response_class=StreamingResponse,
                responses={200: {"content": {"text/event-stream": {}}},
                           429: {"description": "too many streams are open"}})
    async def stream(request: Request, who: Annotated[Principal, Depends(viewer)]):
        if open_streams[0] >= MAX_STREAMS:
            raise Problem(429, "Too many streams", f"{MAX_STREAMS} streams are open on this node already; "
                          "close a dashboard tab", "too-many-streams")
        secret = request.headers.get("authorization", "").partition(" ")[2].strip()
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue(maxsize=QUEUE)
        fleet = who.tenant is None and history.in_fleet

        def offer(item: tuple) -> None:
            try:
                q.put_nowait(item)
            except asyncio.QueueFull:
                pass   # a slow reader misses it; the page shows a gap

        def on_event(ev: dict) -> None:   # from any thread
            loop.call_soon_threadsafe(offer, ("event", ev))

        def still_valid() -> str | None:
            try:
                return None if ctx.security.authenticate(secret) is not None else "the token was revoked"
            except TokenExpired as e:
                return str(e)

        async def gen():
            # followed from the first read on: a client gone before that leaves nothing behind
            leave = history.follow(Follower(lambda kind, doc: offer((kind, doc)), fleet=fleet))
            node.state.listeners.append(on_event)
            open_streams[0] += 1
            try:
                yield sse("hello", {"node": node.config.name, "interval_s": history.interval_s,
                                    "keep": history.ring.maxlen, "fleet": fleet,
                                    "you": {"name": who.name, "role": who.role, "tenant": who.tenant}})
                yield sse("history", history.history(who.may_see))
                if history.current is not None:
                    yield sse("sample", History.visible(history.current, who.may_see))
                if fleet and history.fleet_view is not None:
                    yield sse("fleet", history.fleet_view)
                while True:
                    try:
                        kind, doc = await asyncio.wait_for(q.get(), timeout=KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if kind == "event":
                        if not event_visible(who, doc):
                            continue
                    elif kind == "sample":
                        why = still_valid()
                        if why is not None:
                            yield sse("end", {"detail": why})
                            return
                        doc = History.visible(doc, who.may_see)
                    yield sse(kind, doc)
            finally:
                leave()
                if on_event in node.state.listeners:
                    node.state.listeners.remove(on_event)
                open_streams[0] -= 1

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    app.include_router(router)
