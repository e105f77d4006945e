"""The dashboard's live feed: ``GET /v1/stream`` (server-sent events) and ``GET /v1/history``
(the kept samples it starts from). What the stream carries, in which order and for whom:
api/stream.py."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from ..deps import Ctx, Viewer
from ..guard import GuardedRoute
from ..live import Follower, History
from ..problems import Problem
from ..security import TokenExpired
from ..stream import KEEPALIVE_S, MAX_STREAMS, QUEUE, sse
from .events import event_visible

router = APIRouter(tags=["stream"], route_class=GuardedRoute)


@router.get("/v1/history", summary="The kept samples: rates and latencies per route and deployment, "
            "node CPU, memory and outbox backlog")
async def samples(ctx: Ctx, who: Viewer,
                  since: float | None = Query(None, description="only samples taken after this time (s)")) -> dict:
    history = ctx.live
    return {"interval_s": history.interval_s, "keep": history.ring.maxlen, **history.history(who.may_see, since)}


@router.get("/v1/stream", summary="Live samples, node events and fleet views as server-sent events",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}},
                       429: {"description": "too many streams are open"}})
async def stream(request: Request, ctx: Ctx, who: Viewer):
    node, history = ctx.node, ctx.live
    if ctx.open_streams >= MAX_STREAMS:
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
        ctx.open_streams += 1
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
                    if not event_visible(ctx, who, doc):
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
            ctx.open_streams -= 1

    return StreamingResponse(gen(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

