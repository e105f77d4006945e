"""OPC UA source: subscribe to variables of a server (asyncua, imported when a route uses the
kind); every data change the server reports becomes one JSON message::

    {"node": "temperature", "id": "ns=2;i=2", "value": 21.5, "status": "Good",
     "source_ts": 1733450000123, "server_ts": 1733450000124}

on the topic template filled with ``{node}`` (the name given to the variable in the manifest).
Variables are named by node id (``ns=2;s=Line1.Temp``) or by browse path from the root
(``0:Objects/2:Plant/2:Temp``); each has a sampling interval and an optional deadband (absolute,
or percent of the variable's EURange), so the server reports only changes that matter.

Reconnecting is the source's own: when the connection is lost (the client's watchdog or the
transport says so) the session is dropped, and the source connects again with backoff, looks the
variables up again and subscribes anew — the server then reports each variable's current value
first. Values that changed while no session existed are not delivered: OPC UA keeps a monitored
item's queue only for the session that created it. The source's status says whether it is
connected and why not.

Backpressure: a data change is offered to the route before the next is taken; while the route's
queue is full the client stops taking publish responses and the server keeps up to ``queueSize``
samples per variable (then discards the oldest, counted by the server as overflow).
Acknowledgement: OPC UA acknowledges a notification with the next publish request, which is
sent whatever the route does; a value queued in the route when the node dies is lost.

A secure channel (``security``: Basic256Sha256, Aes128Sha256RsaOaep or Aes256Sha256RsaPss,
Sign or SignAndEncrypt, with the node's certificate and key files) and username and password
(``passwordEnv`` names the node's environment variable holding the password) are offered. The
server's certificate is the one its endpoint presents, not checked against a trust list, unless
``serverCertificate`` pins it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ...backoff import Backoff
from ...engine.limits import parse_duration_ms
from ...message import Message
from ...supervise import supervise
from ..templates import TopicTemplate
from .base import Connector, cancel_and_wait, registry, require
from .config import Strict

log = logging.getLogger("iotwasm.connectors.opcua")


class Deadband(Strict):
    type: Literal["absolute", "percent"] = "absolute"
    value: float = Field(ge=0)


class OpcUaNode(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    id: str | None = Field(None, description="node id, e.g. ns=2;i=7 or ns=2;s=Line1.Temp")
    path: str | None = Field(None, description="browse path from the root, e.g. 0:Objects/2:Plant/2:Temp")
    sampling_interval: str | None = Field(None, alias="samplingInterval")
    deadband: Deadband | None = None

    @model_validator(mode="after")
    def _one(self) -> "OpcUaNode":
        if (self.id is None) == (self.path is None):
            raise ValueError(f"node {self.name}: give exactly one of id, path")
        if self.path is not None and not all(re.fullmatch(r"\d+:[^/]+", p) for p in self.path.split("/")):
            raise ValueError(f"node {self.name}: path {self.path!r} must be segments like 2:Name joined by /")
        return self


class OpcUaSecurity(Strict):
    """A secure channel: the policy, the mode, and the node's application instance certificate."""

    policy: Literal["Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"] = "Basic256Sha256"
    mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate: str = Field(description="the client's certificate (DER or PEM file on the node)")
    private_key: str = Field(alias="privateKey", description="its private key (PEM file on the node)")
    server_certificate: str | None = Field(None, alias="serverCertificate",
                                           description="default: the one the server's endpoint presents")
    application_uri: str = Field("urn:iotwasm:client", alias="applicationUri",
                                 description="must be the URI in the client certificate")


class OpcUaSource(Strict):
    url: str = Field(description="opc.tcp://host:port/path")
    topic: str = Field("opcua/{node}", description="topic template; {node} is the variable's name")
    sampling_interval: str = Field("100ms", alias="samplingInterval")
    publishing_interval: str = Field("100ms", alias="publishingInterval")
    queue_size: int = Field(10, alias="queueSize", ge=1, le=10_000)
    deadband: Deadband | None = None
    timeout: str = "4s"
    username: str | None = None
    password_env: str | None = Field(None, alias="passwordEnv")
    security: OpcUaSecurity | None = None
    nodes: list[OpcUaNode] = Field(min_length=1)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith("opc.tcp://"):
            raise ValueError("must start with opc.tcp://")
        if "@" in v.split("/")[2]:
            raise ValueError("must not hold credentials (use username and passwordEnv)")
        return v

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        extra = set(re.findall(r"{([^}]*)}", v)) - {"node"}
        if extra:
            raise ValueError(f"only {{node}} can be filled in here (not {', '.join(sorted(extra))})")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "OpcUaSource":
        names = [n.name for n in self.nodes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"node name(s) used twice: {', '.join(sorted(dup))}")
        return self


def _ms(dt) -> int | None:
    return int(dt.timestamp() * 1000) if dt is not None else None


class OpcUaSubscriber:
    """The running source: one session, re-established whenever it is lost."""

    def __init__(self, cfg: OpcUaSource, runner, route: str):
        self.cfg = cfg
        self.runner = runner
        self.route = route
        self.template = TopicTemplate(cfg.topic)
        self.timeout = parse_duration_ms(cfg.timeout) / 1000
        self.backoff = Backoff(0.2, 10.0)
        self.connected = False
        self.problem: str | None = None
        self.changes = 0
        self.connects = 0
        self._names: dict = {}      # asyncua node id → (name, manifest id)
        self._task: asyncio.Task | None = None
        #: cleared while paused (the route is being replaced): notifications wait, the server queues
        self._taking = asyncio.Event()
        self._taking.set()

    async def start(self) -> None:
        self._task = supervise(f"opcua source of route {self.route}", self._run, log=log)

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
                self.backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure: report, back off, connect again
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                problem = f"{self.cfg.url}: {why}".splitlines()[0]
                if problem != self.problem:
                    log.warning("route %s: opcua %s", self.route, problem)
                self.problem = problem
            self.connected = False
            await asyncio.sleep(self.backoff.next())

    async def _session(self) -> None:
        from asyncua import Client, ua

        client = Client(self.cfg.url, timeout=self.timeout, watchdog_intervall=1.0)
        if self.cfg.username:
            client.set_user(self.cfg.username)
            client.set_password(os.environ.get(self.cfg.password_env or "", ""))
        lost = asyncio.Event()

        async def on_lost(exc: Exception) -> None:
            self.problem = f"{self.cfg.url}: connection lost: {type(exc).__name__}: {exc}".splitlines()[0]
            lost.set()

        client.connection_lost_callback = on_lost
        sec = self.cfg.security
        if sec is not None:
            from asyncua.crypto import security_policies

            client.application_uri = sec.application_uri
            await asyncio.wait_for(client.set_security(
                getattr(security_policies, f"SecurityPolicy{sec.policy}"), sec.certificate, sec.private_key,
                server_certificate=sec.server_certificate, mode=getattr(ua.MessageSecurityMode, sec.mode)),
                self.timeout * 2)
        await asyncio.wait_for(client.connect(), self.timeout * 2)
        try:
            nodes = []
            for n in self.cfg.nodes:
                if n.id is not None:
                    node = client.get_node(n.id)
                else:
                    node = await client.nodes.root.get_child((n.path or "").split("/"))
                nodes.append((n, node))
            pub_ms = parse_duration_ms(self.cfg.publishing_interval)
            sub = await client.create_subscription(pub_ms, self)
            groups: dict = {}
            for n, node in nodes:
                self._names[node.nodeid] = (n.name, n.id or n.path)
                band = n.deadband or self.cfg.deadband
                sampling = parse_duration_ms(n.sampling_interval or self.cfg.sampling_interval)
                groups.setdefault((sampling, band.type if band else None, band.value if band else None), []).append(node)
            for (sampling, btype, bvalue), group in groups.items():
                mfilter = None
                if btype is not None:
                    mfilter = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValue,
                                                  DeadbandType=1 if btype == "absolute" else 2,
                                                  DeadbandValue=bvalue)
                # the public subscribe_data_change takes no filter; this is the call it makes
                handles = await sub._subscribe(group, ua.AttributeIds.Value, mfilter, self.cfg.queue_size,
                                               ua.MonitoringMode.Reporting, sampling)
                for node, h in zip(group, handles):
                    if isinstance(h, ua.StatusCode):
                        raise ConnectionError(f"node {self._names[node.nodeid][1]}: {h.name}")
            self.connected = True
            self.connects += 1
            if self.problem is not None:
                log.info("route %s: opcua %s subscribed again", self.route, self.cfg.url)
            self.problem = None
            await lost.wait()
        finally:
            self.connected = False
            try:
                await asyncio.wait_for(client.disconnect(), self.timeout)
            except Exception:  # noqa: BLE001 - the connection is gone already
                log.debug("route %s: opcua disconnect after a loss", self.route, exc_info=True)

    async def datachange_notification(self, node, val, data) -> None:
        """Called by asyncua for every reported change (awaited: backpressure, see module)."""
        name, ident = self._names.get(node.nodeid, (str(node.nodeid), str(node.nodeid)))
        dv = data.monitored_item.Value
        body = {"node": name, "id": ident, "value": val,
                "status": dv.StatusCode.name if dv.StatusCode is not None else "Good",
                "source_ts": _ms(dv.SourceTimestamp), "server_ts": _ms(dv.ServerTimestamp),
                "ts": int(time.time() * 1000)}
        payload = json.dumps(body, default=str).encode()
        await self._taking.wait()   # replaced or stopping: hold (the server queues) until retargeted
        await self.runner.offer(Message(self.template.fill({"node": name}), payload), {"node": name, "device": name})
        self.changes += 1

    def status(self) -> dict:
        return {"health": "ok" if self.connected else "down", "problem": self.problem,
                "counters": {"changes": self.changes, "sessions": self.connects}}

    def retarget(self, runner) -> None:
        self.runner = runner
        self._taking.set()

    def pause(self) -> None:
        self._taking.clear()

    async def stop(self, grace: float = 5.0) -> None:
        await cancel_and_wait(self._task)   # its run disconnects the client as it ends
        self._task = None

    remove = stop


async def _build(ctx, cfg: OpcUaSource, runner) -> OpcUaSubscriber:
    require(OPCUA)
    return OpcUaSubscriber(cfg, runner, ctx.route)


OPCUA = registry.register(Connector(
    "opcua", "source", OpcUaSource, _build,
    "Subscribed: each reported data change is offered to the route before the next is taken "
    "(a full queue holds the client; the server keeps queueSize samples per variable, then "
    "drops the oldest). No end-to-end acknowledgement; after a reconnect the server reports "
    "current values, changes made while no session existed are not delivered.",
    requires=(("asyncua", "asyncua"),), extra="opcua",
    pattern=lambda cfg: cfg.topic))
