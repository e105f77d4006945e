"""Node events (state changes, updates, errors): recent ones, or followed as server-sent
events. A tenant token sees the events of its namespace's objects only."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from .. import sse
from ..context import ApiContext
from ..deps import Ctx, Viewer
from ..guard import GuardedRoute
from ..security import Principal

router = APIRouter(tags=["events"], route_class=GuardedRoute)


def event_visible(ctx: ApiContext, who: Principal, ev: dict) -> bool:
    return who.tenant is None or ev.get("namespace") == who.tenant  # the event's object's, when it happened


@router.get("/v1/events", summary="Recent node events (state changes, updates, errors)")
async def events(ctx: Ctx, who: Viewer, limit: int = Query(100, ge=1, le=10_000),
                 object: str | None = Query(None, max_length=200)) -> list[dict]:
    evs = ctx.node.state.events(object, limit=limit)
    return [e for e in evs if event_visible(ctx, who, e)]


@router.get("/v1/events/stream", summary="Node events as server-sent events", response_class=StreamingResponse,
            responses={200: {"description": "a stream of `event` events",
                             "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def event_stream(ctx: Ctx, who: Viewer):
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue(maxsize=10_000)

    def on_event(ev: dict):
        loop.call_soon_threadsafe(sse.put, q, ev)
    ctx.node.state.listeners.append(on_event)
    filtered = sse.Filtered(q, lambda ev: event_visible(ctx, who, ev))
    return sse.stream([], filtered, lambda: ctx.node.state.listeners.remove(on_event), "event")
