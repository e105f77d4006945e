"""CoAP source: constrained devices POST or PUT readings to a resource of the node (aiocoap,
imported when a route uses the kind).

    coap://node:5683/telemetry/press1   POST {"temp": 21.5}   →   topic coap/press1

The resource path is a pattern (``telemetry/{device}``) whose named segments fill the topic
template. Every route's CoAP source on one bind address shares one CoAP server (a UDP port
serves many paths), so a route can be replaced, or its path changed, without giving up the
port.

Acknowledgement: a request is answered 2.04 Changed once the route is through with its
message (its sinks took it — an outbox counts — or it was dead-lettered), like the http source;
5.03 Service Unavailable with Max-Age 1 when the route does not take it within ``ackTimeout``,
is being replaced or the node stops — the device sends again. A confirmable request's
transport-level ACK is aiocoap's (sent at once when the answer takes longer). Backpressure: a
full route queue delays the answer, and so the device.

Bounded input: a payload larger than ``maxPayload`` and blockwise (Block1) transfers are
refused with 4.13 Request Entity Too Large.

With ``observe`` the source is a client instead: it observes remote resources (RFC 7641) and
every notification becomes a message on the topic filled with the resource's name as
``{device}``. A resource that sends nothing for ``reregister`` (default 60 s, CoAP's default
Max-Age) is registered again, which also finds a device that restarted and forgot its
observers; the registration's answer reports the current value (so a quiet resource repeats
its value once per ``reregister``). Notifications are acknowledged by aiocoap as they arrive
(a confirmable one is ACKed before the route has it): a value queued in the route when the
node dies is lost, and a device sends only its latest state anyway.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from pydantic import Field, field_validator, model_validator

from ...backoff import Backoff
from ...engine.limits import parse_duration_ms
from ...errors import ConfigError
from ...message import Message
from ...messaging.topics import matches
from ...supervise import supervise
from ..templates import TopicPattern, TopicTemplate
from .base import Connector, cancel_and_wait, registry, require
from .config import Strict

log = logging.getLogger("iotwasm.connectors.coap")


class CoapObserve(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="fills {device}")
    url: str = Field(description="coap://host:port/path of the resource to observe")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith("coap://"):
            raise ValueError("must start with coap://")
        return v


class CoapSource(Strict):
    observe: list[CoapObserve] = Field(default_factory=list, description="observe these resources "
                                       "as a client instead of serving a path")
    reregister: str = Field("60s", description="observe: register again after this long without a notification")
    timeout: str = Field("5s", description="observe: how long a registration may take")
    bind: str = Field("127.0.0.1:5683", description="UDP host:port the node's CoAP server listens on")
    path: str = Field("telemetry/{device}", description="resource path; {name} segments are captured")
    topic: str = Field("coap/{device}", description="topic template filled from the path's captures")
    ack_timeout: str = Field("10s", alias="ackTimeout")
    max_payload: int = Field(1024, alias="maxPayload", ge=1, le=65_000)

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        try:
            TopicPattern.parse(v.strip("/"))
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v.strip("/")

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        TopicTemplate(v)
        return v

    @model_validator(mode="after")
    def _mode(self) -> "CoapSource":
        if self.observe:
            served = {type(self).model_fields[f].alias or f
                      for f in self.model_fields_set & {"bind", "path", "ack_timeout", "max_payload"}}
            if served:
                raise ValueError(f"observe makes the source a client: {', '.join(sorted(served))} "
                                 f"{'does' if len(served) == 1 else 'do'} not apply")
            names = [o.name for o in self.observe]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"observe name(s) used twice: {', '.join(sorted(dup))}")
        for name in ("reregister", "timeout"):
            if parse_duration_ms(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be longer than 0")
        return self


class _CoapServer:
    """One aiocoap server on one bind address, serving the paths of every route's source."""

    def __init__(self, bind: str):
        self.bind = bind
        self.paths: dict[str, CoapListener] = {}
        self.context = None

    async def start(self) -> None:
        import aiocoap
        import aiocoap.resource

        server = self

        class Site(aiocoap.resource.Resource):
            async def needs_blockwise_assembly(self, request) -> bool:
                return False   # a block would be a message of its own: refused, bounded by a datagram

            async def render(self, request):
                return await server.render(request)

        host, _, port = self.bind.rpartition(":")
        try:
            self.context = await aiocoap.Context.create_server_context(Site(), bind=(host, int(port)),
                                                                       transports=["udp6"])
        except OSError as e:
            raise ConfigError(f"coap source cannot listen on {self.bind}: {e.strerror or e}") from None

    async def render(self, request):
        import aiocoap

        path = "/".join(request.opt.uri_path)
        listener = next((lst for lst in self.paths.values() if matches(lst.pattern.filter, path)), None)
        if listener is None:
            return aiocoap.Message(code=aiocoap.NOT_FOUND, payload=f"no route takes /{path}".encode())
        return await listener.take(request, path)

    async def stop(self) -> None:
        if self.context is not None:
            await self.context.shutdown()
            self.context = None


#: the CoAP servers of this process by bind address (a port serves every route's paths)
_SERVERS: dict[str, _CoapServer] = {}


class CoapListener:
    """The running source: a path on its bind address's CoAP server."""

    def __init__(self, cfg: CoapSource, runner, route: str):
        self.cfg = cfg
        self.runner = runner
        self.route = route
        self.pattern = TopicPattern.parse(cfg.path)
        self.template = TopicTemplate(cfg.topic)
        self.ack_timeout = parse_duration_ms(cfg.ack_timeout) / 1000
        self.accepted = 0
        self.rejected = 0
        self._paused = False
        self._server: _CoapServer | None = None

    async def start(self) -> None:
        server = _SERVERS.get(self.cfg.bind)
        if server is None:
            server = _CoapServer(self.cfg.bind)
            await server.start()
            _SERVERS[self.cfg.bind] = server
        other = server.paths.get(self.cfg.path)
        if other is not None and other.route != self.route:
            raise ConfigError(f"coap path /{self.cfg.path} on {self.cfg.bind} is taken by route {other.route}")
        server.paths[self.cfg.path] = self
        self._server = server

    async def take(self, request, path: str):
        import aiocoap

        def unavailable(why: str):
            self.rejected += 1
            msg = aiocoap.Message(code=aiocoap.SERVICE_UNAVAILABLE, payload=why.encode())
            msg.opt.max_age = 1
            return msg

        if request.code not in (aiocoap.POST, aiocoap.PUT):
            self.rejected += 1
            return aiocoap.Message(code=aiocoap.METHOD_NOT_ALLOWED, payload=b"POST or PUT")
        if request.opt.block1 is not None or len(request.payload) > self.cfg.max_payload:
            self.rejected += 1
            return aiocoap.Message(code=aiocoap.REQUEST_ENTITY_TOO_LARGE,
                                   payload=f"at most {self.cfg.max_payload} bytes, in one block".encode())
        if self._paused:
            return unavailable("the route takes nothing right now; send again")
        variables = self.pattern.capture(path)
        try:
            topic = self.template.fill(variables, request.payload)
        except KeyError as e:
            self.rejected += 1
            return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=str(e.args[0]).encode())
        fut = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.ack_timeout):
                await self.runner.offer(Message(topic, bytes(request.payload), int(time.time() * 1000)),
                                        variables, fut)
                await asyncio.wait([fut])
        except TimeoutError:
            return unavailable(f"route {self.route} is not through with it after {self.ack_timeout:g}s; send again")
        if fut.cancelled():
            return unavailable("the node is stopping; send again")
        self.accepted += 1
        return aiocoap.Message(code=aiocoap.CHANGED)

    def status(self) -> dict:
        return {"health": "ok" if self._server is not None else "down", "problem": None,
                "counters": {"accepted": self.accepted, "rejected": self.rejected}}

    def retarget(self, runner) -> None:
        self.runner = runner
        self._paused = False

    def pause(self) -> None:
        self._paused = True

    async def stop(self, grace: float = 5.0) -> None:
        self._paused = True
        server = self._server
        if server is None:
            return
        self._server = None
        if server.paths.get(self.cfg.path) is self:
            del server.paths[self.cfg.path]
        if not server.paths and _SERVERS.get(self.cfg.bind) is server:
            del _SERVERS[self.cfg.bind]
            await server.stop()

    remove = stop


class CoapObserver:
    """The running source in observe mode: one client context, one task per resource."""

    def __init__(self, cfg: CoapSource, runner, route: str):
        self.cfg = cfg
        self.runner = runner
        self.route = route
        self.template = TopicTemplate(cfg.topic)
        self.reregister = parse_duration_ms(cfg.reregister) / 1000
        self.timeout = parse_duration_ms(cfg.timeout) / 1000
        self.problems: dict[str, str] = {}
        self.notifications = 0
        self.registrations = 0
        self._context: Any = None
        self._tasks: list[asyncio.Task] = []
        self._taking = asyncio.Event()
        self._taking.set()

    async def start(self) -> None:
        import aiocoap

        self._context = await aiocoap.Context.create_client_context()
        for res in self.cfg.observe:
            self._tasks.append(supervise(f"coap observe {res.url} of route {self.route}",
                                         functools.partial(self._observe, res), log=log))

    async def _observe(self, res: CoapObserve) -> None:
        import aiocoap

        backoff = Backoff(0.2, 10.0)
        while True:
            request = None
            try:
                request = self._context.request(aiocoap.Message(code=aiocoap.GET, uri=res.url, observe=0))
                first = await asyncio.wait_for(request.response, self.timeout)
                if not first.code.is_successful():
                    raise ConnectionError(f"answered {first.code}")
                self.registrations += 1
                if self.problems.pop(res.name, None) is not None:
                    log.info("route %s: coap %s observed again", self.route, res.url)
                backoff.reset()
                await self._offer(res, first)
                if request.observation is None:
                    raise ConnectionError("not observable")
                notifications = request.observation.__aiter__()
                while True:   # a quiet spell ends in TimeoutError: register again
                    await self._offer(res, await asyncio.wait_for(notifications.__anext__(), self.reregister))
            except (TimeoutError, StopAsyncIteration):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure: report, back off, register again
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                problem = f"{res.url}: {why}".splitlines()[0]
                if self.problems.get(res.name) != problem:
                    log.warning("route %s: coap observe %s", self.route, problem)
                self.problems[res.name] = problem
                await asyncio.sleep(backoff.next())
            finally:
                if request is not None and request.observation is not None and not request.observation.cancelled:
                    request.observation.cancel()

    async def _offer(self, res: CoapObserve, response) -> None:
        await self._taking.wait()
        variables = {"device": res.name}
        payload = bytes(response.payload)
        await self.runner.offer(Message(self.template.fill(variables, payload), payload, int(time.time() * 1000)),
                                variables)
        self.notifications += 1

    def status(self) -> dict:
        problems = list(self.problems.values())
        health = "ok" if not problems else ("down" if len(problems) == len(self.cfg.observe) else "degraded")
        return {"health": health, "problem": "; ".join(problems) or None,
                "counters": {"notifications": self.notifications, "registrations": self.registrations}}

    def retarget(self, runner) -> None:
        self.runner = runner
        self._taking.set()

    def pause(self) -> None:
        self._taking.clear()

    async def stop(self, grace: float = 5.0) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        if self._context is not None:
            await self._context.shutdown()
            self._context = None

    remove = stop


async def _build(ctx, cfg: CoapSource, runner) -> CoapListener | CoapObserver:
    require(COAP)
    if cfg.observe:
        return CoapObserver(cfg, runner, ctx.route)
    return CoapListener(cfg, runner, ctx.route)


COAP = registry.register(Connector(
    "coap", "source", CoapSource, _build,
    "A POST or PUT is answered 2.04 once the route is through with its message (sinks took it, "
    "an outbox counts, or it was dead-lettered); 5.03 with Max-Age 1 when the route does not "
    "take it within ackTimeout, is being replaced or the node stops: the device sends again "
    "(duplicates are possible). A full route queue delays the answer. Observing: notifications "
    "are acknowledged as they arrive (none end to end); a quiet resource is registered again "
    "after reregister, reporting its current value.",
    requires=(("aiocoap", "aiocoap"),), extra="coap",
    pattern=lambda cfg: cfg.topic))
