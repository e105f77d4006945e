"""An ingress: one connection to the broker, its messages spread over worker processes.

A node's Python side runs on one core. `iotwasm up --workers N` runs N worker processes,
each a node of its own, behind one ingress in the parent process: the ingress holds the
broker connection (and its persistent session), the workers subscribe through it
(`WorkerBus`) and publish on connections of their own. Each message goes to one worker,
chosen by its order key (`OrderKey`: a route's per-device key), so all messages of one
device go to the same worker, in order, and a worker keeps that order as a node does.

The delivery guarantee is the node's: a message is acknowledged to the broker only when
its worker reports it settled (its results in the worker's outbox, or dropped on purpose).
A worker that goes away leaves its unsettled messages here; they go to the next process
that joins as that worker, in their order, before anything newer. Until then messages for
that worker wait (and, since the broker's acknowledgements are in order, so does the
acknowledgement of later ones): no message is given to another worker, which would break
its device's order. When the ingress itself stops, what is unacknowledged stays with the
broker's session.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ConfigError
from ..message import Message
from . import ingress_wire as wire
from .bus import Bus, Settlement, Subscription
from .topics import OrderKey
from .reads import BufferedReads

log = logging.getLogger("iotwasm.messaging.ingress")

#: messages a worker may hold unsettled before more for it wait (its share of the queue)
WINDOW = 1000


class _Target(Protocol):
    """Where a message's outcome goes: a `Settlement` (fast path) or a future (handler)."""

    def set_result(self, ok: Any) -> None: ...


@dataclass(slots=True)
class _Sent:
    feed: "_Feed"
    msg: Message
    target: _Target


@dataclass(eq=False)
class _Feed:
    """One subscription at the broker, shared by the workers that asked for its filter."""

    topic_filter: str
    queue: str | None
    qos: int
    order: OrderKey
    sub: Subscription | None = None
    #: done once the broker confirmed the subscription (a second worker asking waits for it)
    made: asyncio.Future[None] | None = None
    #: worker index → the worker's subscription id
    members: dict[int, int] = field(default_factory=dict)
    #: workers that unsubscribed (their messages are dropped, as the broker would not send them)
    left: set[int] = field(default_factory=set)


@dataclass(eq=False, slots=True)
class _Worker:
    """One worker index, whichever of its processes is joined now (if any): what is kept
    here outlives a process and goes to the next one that joins as this worker."""

    link: "_Link | None" = None
    #: its node has started (its routes subscribed): see `WorkerBus.started`
    ready: bool = False
    #: messages waiting for it, by message id: those of a process that went away (they go
    #: to its next process first) and those that came while it was away or not yet
    #: subscribed (up to `Ingress.window`; beyond it, the broker's queue waits)
    held: dict[int, _Sent] = field(default_factory=dict)
    #: feed → how many of `held` are that feed's: `Ingress._ready` asks for every message
    #: (a feed's new messages wait behind its held ones), and a count spares it a scan
    held_on: dict[_Feed, int] = field(default_factory=dict)

    def hold(self, mid: int, sent: _Sent) -> None:
        self.held[mid] = sent
        self.held_on[sent.feed] = self.held_on.get(sent.feed, 0) + 1

    def unhold(self, mid: int) -> _Sent:
        sent = self.held.pop(mid)
        n = self.held_on[sent.feed] - 1
        if n:
            self.held_on[sent.feed] = n
        else:
            del self.held_on[sent.feed]
        return sent


class Ingress:
    """Spread `upstream`'s subscriptions over `workers` processes on the socket `path`.

    `token` is the secret a worker shows first (the parent hands it to its children); a
    connection without it is refused. One connection per worker index at a time."""

    def __init__(self, upstream: Bus, path: str, workers: int, token: bytes, *, window: int = WINDOW):
        if workers < 1:
            raise ConfigError(f"an ingress needs at least one worker, not {workers}")
        self.upstream = upstream
        self.path = path
        self.workers = workers
        self.token = token
        self.window = window
        #: worker index → what is known of it
        self.roster = [_Worker() for _ in range(workers)]
        self.feeds: dict[tuple[str, str | None], _Feed] = {}
        self._mid = 0
        self._server: asyncio.AbstractServer | None = None
        self._change: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: messages handed to workers / settled by them
        self.sent = 0
        self.settled = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Link(self), self.path)
        os.chmod(self.path, 0o600)

    async def close(self, *, grace: float = 5.0) -> None:
        """Stop taking messages; the broker's session keeps what is not acknowledged."""
        if self._server is not None:
            self._server.close()
        for feed in list(self.feeds.values()):
            if feed.sub is not None:
                await feed.sub.detach(grace=grace)
        for w in self.roster:
            if w.link is not None and w.link.transport is not None:
                w.link.transport.close()
        self._pulse()

    def connected(self) -> list[int]:
        """The worker indexes with a process joined now."""
        return [k for k, w in enumerate(self.roster) if w.link is not None]

    # ---- choosing a worker

    def worker_of(self, feed: _Feed, topic: str) -> int:
        return zlib.crc32(feed.order.of(topic).encode()) % self.workers

    def _pulse(self) -> None:
        """Wake the handlers waiting for a worker (a join, a subscription, room)."""
        if self._change is not None and not self._change.done():
            self._change.set_result(None)
        self._change = None

    async def _changed(self) -> None:
        if self._change is None:
            self._change = asyncio.get_running_loop().create_future()
        await self._change

    def _ready(self, k: int, feed: _Feed) -> "_Link | None":
        w = self.roster[k]
        link = w.link
        if (link is None or k not in feed.members or len(link.unsettled) >= self.window
                or w.held_on.get(feed)):
            return None
        return link

    def _absent(self, k: int, feed: _Feed) -> bool:
        """Worker `k` is away or not subscribed to `feed` (yet), and there is room to keep
        its messages here meanwhile."""
        w = self.roster[k]
        return (w.link is None or k not in feed.members) and len(w.held) < self.window

    # ---- the broker's side

    async def _feed(self, topic_filter: str, queue: str | None, qos: int, order: OrderKey) -> _Feed:
        key = (topic_filter, queue)
        feed = self.feeds.get(key)
        if feed is not None:
            if feed.order != order:
                log.warning("ingress: %r asked with order %s, already keyed by %s; keeping the first",
                            topic_filter, order, feed.order)
            assert feed.made is not None
            await asyncio.shield(feed.made)
            return feed
        feed = self.feeds[key] = _Feed(topic_filter, queue, qos, order)
        feed.made = asyncio.get_running_loop().create_future()

        def take(msg: Message, settlement: Settlement) -> bool:
            k = self.worker_of(feed, msg.topic)
            if k in feed.left and self.roster[k].link is not None:
                settlement.set_result(True)   # its worker unsubscribed: nobody's message
                return True
            link = self._ready(k, feed)
            if link is not None:
                link.send(feed, msg, settlement)
            elif self._absent(k, feed):       # kept for it; the other workers' messages go on
                self.roster[k].hold(self._next_mid(), _Sent(feed, msg, settlement))
            else:
                return False                  # queued: `handler` waits for the worker
            return True

        async def handler(msg: Message) -> asyncio.Future[Any] | None:
            k = self.worker_of(feed, msg.topic)
            while True:
                if k in feed.left and self.roster[k].link is not None:
                    return None
                link = self._ready(k, feed)
                if link is not None or self._absent(k, feed):
                    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                    if link is not None:
                        link.send(feed, msg, fut)
                    else:
                        self.roster[k].hold(self._next_mid(), _Sent(feed, msg, fut))
                    return fut
                await self._changed()

        try:
            feed.sub = await self.upstream.subscribe(topic_filter, handler, qos=qos, queue=queue)
        except BaseException as e:
            del self.feeds[key]
            feed.made.set_exception(e if isinstance(e, Exception) else ConfigError("cancelled"))
            feed.made.exception()   # retrieved: a second worker may never have asked
            raise
        feed.sub.fast = take
        feed.made.set_result(None)
        return feed

    async def _maybe_unsubscribe(self, feed: _Feed) -> None:
        """Every worker left the feed: end it at the broker too."""
        if feed.members or len(feed.left) < self.workers or feed.sub is None:
            return
        self.feeds.pop((feed.topic_filter, feed.queue), None)
        sub, feed.sub = feed.sub, None
        await sub.unsubscribe()

    def _next_mid(self) -> int:
        self._mid += 1
        return self._mid

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Link(BufferedReads):
    """One worker process's connection."""

    def __init__(self, ingress: Ingress):
        self.ingress = ingress
        self.worker: int | None = None
        self.subs: dict[int, _Feed] = {}
        self.unsettled: dict[int, _Sent] = {}
        self._in = wire.Reader()
        self.out = wire.Writer()
        self._write = self.out.write

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.out.transport

    def send(self, feed: _Feed, msg: Message, target: _Target, mid: int | None = None) -> None:
        assert self.worker is not None
        mid = self.ingress._next_mid() if mid is None else mid
        self.unsettled[mid] = _Sent(feed, msg, target)
        self.ingress.sent += 1
        self._write(wire.deliver(feed.members[self.worker], mid, msg.topic, msg.payload,
                                 msg.timestamp_ms, msg.envelope))

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.out.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            for kind, fields in self._in.feed(data):
                self._on_frame(kind, fields)
        except ConfigError as e:
            log.warning("ingress: worker %s: %s; closing its link", self.worker, e)
            self._refuse(str(e))

    def connection_lost(self, exc: Exception | None) -> None:
        ing, k = self.ingress, self.worker
        self.out.transport = None
        if k is None or ing.roster[k].link is not self:
            return
        w = ing.roster[k]
        w.link = None
        w.ready = False
        for feed in self.subs.values():
            feed.members.pop(k, None)
        # what it had not settled goes to its next process first, in order
        for mid, sent in self.unsettled.items():
            w.hold(mid, sent)
        self.unsettled.clear()
        if w.held:
            log.warning("ingress: worker %d went away with %d message(s) unsettled; they wait for it",
                        k, len(w.held))
        ing._pulse()

    def _refuse(self, why: str) -> None:
        if self.transport is not None:
            self.transport.write(wire.refused(why))
            self.transport.close()

    # ---- frames

    def _on_frame(self, kind: int, fields: tuple[Any, ...]) -> None:
        ing = self.ingress
        if self.worker is None:
            if kind != wire.HELLO:
                raise ConfigError("the first frame must be a hello")
            worker, workers, token = fields
            if not hmac.compare_digest(token, ing.token):
                raise ConfigError("wrong token")
            if workers != ing.workers or not 0 <= worker < workers:
                raise ConfigError(f"worker {worker} of {workers}: this ingress has {ing.workers}")
            if ing.roster[worker].link is not None:
                raise ConfigError(f"worker {worker} is already joined")
            self.worker = worker
            ing.roster[worker].link = self
            self._write(wire.welcome())
            return
        k = self.worker
        if kind == wire.SETTLE:
            full = len(self.unsettled) >= ing.window
            for mid, outcome in fields:
                sent = self.unsettled.pop(mid, None)
                if sent is None:
                    continue
                ing.settled += 1
                if outcome == "released" and k not in sent.feed.left:
                    # given back unprocessed: again, to the worker's next subscription
                    ing.roster[k].hold(mid, sent)
                    if sent.feed.members.get(k) is not None:
                        self._resend_held(sent.feed)
                else:
                    sent.target.set_result(outcome != "failed")
            if full or not self.unsettled:
                ing._pulse()
        elif kind == wire.READY:
            ing.roster[k].ready = True
        elif kind == wire.SUB:
            sid, topic_filter, qos, level, rest, queue = fields
            ing._spawn(self._subscribe(sid, topic_filter, qos, OrderKey(level, rest), queue))
        elif kind in (wire.UNSUB, wire.DETACH):
            (sid,) = fields
            feed = self.subs.pop(sid, None)
            if feed is None or feed.members.get(k) != sid:
                return
            del feed.members[k]
            if kind == wire.UNSUB:
                feed.left.add(k)
                w = ing.roster[k]
                for mid, sent in list(w.held.items()):
                    if sent.feed is feed:     # meant for a subscription that is gone
                        w.unhold(mid).target.set_result(True)
                ing._spawn(ing._maybe_unsubscribe(feed))
            ing._pulse()
        else:
            raise ConfigError(f"unexpected frame kind {kind} from a worker")

    async def _subscribe(self, sid: int, topic_filter: str, qos: int, order: OrderKey,
                         queue: str | None) -> None:
        ing, k = self.ingress, self.worker
        assert k is not None
        try:
            feed = await ing._feed(topic_filter, queue, qos, order)
        except Exception as e:   # this subscription fails, as it would on the broker's bus
            log.warning("ingress: worker %d: subscribing to %r failed: %s", k, topic_filter, e)
            self._write(wire.sub_failed(sid, f"{type(e).__name__}: {e}"))
            return
        if self.transport is None:
            return
        feed.members[k] = sid
        feed.left.discard(k)
        self.subs[sid] = feed
        self._write(wire.sid_frame(wire.SUBOK, sid))
        self._resend_held(feed)
        ing._pulse()

    def _resend_held(self, feed: _Feed) -> None:
        """What this worker's previous process (or subscription) left unsettled on `feed`
        goes again, in arrival order, before anything newer."""
        assert self.worker is not None
        w = self.ingress.roster[self.worker]
        if not w.held_on.get(feed):
            return
        for mid in sorted(m for m, s in w.held.items() if s.feed is feed):
            sent = w.unhold(mid)
            self.send(feed, sent.msg, sent.target, mid)
