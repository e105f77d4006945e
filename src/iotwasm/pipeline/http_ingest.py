"""HTTP ingest: devices that speak HTTP POST their readings to the node.

One server per node (Starlette on uvicorn) serves every route with an ``http`` source, each on
its own path. A POST body is one message, or a JSON array of messages when the request says
``Content-Type: application/json`` and the body is an array. The topic comes from the route's
topic template filled with the query parameters (``/ingest?device=d7`` with topic
``http/{device}``).

The answer is the acknowledgement, as a PUBACK is for MQTT: 202 once the route is through
with the messages (results stored, in the outbox, or confirmed by the uplink; or
dead-lettered), so a client that gets no 202 sends again and nothing it was told is safe can
be lost (at-least-once). A full queue with the ``block`` policy slows the client down instead
of dropping data; a node stopping answers 503 for what it did not process, and so does a route
that is not through with a request within `ack_timeout_s` (a step unavailable, a sink holding
for a full disk): the messages may still go through, so a client that sends again may cause a
duplicate, never a loss. 400 for a body it
cannot use, 404 for an unknown path, 413 for a body over `MAX_BODY` — checked against the
declared length and again while the body streams in, so an oversized body is never read
whole.

The server binds its socket itself: uvicorn answers a port in use with ``sys.exit()``, and a
SystemExit raised in a task ends the event loop — the whole node. Here it is a `ConfigError`
for the route that wanted the port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from email.utils import formatdate
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import ConfigError
from ..message import Message
from .route import RouteRunner
from .templates import TopicTemplate

if TYPE_CHECKING:
    import uvicorn  # imported when the server starts

log = logging.getLogger("iotwasm.http")

MAX_BODY = 1024 * 1024


class _TooLarge(Exception):
    pass


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused (`_TooLarge`) as soon as it is known to exceed `limit`:
    by its Content-Length, or while it streams in (chunked bodies declare none)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge(f"body of {int(declared):,} bytes is over {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"body is over {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def node_server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server run the node's way: it leaves the signals to the node, and it sleeps
    between requests.

    - uvicorn's own `serve()` replaces the process's SIGINT and SIGTERM handlers while it runs
      (in the main thread) and raises the signal again when it stops, so a Ctrl-C would stop
      the HTTP server before the node had drained its routes, and a second one after that
      would meet Python's default handler. The node stops its servers itself, after its
      routes.
    - uvicorn's main loop wakes ten times a second, to look at `should_exit` and to refresh
      the ``Date`` header once a second: on a quiet node that is most of the event loop's
      wake-ups. Here setting `should_exit` wakes the loop, and the ``Date`` header is made
      when a response asks for it, at most once a second (`_DatedState`).
    """
    import contextlib
    from collections.abc import Iterator

    import uvicorn
    from uvicorn.server import ServerState

    class _DatedState(ServerState):
        """uvicorn's shared state, whose default headers carry the ``Date`` of the second in
        which a response asks for them (uvicorn's main loop would set them every second)."""

        def __init__(self) -> None:
            self._second = -1
            self._headers: list[tuple[bytes, bytes]] = []
            super().__init__()

        @property
        def default_headers(self) -> list[tuple[bytes, bytes]]:
            second = int(_wall_clock())
            if second != self._second:
                date = [(b"date", formatdate(second, usegmt=True).encode())] if config.date_header else []
                self._headers, self._second = date + config.encoded_headers, second
            return self._headers

        @default_headers.setter
        def default_headers(self, value: list[tuple[bytes, bytes]]) -> None:
            pass   # made on demand above

    class NodeServer(uvicorn.Server):
        def __init__(self, config: uvicorn.Config) -> None:
            self._exit = asyncio.Event()
            super().__init__(config)
            self.server_state = _DatedState()

        @property
        def should_exit(self) -> bool:
            return self._exit.is_set()

        @should_exit.setter
        def should_exit(self, value: bool) -> None:
            if value:
                self._exit.set()   # set on the node's loop (ApiServer.stop, HttpIngest.stop)
            else:
                self._exit.clear()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        async def main_loop(self) -> None:
            await self._exit.wait()

    return NodeServer(config)


def _wall_clock() -> float:
    """The time a response's ``Date`` header states (tests move it)."""
    return time.time()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound and listening on host:port (OSError when it cannot be). Made with
    IPPROTO_TCP, so asyncio turns Nagle's algorithm off on the connections it accepts."""
    info = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                              proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], info[1], info[2])
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


class IngestServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 8181, *, ack_timeout_s: float = 10.0):
        self.host = host
        self.port = port
        #: how long a request waits for its route to be through before it is answered 503
        self.ack_timeout_s = ack_timeout_s
        self._paths: dict[str, tuple[RouteRunner, TopicTemplate]] = {}
        self._paused: dict[str, RouteRunner] = {}
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self.accepted = 0
        self.rejected = 0

    def add(self, path: str, topic: str, runner: RouteRunner) -> None:
        if not path.startswith("/"):
            raise ConfigError(f"http source path {path!r} must start with '/'")
        if path in self._paths and self._paths[path][0] is not runner:
            raise ConfigError(f"http source path {path} is already served by route {self._paths[path][0].name}")
        self._paths[path] = (runner, TopicTemplate(topic))
        self._paused.pop(path, None)

    def pause(self, runner: RouteRunner) -> None:
        """Take nothing more for `runner`: its paths answer 503 (send again later) until a
        route takes them (`add`) or they are removed."""
        for p in [p for p, (r, _) in self._paths.items() if r is runner]:
            self._paused[p] = runner
            del self._paths[p]

    def remove(self, runner: RouteRunner) -> None:
        for p in [p for p, (r, _) in self._paths.items() if r is runner]:
            del self._paths[p]
        for p in [p for p, r in self._paused.items() if r is runner]:
            del self._paused[p]

    def retarget(self, old: RouteRunner, new: RouteRunner) -> None:
        """Paths served by `old` are served by `new` from now on (a replaced route)."""
        for p, (r, template) in list(self._paths.items()):
            if r is old:
                self._paths[p] = (new, template)

    async def _ingest(self, request: Request) -> JSONResponse:
        entry = self._paths.get(request.url.path)
        if entry is None:
            if request.url.path in self._paused:
                return JSONResponse({"error": f"{request.url.path} takes nothing right now (the node "
                                              "is stopping or the route is being replaced); send again"},
                                    status_code=503, headers={"Retry-After": "1"})
            return JSONResponse({"error": f"no route ingests {request.url.path}"}, status_code=404)
        runner, template = entry
        try:
            body = await read_capped(request, MAX_BODY)
        except _TooLarge as e:
            self.rejected += 1
            return JSONResponse({"error": str(e)}, status_code=413)
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
        loop = asyncio.get_running_loop()
        through: list[asyncio.Future] = []
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                for p in payloads:
                    fut = loop.create_future()
                    through.append(fut)
                    await runner.offer(Message(topic, p), variables, fut)
                if through:
                    await asyncio.wait(through)  # acknowledged once the route is through with them
        except TimeoutError:
            self.rejected += 1
            done = sum(1 for f in through if f.done() and not f.cancelled())
            return JSONResponse({"error": f"route {runner.name} is not through with the request after "
                                          f"{self.ack_timeout_s:g}s ({done} of {len(payloads)} message(s) "
                                          "processed); send again (the rest may still go through: "
                                          "duplicates are possible)"},
                                status_code=503, headers={"Retry-After": "1"})
        given_back = sum(1 for f in through if f.cancelled())
        if given_back:
            self.rejected += 1
            return JSONResponse({"error": f"the node is stopping: {given_back} of {len(payloads)} "
                                          "message(s) not processed; send again"},
                                status_code=503, headers={"Retry-After": "1"})
        self.accepted += len(payloads)
        return JSONResponse({"accepted": len(payloads)}, status_code=202)

    async def start(self) -> None:
        import uvicorn

        try:
            sock = listening_socket(self.host, self.port)
        except OSError as e:
            raise ConfigError(f"http ingest cannot listen on {self.host}:{self.port}: "
                              f"{e.strerror or e}") from None
        app = Starlette(routes=[Route("/{path:path}", self._ingest, methods=["POST"])])
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", lifespan="off")
        server = self._server = node_server(config)
        self._task = asyncio.get_running_loop().create_task(self._serve(server, sock), name="http-ingest")
        for _ in range(200):
            if server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            exc = self._task.exception()
            raise ConfigError(f"http ingest cannot listen on {self.host}:{self.port}: {exc}")
        log.info("http ingest listening on http://%s:%d", self.host, self.port)

    async def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as e:  # never let uvicorn's exit reach the node's loop
            raise RuntimeError(f"the ingest server stopped (exit status {e.code})") from None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError, RuntimeError) as e:
                log.debug("http ingest stopped: %s", e or type(e).__name__)
