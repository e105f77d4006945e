"""The dashboard's data routes: recent dead letters (browsed, and replayed into their route by
an operator) and the latest rows the routes' and rules' store sinks wrote. What a dead letter
shows and how a replay goes: api/data.py."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query

from ...message import Message
from ...node.manifests import Route, Rule
from ...sqlite import MAX_INTEGER
from ..data import (
    QUEUE_WAIT_S,
    REPLAY_WAIT_S,
    ReplayBody,
    entry_point,
    origin,
    preview,
    source_variables,
)
from ..deps import Ctx, Operator, Viewer
from ..guard import GuardedRoute
from ..openapi import errors
from ..policy import desired
from ..problems import Problem

router = APIRouter(tags=["data"], route_class=GuardedRoute)


def letter_view(ctx, d: dict, marks: dict[int, dict]) -> dict:
    node = ctx.node
    rec = node.routes.get(d["route"])
    dep = node.deployments.get(d["step"])
    function, reason = origin(d["step"], d["error"])
    at = entry_point(rec, d["step"]) if rec is not None else None
    return {"id": d["id"], "ts": d["ts"], "route": d["route"], "step": d["step"], "kind": d["kind"],
            "error": d["error"], "reason": reason, "function": function,
            "module": ({"deployment": d["step"], "ref": dep.manifest.spec.module, "digest": dep.module_digest}
                       if dep is not None else None),
            "topic": d["topic"], "payload": preview(d["payload"]), "replayed": marks.get(d["id"]),
            "replayable": at is not None and d["id"] not in marks}


@router.get("/v1/dead-letters", summary="Recent dead letters of the routes you may see, newest first",
            responses=errors(404, why_404="the route asked for does not exist or is another tenant's"))
async def dead_letters(ctx: Ctx, who: Viewer, route: str | None = Query(None, max_length=200),
                       step: str | None = Query(None, max_length=200, description="a step's deployment or "
                                                "a sink's name"),
                       before: int | None = Query(None, ge=1, le=MAX_INTEGER,
                                                  description="only ids below this (paging)"),
                       limit: int = Query(50, ge=1, le=500)) -> list[dict]:
    if route is not None:
        ctx.visible(who, "Route", route)
    names = [route] if route is not None else ctx.visible_names(who, "Route")

    def read() -> list[dict]:
        rows = [d for n in names for d in ctx.node.state.dead_letters(n, limit=limit, step=step, before=before)]
        rows = sorted(rows, key=lambda d: -d["id"])[:limit]
        marks = ctx.replays.marks([d["id"] for d in rows])
        return [letter_view(ctx, d, marks) for d in rows]
    return await asyncio.to_thread(read)


@router.post("/v1/routes/{name}/dead-letters/replay", summary="Replay dead letters into their route "
             "(each once)", responses=errors(409, why_409="the route is not running"))
async def replay(name: str, body: ReplayBody, ctx: Ctx, who: Operator) -> dict:
    ns = ctx.visible(who, "Route", name)
    node = ctx.node
    rec = node.routes.get(name)
    if rec is None:
        raise Problem(409, "Conflict", f"route {name} is not running", "not-running")
    ids = list(dict.fromkeys(body.ids))
    rows = {d["id"]: d for d in await asyncio.to_thread(node.state.dead_letters, name, len(ids), ids=ids)}
    marks = await asyncio.to_thread(ctx.replays.marks, ids)
    skipped: list[dict] = []
    going: list[tuple[int, asyncio.Future]] = []
    loop = asyncio.get_running_loop()
    for i in ids:
        d = rows.get(i)
        at = entry_point(rec, d["step"]) if d is not None else None
        if d is None:
            skipped.append({"id": i, "reason": f"not a dead letter of route {name}"})
        elif i in marks:
            skipped.append({"id": i, "reason": f"replayed already by {marks[i]['by']}"})
        elif i in ctx.replaying:
            skipped.append({"id": i, "reason": "being replayed"})
        elif at is None:
            skipped.append({"id": i, "reason": f"step {d['step']!r} is no longer part of route {name}"})
        else:
            settled = loop.create_future()
            msg = Message(d["topic"], d["payload"], int(d["ts"] * 1000))
            try:
                await asyncio.wait_for(rec.runner.offer(msg, source_variables(rec, d["topic"]), settled, at),
                                       QUEUE_WAIT_S)
            except TimeoutError:
                skipped.append({"id": i, "reason": f"route {name} queue is full; try again"})
                continue
            ctx.replaying.add(i)
            going.append((i, settled))

    async def through(i: int, fut: asyncio.Future) -> bool:
        try:
            await fut
        except asyncio.CancelledError:   # the route stopped first: not replayed
            return False
        finally:
            ctx.replaying.discard(i)
        await asyncio.to_thread(ctx.replays.mark, [i], who.actor, name)
        return True

    tasks = {i: loop.create_task(through(i, fut)) for i, fut in going}
    for t in tasks.values():
        ctx.replays_finishing.add(t)
        t.add_done_callback(ctx.replays_finishing.discard)
    if tasks:
        await asyncio.wait(tasks.values(), timeout=REPLAY_WAIT_S)
    done = [i for i, t in tasks.items() if t.done() and not t.cancelled() and t.result()]
    queued = [i for i, t in tasks.items() if not t.done()]
    lost = [i for i, t in tasks.items() if t.done() and (t.cancelled() or not t.result())]
    skipped += [{"id": i, "reason": f"route {name} stopped before it was through"} for i in lost]
    await ctx.record(who, "route.dead-letters.replay", f"route/{name}",
                     f"ids {', '.join(map(str, ids))}: {len(done)} replayed, {len(queued)} in the route, "
                     f"{len(skipped)} skipped", tenant=ns)
    return {"route": name, "replayed": done, "queued": queued, "skipped": skipped}


@router.get("/v1/results", summary="The latest rows the store sinks of your routes and rules wrote")
async def results(ctx: Ctx, who: Viewer,
                  limit: int = Query(5, ge=1, le=100)) -> list[dict]:
    wanted: list[tuple[str, str, str, str]] = []   # (kind, name, table, route column)
    for (_kind, n), m in sorted(desired(ctx.node).items()):
        if not who.may_see(m.metadata.namespace):
            continue
        if isinstance(m, Route):
            wanted += [("route", n, s.store.table, n) for s in m.spec.sinks if s.store is not None]
        elif isinstance(m, Rule):
            wanted += [("rule", n, a.store.table, f"rule:{n}") for a in m.spec.actions if a.store is not None]

    def read() -> list[dict]:
        out = []
        for kind, n, table, column in wanted:
            rows = [r for r in ctx.node.store.query(table, limit=limit * 4) if r["route"] == column][:limit]
            out.append({"kind": kind, "name": n, "table": table, "rows": [
                {"id": r["id"], "topic": r["topic"], "timestamp_ms": r["timestamp_ms"], "payload": r["payload"]}
                for r in rows]})
        return out
    return await asyncio.to_thread(read)

