"""The API's views of what went through the node: recent dead letters (browsed, and replayed
into their route by an operator) and the latest rows the routes' and rules' store sinks wrote.

Dead letters are read through the node state's accessor, route by route, so a tenant sees
only those of its own routes (and after identities replace names, those of the live route of
that name). A payload is previewed, never interpreted: UTF-8 text as text, anything else as
hex, both cut at `PREVIEW` bytes; the page shows it as text.

Replay: the chosen dead letters of one route go back into that route where they failed — at
the step that refused them, or straight to the sinks when a sink failed — with the topic they
had there. Each is marked replayed (when and by whom) once the route is through with it
(delivered, filtered out, or dead-lettered again: a new dead letter then, replayable on its
own), so it is not replayed twice; while it is in the route a second request skips it. A node
stopping meanwhile leaves it unmarked: replaying it again is possible (at-least-once). A sink's
dead letter goes to every sink of the route again: sinks that had taken it get it twice.
"""

# no `from __future__ import annotations`: FastAPI reads the closures' Annotated[..., Depends(viewer)]
# when the routes are defined

import asyncio
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query
from pydantic import BaseModel, Field

from ..message import Message
from ..messaging.topics import matches
from ..node.manifests import Route, Rule
from ..pipeline.templates import TopicPattern
from ..sqlite import open_db
from .policy import desired
from .security import Principal

#: payload bytes shown in a preview
PREVIEW = 1024
#: how long a replay request waits for its messages to be through before it answers
REPLAY_WAIT_S = 5.0
#: a replay waits this long for room in a full route queue
QUEUE_WAIT_S = 5.0

_ORIGIN = re.compile(r"([^\s:]+):([A-Za-z_][\w.$-]*): (.*)", re.DOTALL)


class ReplayBody(BaseModel):
    ids: list[int] = Field(min_length=1, max_length=100, description="dead letter ids of this route")


def preview(payload: bytes) -> dict:
    """How a payload is shown: `text` when it is UTF-8 without control characters other than
    tab and newlines, else `hex` (space-separated bytes); `truncated` past `PREVIEW` bytes."""
    head = payload[:PREVIEW]
    out: dict[str, Any] = {"size": len(payload), "truncated": len(payload) > PREVIEW}
    text: str | None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        # a multi-byte character cut at the preview's end is still text
        text = head[:e.start].decode("utf-8") if out["truncated"] and e.start >= len(head) - 3 else None
    if text is not None and not any(ord(c) < 32 and c not in "\t\n\r" or ord(c) == 127 for c in text):
        out["text"] = text
    else:
        out["hex"] = head.hex(" ")
    return out


def origin(step: str, error: str) -> tuple[str | None, str]:
    """(function, reason) of a dead letter's error: errors of a module start with
    ``module:function: `` (the module being the step), which the browser shows apart."""
    m = _ORIGIN.fullmatch(error)
    if m and m.group(1) == step:
        return m.group(2), m.group(3)
    if error.startswith(f"{step}: "):
        return None, error[len(step) + 2:]
    return None, error


class ReplayLog:
    """Which dead letters were replayed, when and by whom (in the API's database: the node
    state's dead letters are not changed). Dead letter ids are never reused."""

    SCHEMA = ("CREATE TABLE IF NOT EXISTS dead_letter_replays (id INTEGER PRIMARY KEY, ts REAL NOT NULL, "
              "actor TEXT NOT NULL, route TEXT NOT NULL)")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def _run(self, fn: Callable) -> Any:
        with self._lock:
            db = open_db(self.path, synchronous="FULL", schema=self.SCHEMA, what="dead-letter replays")
            try:
                return fn(db)
            finally:
                db.close()

    def marks(self, ids: list[int]) -> dict[int, dict]:
        if not ids:
            return {}
        rows = self._run(lambda db: db.execute(
            f"SELECT id, ts, actor FROM dead_letter_replays WHERE id IN ({','.join('?' * len(ids))})",
            ids).fetchall())
        return {r[0]: {"ts": r[1], "by": r[2]} for r in rows}

    def mark(self, ids: list[int], actor: str, route: str) -> None:
        now = time.time()

        def write(db) -> None:
            with db:
                db.executemany("INSERT OR IGNORE INTO dead_letter_replays VALUES (?,?,?,?)",
                               [(i, now, actor, route) for i in ids])
        if ids:
            self._run(write)


def entry_point(rec, step: str) -> int | None:
    """The step index a dead letter at `step` re-enters its route at: the step of that
    deployment, after the last step for a sink, the first for a failure of the route itself."""
    steps = list(rec.manifest.spec.steps)
    if step in steps:
        return steps.index(step)
    if step in [s.name for s in rec.sinks]:
        return len(steps)
    if step == "route":
        return 0
    return None


def source_variables(rec, topic: str) -> dict[str, str]:
    """The topic variables the route's source would have captured from `topic` (its ordering
    key and sink templates use them); none for a topic the source pattern does not match."""
    src = rec.manifest.spec.source
    text = {"mqtt": lambda: src.mqtt.topic, "bus": lambda: src.bus.topic, "http": lambda: src.http.topic,
            "sensors": lambda: "devices/{device}/frame"}.get(src.type, lambda: None)()
    if src.type == "nats":
        text = getattr(getattr(rec.source, "pattern", None), "text", None)
    if not text:
        return {}
    pattern = TopicPattern.parse(text)
    return pattern.capture(topic) if matches(pattern.filter, topic) else {}


def install(app: FastAPI, ctx, *, viewer: Callable, operator: Callable, audit: Callable,
            visible: Callable) -> ReplayLog:
    """Add the dead-letter and results routes to `app` with the app's own auth, audit and
    ownership helpers; returns the replay log they keep."""
    from .app import Problem

    node = ctx.node
    replays = ReplayLog(Path(node.config.data_dir) / "api.db")
    in_flight: set[int] = set()
    finishing: set[asyncio.Task] = set()   # replays still in their route after the answer
    router = APIRouter(tags=["data"])

    def routes_of(who: Principal) -> list[str]:
        return sorted(n for (k, n), m in desired(node).items() if k == "Route" and who.may_see(m.metadata.namespace))

    def letter_view(d: dict, marks: dict[int, dict]) -> dict:
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

    @router.get("/v1/dead-letters", summary="Recent dead letters of the routes you may see, newest first")
    async def dead_letters(who: Annotated[Principal, Depends(viewer)], route: str | None = Query(None, max_length=200),
                           step: str | None = Query(None, max_length=200, description="a step's deployment or "
                                                    "a sink's name"),
                           before: int | None = Query(None, ge=1, description="only ids below this (paging)"),
                           limit: int = Query(50, ge=1, le=500)) -> list[dict]:
        if route is not None:
            visible(who, "Route", route)
        names = [route] if route is not None else routes_of(who)

        def read() -> list[dict]:
            rows = [d for n in names for d in node.state.dead_letters(n, limit=limit, step=step, before=before)]
            rows = sorted(rows, key=lambda d: -d["id"])[:limit]
            marks = replays.marks([d["id"] for d in rows])
            return [letter_view(d, marks) for d in rows]
        return await asyncio.to_thread(read)

    @router.post("/v1/routes/{name}/dead-letters/replay", summary="Replay dead letters into their route "
                 "(each once)", responses={409: {"description": "the route is not running"}})
    async def replay(name: str, body: ReplayBody, who: Annotated[Principal, Depends(operator)]) -> dict:
        ns = visible(who, "Route", name)
        rec = node.routes.get(name)
        if rec is None:
            raise Problem(409, "Conflict", f"route {name} is not running", "not-running")
        ids = list(dict.fromkeys(body.ids))
        rows = {d["id"]: d for d in await asyncio.to_thread(node.state.dead_letters, name, len(ids), ids=ids)}
        marks = await asyncio.to_thread(replays.marks, ids)
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
            elif i in in_flight:
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
                in_flight.add(i)
                going.append((i, settled))

        async def through(i: int, fut: asyncio.Future) -> bool:
            try:
                await fut
            except asyncio.CancelledError:   # the route stopped first: not replayed
                return False
            finally:
                in_flight.discard(i)
            await asyncio.to_thread(replays.mark, [i], who.actor, name)
            return True

        tasks = {i: loop.create_task(through(i, fut)) for i, fut in going}
        for t in tasks.values():
            finishing.add(t)
            t.add_done_callback(finishing.discard)
        if tasks:
            await asyncio.wait(tasks.values(), timeout=REPLAY_WAIT_S)
        done = [i for i, t in tasks.items() if t.done() and not t.cancelled() and t.result()]
        queued = [i for i, t in tasks.items() if not t.done()]
        lost = [i for i, t in tasks.items() if t.done() and (t.cancelled() or not t.result())]
        skipped += [{"id": i, "reason": f"route {name} stopped before it was through"} for i in lost]
        audit(who, "route.dead-letters.replay", f"route/{name}",
              f"ids {', '.join(map(str, ids))}: {len(done)} replayed, {len(queued)} in the route, "
              f"{len(skipped)} skipped", tenant=ns)
        return {"route": name, "replayed": done, "queued": queued, "skipped": skipped}

    @router.get("/v1/results", summary="The latest rows the store sinks of your routes and rules wrote")
    async def results(who: Annotated[Principal, Depends(viewer)],
                      limit: int = Query(5, ge=1, le=100)) -> list[dict]:
        wanted: list[tuple[str, str, str, str]] = []   # (kind, name, table, route column)
        for (kind, n), m in sorted(desired(node).items()):
            if not who.may_see(m.metadata.namespace):
                continue
            if isinstance(m, Route):
                wanted += [("route", n, s.store.table, n) for s in m.spec.sinks if s.store is not None]
            elif isinstance(m, Rule):
                wanted += [("rule", n, a.store.table, f"rule:{n}") for a in m.spec.actions if a.store is not None]

        def read() -> list[dict]:
            out = []
            for kind, n, table, column in wanted:
                rows = [r for r in node.store.query(table, limit=limit * 4) if r["route"] == column][:limit]
                out.append({"kind": kind, "name": n, "table": table, "rows": [
                    {"id": r["id"], "topic": r["topic"], "timestamp_ms": r["timestamp_ms"], "payload": r["payload"]}
                    for r in rows]})
            return out
        return await asyncio.to_thread(read)

    app.include_router(router)
    return replays
