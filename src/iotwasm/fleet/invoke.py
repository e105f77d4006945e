"""Remote invocation: call a deployment wherever in the fleet a replica of it runs.

Every node answers on ``iotwasm.invoke.<deployment>`` for the deployments it runs, in a NATS
queue group of the same name, so a request reaches exactly one node that has the deployment;
NATS picks among them. The request body is the message payload (header ``topic`` optional,
default ``invoke/<deployment>``); the reply is JSON::

    {"node": "edge-3", "outputs": [{"topic": ..., "payload": ...}],
     "dead_letters": [{"error": "...", "kind": "trap"}]}

Payloads are carried as UTF-8 text when they are, else base64 (``"payload_b64"``). A trap or a
limit in the module is a dead letter in the reply, never an error of the node. The module runs
on a worker thread of the deployment's subscription, never on the event loop (NATS delivers a
subscription's requests one after the other, so one thread per subscription is enough).

`invoke` retries with backoff when no replica answered in time or none is subscribed (a node
that just died, a deployment being moved), and raises `InvokeError` naming the deployment and
what happened on the last try.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass, field

from nats.aio.subscription import Subscription

from ..breaker import CircuitBreaker
from ..errors import IotwasmError
from ..supervise import cancel_and_wait, until_beat
from ..message import Message
from ..node import Node
from ..pipeline.worker import Worker

log = logging.getLogger("iotwasm.fleet.invoke")

PREFIX = "iotwasm.invoke."


class InvokeError(IotwasmError):
    kind = "invoke"


@dataclass
class InvokeResult:
    node: str
    outputs: list[tuple[str | None, bytes]] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)


def _payload_json(payload: bytes) -> dict:
    try:
        return {"payload": payload.decode()}
    except UnicodeDecodeError:
        return {"payload_b64": base64.b64encode(payload).decode()}


def _payload_of(item: dict) -> bytes:
    if "payload_b64" in item:
        return base64.b64decode(item["payload_b64"])
    return item.get("payload", "").encode()


class InvokeServer:
    """Answers invocations of this node's deployments; follows the node as deployments come
    and go (checked every `interval_s`, on the node's beat: `until_beat`)."""

    def __init__(self, node: Node, nc, *, interval_s: float = 1.0):
        self.node = node
        self.nc = nc
        self.interval_s = interval_s
        self._subs: dict[str, Subscription] = {}
        self._workers: dict[str, Worker] = {}
        self._task: asyncio.Task | None = None
        self.answered = 0

    async def start(self) -> None:
        await self.sync()
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="fleet-invoke")

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(until_beat(self.interval_s))
            try:
                await self.sync()
            except Exception as e:  # the link is down: try again next time
                log.debug("invoke subscriptions not updated: %s", e)

    async def sync(self) -> None:
        want = set(self.node.deployments)
        for name in want - set(self._subs):
            subject = PREFIX + name
            self._workers[name] = Worker(f"invoke-{name}")
            self._subs[name] = await self.nc.subscribe(subject, queue=subject, cb=self._answer)
        for name in set(self._subs) - want:
            await self._subs.pop(name).unsubscribe()
            self._workers.pop(name).close()

    async def _answer(self, msg) -> None:
        name = msg.subject[len(PREFIX):]
        rec = self.node.deployments.get(name)
        worker = self._workers.get(name)
        reply: dict = {"node": self.node.config.name}
        if rec is None or worker is None:
            reply["error"] = f"deployment {name!r} is not on node {self.node.config.name}"
        else:
            topic = (msg.headers or {}).get("topic") or f"invoke/{name}"
            trace = self.node.invoke_trace
            # traced: a span of this invocation, the caller's child when its request carried
            # trace context (W3C `traceparent` header), with the module's call inside it
            span = trace.invocation(name, msg.headers or {}) if trace is not None else None
            try:
                result = await worker.run(self._call, rec.handle, [Message(topic, msg.data)], trace, span)
            except IotwasmError as e:
                reply["error"] = str(e)
                if trace is not None:
                    trace.end(span, error=str(e))
            else:
                if trace is not None:
                    trace.end(span, outputs=len(result.outputs), dead_letters=len(result.dead_letters))
                reply["outputs"] = [{"topic": o.topic, **_payload_json(o.payload)} for o in result.outputs]
                reply["dead_letters"] = [{"error": str(d.error), "kind": getattr(d.error, "kind", "error")}
                                         for d in result.dead_letters]
        self.answered += 1
        try:
            await msg.respond(json.dumps(reply, separators=(",", ":")).encode())
        except Exception as e:  # the caller went away
            log.debug("invoke reply for %s not sent: %s", name, e)

    @staticmethod
    def _call(handle, messages: list[Message], trace, span):
        if trace is None:
            return handle.process(messages)
        token = trace.enter(span)
        try:
            return handle.process(messages)
        finally:
            trace.leave(token)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for sub in self._subs.values():
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        self._subs.clear()
        for w in self._workers.values():
            w.close()
        self._workers.clear()


async def serve_invocations(node: Node, url: str, *, retry_s: float = 1.0) -> None:
    """Connect to the fleet's NATS (retrying until it answers) and answer invocations of this
    node's deployments until cancelled. Runs next to `iotwasm up --fleet`."""
    import nats

    nc = None
    server = None
    try:
        while nc is None:
            try:
                # link errors while reconnecting are expected (the fleet is down): no traceback each try
                nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                        connect_timeout=2, name=f"iotwasm-invoke-{node.config.name}",
                                        error_cb=_link_error)
            except Exception as e:
                log.debug("invocations: %s not reachable yet (%s)", url, e)
                await asyncio.sleep(retry_s)
        server = InvokeServer(node, nc)
        await server.start()
        await asyncio.Event().wait()
    finally:
        if server is not None:
            await server.stop()
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), 3)
            except Exception:
                pass


async def _link_error(e: Exception) -> None:
    log.debug("invocations: fleet link: %s", e or type(e).__name__)


async def invoke(nc, deployment: str, payload: bytes, *, topic: str | None = None,
                 timeout: float = 1.0, retries: int = 3, backoff: float = 0.05,
                 breaker: CircuitBreaker | None = None,
                 headers: dict[str, str] | None = None) -> InvokeResult:
    """Call `deployment` on one healthy replica anywhere in the fleet and return its result.

    Retries up to `retries` times, waiting `backoff` doubling between tries, when no replica
    answered within `timeout` or none is subscribed; a node that answers with an error (e.g.
    the deployment just left it) is retried too.

    With a `breaker` (one per deployment called, kept by the caller), an invocation whose
    tries all failed counts as one failure; while the breaker is open an invocation fails at
    once with `InvokeError` naming it, without a request, instead of waiting out every
    timeout; half-open, one invocation probes. `headers` go along with the request (trace
    context: ``traceparent``, ``tracestate``)."""
    import nats.errors

    if breaker is not None and not breaker.allow():
        raise InvokeError(f"invoke {deployment!r}: {breaker.refusal()}")

    headers = {**(headers or {}), **({"topic": topic} if topic else {})} or None
    last = "no attempt"
    delay = backoff
    for attempt in range(retries + 1):
        try:
            msg = await nc.request(PREFIX + deployment, payload, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            last = "no replica is subscribed"
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            last = f"no replica answered within {timeout}s"
        else:
            reply = json.loads(msg.data)
            if "error" not in reply:
                if breaker is not None:
                    breaker.success()
                return InvokeResult(reply["node"], [(o.get("topic"), _payload_of(o)) for o in reply["outputs"]],
                                    reply["dead_letters"])
            last = f"node {reply.get('node')}: {reply['error']}"
        if attempt < retries:
            await asyncio.sleep(delay)
            delay *= 2
    err = InvokeError(f"invoke {deployment!r}: {last} (after {retries + 1} tries)")
    if breaker is not None:
        breaker.failure(err)
    raise err


__all__ = ["InvokeError", "InvokeResult", "InvokeServer", "invoke", "serve_invocations"]
