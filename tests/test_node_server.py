"""The node's HTTP servers (API and http ingest) sleep between requests: no timer of their own
while idle, a stop wakes them, and the ``Date`` header still states the second of the
response."""

from __future__ import annotations

import asyncio
from email.utils import formatdate

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from iotwasm.pipeline import http_ingest
from iotwasm.pipeline.http_ingest import listening_socket, node_server


async def _ok(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _serving() -> tuple[uvicorn.Server, asyncio.Task, int]:
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = node_server(uvicorn.Config(Starlette(routes=[Route("/", _ok)]), log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), task.exception()
        await asyncio.sleep(0.01)
    return server, task, port


def _timers(loop: asyncio.AbstractEventLoop) -> list:
    return [h for h in loop._scheduled if not h.cancelled()]   # type: ignore[attr-defined]


def test_an_idle_server_holds_no_timer_and_a_stop_wakes_it():
    async def main():
        server, task, port = await _serving()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "ok"
        for _ in range(5):   # let the answered connection's callbacks run out
            await asyncio.sleep(0)
        # uvicorn's own main loop keeps a 0.1 s timer for ever, to look at should_exit
        assert _timers(asyncio.get_running_loop()) == []
        server.should_exit = True
        await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_the_date_header_states_the_second_of_the_response(monkeypatch):
    now = [1_800_000_000.25]
    monkeypatch.setattr(http_ingest, "_wall_clock", lambda: now[0])

    async def main():
        server, task, port = await _serving()
        try:
            async with httpx.AsyncClient() as client:
                first = (await client.get(f"http://127.0.0.1:{port}/")).headers["date"]
                now[0] += 3_600.5   # an hour later, with no request in between
                later = (await client.get(f"http://127.0.0.1:{port}/")).headers["date"]
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)
        assert first == formatdate(1_800_000_000, usegmt=True)
        assert later == formatdate(1_800_003_600, usegmt=True)

    asyncio.run(main())
