"""The bus of a worker process behind an `Ingress` (`iotwasm up --workers N`).

Subscriptions go through the ingress's socket and see only this worker's share of the
messages (those whose order key falls to it); publishing goes over a connection of the
worker's own (`publish`, usually an `MqttBus`), so workers publish in parallel. Everything
else a node needs of a bus — `send_many`, `flush`, state callbacks — is the publishing bus's.

Several subscriptions of this worker on one filter share one subscription at the ingress
(a channel): each message goes to every one of them and is settled once all of them did,
as the MQTT bus settles a message that several handlers matched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from ..errors import ConfigError
from ..message import Envelope, Message
from . import ingress_wire as wire
from .bus import (
    FAILED,
    OK,
    RELEASED,
    Bus,
    BusState,
    Handler,
    Outgoing,
    Subscription,
    check_qos,
)
from .errors import BrokerUnavailable, SubscribeDenied
from .topics import OrderKey, validate_filter
from .reads import BufferedReads

log = logging.getLogger("iotwasm.messaging.worker")


@dataclass(eq=False)
class _Channel:
    sid: int
    topic_filter: str
    queue: str | None
    subs: list[Subscription] = field(default_factory=list)
    #: messages that came while none of `subs` took any (all paused: a route being replaced
    #: or stopped); they go to the next subscription on the channel, or back to the ingress
    backlog: list[tuple[int, Message]] = field(default_factory=list)


class WorkerBus(Bus):
    """Worker `worker` of `workers` behind the ingress listening on `path`."""

    scheme = "ingress"
    partitioned = True

    def __init__(self, path: str, worker: int, workers: int, token: bytes, publish: Bus):
        super().__init__()
        self.path = path
        self.worker = worker
        self.workers = workers
        self.token = token
        self.publisher = publish
        self.envelopes = publish.envelopes
        self.stats = publish.stats
        self._channels: dict[int, _Channel] = {}
        self._by_filter: dict[tuple[str, str | None], _Channel] = {}
        self._sid = 0
        self._link = wire.Writer()
        self._write = self._link.write
        self._settled = bytearray()
        self._welcome: asyncio.Future[None] | None = None
        self._subok: dict[int, asyncio.Future[None]] = {}
        #: called once when the link to the ingress is lost (the worker should stop: its
        #: messages are given to its next process)
        self.on_lost: Callable[[], None] | None = None
        publish.on_state(self._emit_state)

    @property
    def connected(self) -> bool:
        return self._transport is not None and self.publisher.connected

    async def connect(self, *, timeout: float = 10.0) -> None:
        self._check_open()
        if self._transport is None:
            try:
                await self._join(timeout)
            except (BrokerUnavailable, OSError, TimeoutError) as e:
                # no reconnecting to an ingress: without it this worker has no work, and its
                # parent starts it again
                if self._transport is not None:
                    self._transport.close()
                if self.on_lost is not None:
                    self.on_lost()
                if isinstance(e, BrokerUnavailable):
                    raise
                raise BrokerUnavailable(f"ingress {self.path}: {e or type(e).__name__}") from None
        await self.publisher.connect(timeout=timeout)

    async def _join(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._welcome = loop.create_future()
        await asyncio.wait_for(loop.create_unix_connection(lambda: _WorkerProtocol(self), self.path), timeout)
        self._write(wire.hello(self.worker, self.workers, self.token))
        await asyncio.wait_for(asyncio.shield(self._welcome), timeout)

    async def close(self, *, timeout: float = 5.0) -> None:
        if self._closed:
            return
        for sub in list(self._subs):
            await self._detach(sub, timeout)
        self._send_settled()
        self._link.flush()
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        await self.publisher.close(timeout=timeout)
        self._emit_state(BusState.CLOSED)

    async def flush(self, *, timeout: float = 5.0) -> None:
        await self.publisher.flush(timeout=timeout)

    def started(self) -> None:
        """Tell the ingress this worker's node has started (its routes subscribed): the
        parent reports the node online once every worker has."""
        self._write(wire.ready())

    # ---- publishing: the worker's own connection

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                      timeout: float | None = None, **kw: Any) -> None:
        await self.publisher.publish(topic, payload, qos=qos, retain=retain, timeout=timeout, **kw)

    async def publish_many(self, items: Iterable[Outgoing], *, qos: int = 0, retain: bool = False,
                           timeout: float | None = None) -> list[Exception | None]:
        return await self.publisher.publish_many(items, qos=qos, retain=retain, timeout=timeout)

    async def send_many(self, items: Iterable[Outgoing], *, qos: int = 0, retain: bool = False,
                        timeout: float | None = None) -> Awaitable[list[Exception | None]]:
        return await self.publisher.send_many(items, qos=qos, retain=retain, timeout=timeout)

    # ---- subscribing: through the ingress

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0,
                        queue: str | None = None, durable: str | None = None,
                        order: OrderKey | None = None, timeout: float = 10.0) -> Subscription:
        self._check_open()
        validate_filter(topic_filter)
        check_qos(qos)
        if self._transport is None:
            raise BrokerUnavailable(f"ingress {self.path}: not connected")
        sub = Subscription(self, topic_filter, handler, qos=qos, queue=queue, durable=durable)
        sub.start()
        channel = self._by_filter.get((topic_filter, queue))
        if channel is not None:
            channel.subs.append(sub)
            self._subs.append(sub)
            backlog, channel.backlog = channel.backlog, []
            for mid, msg in backlog:
                self._offer(channel, mid, msg)
            return sub
        self._sid += 1
        channel = _Channel(self._sid, topic_filter, queue, [sub])
        self._channels[channel.sid] = self._by_filter[(topic_filter, queue)] = channel
        self._subs.append(sub)
        ok = self._subok[channel.sid] = asyncio.get_running_loop().create_future()
        order = order or OrderKey()
        self._write(wire.sub(channel.sid, topic_filter, qos, order.level, order.rest, queue))
        try:
            await asyncio.wait_for(ok, timeout)
        except BaseException:
            self._drop_channel(channel)
            self._subs.remove(sub)
            await sub.stop(release_queued=True)
            raise
        return sub

    def _drop_channel(self, channel: _Channel) -> None:
        self._channels.pop(channel.sid, None)
        self._by_filter.pop((channel.topic_filter, channel.queue), None)
        self._subok.pop(channel.sid, None)

    def _leave(self, sub: Subscription, kind: int) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        channel = self._by_filter.get((sub.filter, sub.queue))
        if channel is None or sub not in channel.subs:
            return
        channel.subs.remove(sub)
        if not channel.subs:
            self._drop_channel(channel)
            self._write(wire.sid_frame(kind, channel.sid))
            for mid, _msg in channel.backlog:   # after the frame: the ingress keeps them
                self._settle(mid, RELEASED)
            channel.backlog.clear()

    async def _unsubscribe(self, sub: Subscription) -> None:
        self._leave(sub, wire.UNSUB)
        await sub.stop(drop_queued=True)

    async def _detach(self, sub: Subscription, grace: float) -> None:
        """Hand on what arrived (up to `grace`), then give the rest back to the ingress,
        which keeps it for this worker's next process."""
        sub.pause()
        await sub.handed_on(grace)
        self._leave(sub, wire.DETACH)
        await sub.stop(grace=grace, release_queued=True)

    # ---- the link

    @property
    def _transport(self) -> asyncio.Transport | None:
        return self._link.transport

    def _on_frame(self, kind: int, fields: tuple[Any, ...]) -> None:
        if kind == wire.DELIVER:
            self._deliver(*fields)
        elif kind == wire.SUBOK:
            fut = self._subok.pop(fields[0], None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == wire.SUBFAILED:
            fut = self._subok.pop(fields[0], None)
            if fut is not None and not fut.done():
                fut.set_exception(SubscribeDenied(f"ingress: {fields[1]}"))
        elif kind == wire.WELCOME:
            if self._welcome is not None and not self._welcome.done():
                self._welcome.set_result(None)
        elif kind == wire.REFUSED:
            error = BrokerUnavailable(f"ingress {self.path} refused worker {self.worker}: {fields[0]}")
            for fut in [self._welcome, *self._subok.values()]:
                if fut is not None and not fut.done():
                    fut.set_exception(error)
            log.error("%s", error)
        else:
            raise ConfigError(f"unexpected frame kind {kind} from the ingress")

    def _deliver(self, sid: int, mid: int, topic: str, payload: bytes, timestamp_ms: int,
                 envelope: Envelope | None) -> None:
        self.stats.received += 1
        channel = self._channels.get(sid)
        msg = Message(topic, payload, timestamp_ms, envelope)
        if channel is None:
            self._settle(mid, RELEASED)
        elif channel.backlog:
            channel.backlog.append((mid, msg))
        else:
            self._offer(channel, mid, msg)

    def _offer(self, channel: _Channel, mid: int, msg: Message) -> None:
        targets = [s for s in channel.subs if s.active]
        if not targets:
            channel.backlog.append((mid, msg))
            return
        if len(targets) == 1:
            targets[0].offer(msg, functools.partial(self._settle, mid))
            return
        outcomes: list[str] = []

        def done(outcome: str) -> None:
            outcomes.append(outcome)
            if len(outcomes) == len(targets):
                self._settle(mid, RELEASED if RELEASED in outcomes else FAILED if FAILED in outcomes else OK)

        for sub in targets:
            sub.offer(msg, done)

    def _settle(self, mid: int, outcome: str) -> None:
        """Report an outcome; all of one turn of the loop go in one frame."""
        if not self._settled:
            asyncio.get_running_loop().call_soon(self._send_settled)
        self._settled += wire.settled(mid, outcome)

    def _send_settled(self) -> None:
        if self._settled:
            self._write(wire.settle(bytes(self._settled)))
            self._settled.clear()

    def _lost(self) -> None:
        self._link.transport = None
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_exception(BrokerUnavailable(f"ingress {self.path} closed the link"))
        if self._closed:
            return
        log.error("worker %d: the link to the ingress is lost", self.worker)
        self._emit_state(BusState.DISCONNECTED)
        if self.on_lost is not None:
            self.on_lost()


class _WorkerProtocol(BufferedReads):
    def __init__(self, bus: WorkerBus):
        self.bus = bus
        self._in = wire.Reader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.bus._link.transport = transport

    def data_received(self, data: bytes) -> None:
        bus = self.bus
        try:
            for kind, fields in self._in.feed(data):
                bus._on_frame(kind, fields)
        except ConfigError as e:
            log.error("worker %d: %s; closing the link", bus.worker, e)
            if bus._transport is not None:
                bus._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.bus._lost()
