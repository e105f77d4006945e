"""HTTP ingest: devices that speak HTTP POST their readings to the node.

One server per node (Starlette on uvicorn) serves every route with an ``http`` source, each on
its own path. A POST body is one message, or a JSON array of messages when the request says
``Content-Type: application/json`` and the body is an array. The topic comes from the route's
topic template filled with the query parameters (``/ingest?device=d7`` with topic
``http/{device}``). The server answers 202 once the messages are queued in the route (so a
full queue with the ``block`` policy slows the client down instead of dropping data), 400 for
a body it cannot use, 404 for an unknown path, 413 above the size limit.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import ConfigError
from ..message import Message
from .route import RouteRunner
from .templates import TopicTemplate

log = logging.getLogger("iotwasm.http")

MAX_BODY = 1024 * 1024


class IngestServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 8181):
        self.host = host
        self.port = port
        self._paths: dict[str, tuple[RouteRunner, TopicTemplate]] = {}
        self._server = None
        self._task: asyncio.Task | None = None
        self.accepted = 0
        self.rejected = 0

    def add(self, path: str, topic: str, runner: RouteRunner) -> None:
        if not path.startswith("/"):
            raise ConfigError(f"http source path {path!r} must start with '/'")
        if path in self._paths and self._paths[path][0] is not runner:
            raise ConfigError(f"http source path {path} is already served by route {self._paths[path][0].name}")
        self._paths[path] = (runner, TopicTemplate(topic))

    def remove(self, runner: RouteRunner) -> None:
        for p in [p for p, (r, _) in self._paths.items() if r is runner]:
            del self._paths[p]

    async def _ingest(self, request: Request) -> JSONResponse:
        entry = self._paths.get(request.url.path)
        if entry is None:
            return JSONResponse({"error": f"no route ingests {request.url.path}"}, status_code=404)
        runner, template = entry
        body = await request.body()
        if len(body) > MAX_BODY:
            self.rejected += 1
            return JSONResponse({"error": f"body of {len(body)} bytes is over {MAX_BODY}"}, status_code=413)
        variables = dict(request.query_params)
        try:
            topic = template.fill(variables)
        except KeyError as e:
            self.rejected += 1
            return JSONResponse({"error": str(e.args[0])}, status_code=400)
        payloads = [body]
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                doc = json.loads(body)
            except ValueError as e:
                self.rejected += 1
                return JSONResponse({"error": f"body is not JSON: {e}"}, status_code=400)
            if isinstance(doc, list):
                payloads = [json.dumps(item, separators=(",", ":")).encode() for item in doc]
        for p in payloads:
            await runner.offer(Message(topic, p), variables)
        self.accepted += len(payloads)
        return JSONResponse({"accepted": len(payloads)}, status_code=202)

    async def start(self) -> None:
        import uvicorn

        app = Starlette(routes=[Route("/{path:path}", self._ingest, methods=["POST"])])
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # the node owns the signals
        self._task = asyncio.get_running_loop().create_task(self._server.serve(), name="http-ingest")
        for _ in range(200):
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            exc = self._task.exception()
            raise ConfigError(f"http ingest cannot listen on {self.host}:{self.port}: {exc}")
        log.info("http ingest listening on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError, SystemExit):
                pass
