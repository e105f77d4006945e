"""Where a route's results go: a bus (MQTT/NATS/in-process), the local store, a webhook, a log.

Uplink sinks (bus and webhook) go through the store-and-forward outbox by default: a message
is stored durably first and removed only when the uplink acknowledged it, so broker outages
and node restarts lose nothing. `deliver` returns the messages it could not take (with the
error) so the route dead-letters them instead of dropping them.

An uplink may have a circuit breaker (`breaker.CircuitBreaker`; a node gives every uplink sink
one unless its manifest turns it off). Through the outbox, an open breaker holds the messages there and lets one probe through now
and then; without an outbox, an open breaker fails the batch at once with `CircuitOpen`, so
its messages become dead letters (replayable) instead of waiting on a dead uplink's timeout
each. A webhook without an outbox may also retry each message (`retries`, with backoff).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Awaitable

from ..backoff import Backoff
from ..breaker import CircuitBreaker
from ..errors import ConfigError, IotwasmError, SinkRejected
from ..message import Envelope, Message
from ..messaging import mqtt_props as mp
from ..messaging.bus import settled
from ..sqlite import open_db
from .forwarder import Reject
from .outbox import Forwarder, Outbox, send_in_order
from .templates import TopicTemplate

log = logging.getLogger("iotwasm.sinks")

Failures = list[tuple[int, IotwasmError]]


class SinkError(IotwasmError):
    kind = "sink"


#: HTTP answers about the request itself, which sending it again cannot change: the message
#: is dead-lettered (`SinkRejected`). 401/403/404 are not among them — a token or a URL that
#: is wrong now is the endpoint's or the manifest's problem, fixed without losing messages —
#: nor are 408, 425 and 429 (try later) or any 5xx.
REFUSED_FOR_GOOD = frozenset({400, 405, 406, 409, 410, 411, 413, 414, 415, 422})


def _topics(template: TopicTemplate, messages: list[Message], variables: list[dict]):
    topics: list[str | None] = []
    failures: Failures = []
    for i, (m, v) in enumerate(zip(messages, variables)):
        try:
            topics.append(template.fill(v, m.payload, m.topic))
        except KeyError as e:
            topics.append(None)
            failures.append((i, SinkError(str(e.args[0]))))
    return topics, failures


def payload_json(payload: bytes) -> Any:
    """A payload as JSON when it is JSON, else text, else base64 — for stores and webhooks."""
    try:
        return json.loads(payload)
    except ValueError:
        pass
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(payload).decode()}


def storable_envelope(env: Envelope) -> bytes:
    """An envelope as the outbox keeps it: its MQTT 5 property block (bounded, versioned by
    the standard, and what an MQTT 5 bus would send anyway)."""
    return mp.envelope_block(env)


def stored_envelope(blob: bytes) -> Envelope | None:
    return mp.read_envelope(blob, 0)[0]


class UplinkSink(abc.ABC):
    """What bus and webhook sinks share: an optional outbox drained by a forwarder."""

    name: str
    outbox: Outbox | None
    forwarder: Forwarder | None = None
    breaker: CircuitBreaker | None = None
    #: where a stored message the uplink refused for good goes (the node makes it a dead
    #: letter of the route); without it such a refusal holds the outbox like an outage
    reject: Reject | None = None

    @abc.abstractmethod
    async def _submit_window(self, items: list[tuple[str, bytes]]) -> Awaitable[list[Exception | None]]:
        """Hand a window of (topic, payload) on in order; return what confirms it: one result
        per message, None once the uplink acknowledged it (see `Forwarder`)."""

    async def start(self) -> None:
        if self.outbox is not None:
            self.forwarder = Forwarder(self.outbox, self.name, self._submit_window, breaker=self.breaker,
                                       reject=self.reject)
            self.forwarder.start()

    async def _keep(self, items: list[tuple]) -> None:
        """Store durably for the forwarder; returns once on disk. Appends of every sink of
        the outbox made in one loop turn share one transaction (`outbox.GroupCommit`)."""
        outbox = self.outbox
        assert outbox is not None  # only a sink with an outbox keeps
        if items:
            await outbox.append_soon(self.name, items)
        if self.forwarder:
            self.forwarder.notify()

    def backlog(self) -> int:
        return self.outbox.backlog(self.name) if self.outbox else 0

    def status(self) -> dict:
        """Health and counters (docs/connectors.md): degraded while the uplink fails."""
        problem = self.forwarder.last_error if self.forwarder else None
        return {"health": "degraded" if problem else "ok", "problem": problem,
                "counters": {"sent": getattr(self, "sent", 0), "backlog": self.backlog()}}

    async def stop(self, drain_timeout: float = 2.0) -> None:
        if self.forwarder:
            await self.forwarder.stop(drain_timeout)


class BusSink(UplinkSink):
    """Publish to a bus topic template; with an outbox, store-and-forward with QoS 1 acks."""

    def __init__(self, name: str, bus, topic: str, *, qos: int = 1, retain: bool = False,
                 outbox: Outbox | None = None, breaker: CircuitBreaker | None = None):
        self.name = name
        self.breaker = breaker
        self.bus = bus
        self.template = TopicTemplate(topic)
        self.qos = qos
        self.retain = retain
        self.outbox = outbox
        self.sent = 0

    def _carried(self, topic: str, msg: Message) -> tuple:
        """What goes to the bus for `msg`: its envelope too when the bus carries envelopes
        (MQTT 5, in-process); a 3.1.1 or NATS sink sends the payload alone."""
        if msg.envelope is not None and self.bus.envelopes:
            return (topic, msg.payload, msg.envelope)
        return (topic, msg.payload)

    async def _submit_window(self, items: list[tuple]) -> Awaitable[list[Exception | None]]:
        if self.bus.envelopes:  # the outbox keeps an envelope as its MQTT 5 property block
            items = [(i[0], i[1], stored_envelope(i[2])) if len(i) > 2 else i for i in items]
        else:
            items = [i[:2] for i in items]
        try:
            confirm = await self.bus.send_many(items, qos=self.qos, retain=self.retain)
        except IotwasmError as e:
            return settled([e] * len(items))
        if isinstance(confirm, asyncio.Future):   # counted when done, with no task to wait
            confirm.add_done_callback(self._count_sent)
            return confirm

        async def confirmed() -> list[Exception | None]:
            results = await confirm
            self.sent += results.count(None)
            return results

        return confirmed()

    def _count_sent(self, confirm: asyncio.Future) -> None:
        if not confirm.cancelled() and confirm.exception() is None:
            self.sent += confirm.result().count(None)

    async def deliver(self, messages: list[Message], variables: list[dict]) -> Failures:
        return await (await self.submit(messages, variables))

    async def submit(self, messages: list[Message], variables: list[dict]) -> Awaitable[Failures]:
        """Hand the batch on in order; return what waits for the broker's acknowledgements,
        so the route can go on with its next batch meanwhile (`Sink.submit`)."""
        topics, failures = _topics(self.template, messages, variables)
        if self.outbox is not None:
            await self._keep([(t, m.payload, storable_envelope(m.envelope))
                              if m.envelope is not None and self.bus.envelopes else (t, m.payload)
                              for t, m in zip(topics, messages) if t is not None])
            return settled(failures)
        # all at once: one connection keeps them in order, and the acks are awaited together
        idx = [i for i, t in enumerate(topics) if t is not None]
        br = self.breaker
        if br is not None and idx and not br.allow():
            return settled(failures + [(i, br.refusal()) for i in idx])
        try:
            confirm = await self.bus.send_many([self._carried(topics[i], messages[i]) for i in idx],
                                               qos=self.qos, retain=self.retain)
        except IotwasmError as e:
            if br is not None and idx:
                br.failure(e)
            return settled(failures + [(i, e) for i in idx])

        async def confirmed() -> Failures:
            failed: IotwasmError | None = None
            for i, res in zip(idx, await confirm):
                if res is None:
                    self.sent += 1
                elif isinstance(res, IotwasmError):
                    failures.append((i, res))
                    failed = failed or res
                else:
                    raise res
            if br is not None and idx:
                if failed is not None:
                    br.failure(failed)
                else:
                    br.success()
            return failures

        return confirmed()


class WebhookSink(UplinkSink):
    """POST each message as JSON to a URL; through the outbox, so outages are retried."""

    def __init__(self, name: str, url: str, *, timeout_s: float = 5.0, outbox: Outbox | None = None,
                 breaker: CircuitBreaker | None = None, retries: int = 0,
                 retry_backoff: Backoff | None = None):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook url {url!r} must start with http:// or https://")
        self.name = name
        self.breaker = breaker
        #: without an outbox: further attempts per message, `retry_backoff` apart
        self.retries = retries
        self.retry_backoff = retry_backoff or Backoff(0.1, 2.0)
        self.url = url
        self.timeout_s = timeout_s
        self.outbox = outbox
        self.sent = 0

    def _post_sync(self, topic: str, payload: bytes) -> None:
        body = json.dumps({"topic": topic, "payload": payload_json(payload)}).encode()
        req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                if resp.status >= 300:
                    raise SinkError(f"webhook {self.url} answered {resp.status}")
        except urllib.error.HTTPError as e:
            if e.code in REFUSED_FOR_GOOD:
                raise SinkRejected(f"webhook {self.url} refused the message on {topic!r}: "
                                   f"{e.code} {e.reason}") from None
            raise SinkError(f"webhook {self.url} answered {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            raise SinkError(f"webhook {self.url} unreachable: {getattr(e, 'reason', e)}") from None

    async def _send(self, topic: str, payload: bytes) -> None:
        await asyncio.to_thread(self._post_sync, topic, payload)
        self.sent += 1

    async def _submit_window(self, items: list[tuple[str, bytes]]) -> Awaitable[list[Exception | None]]:
        # one request after the other: concurrent POSTs could arrive out of order
        return settled(await send_in_order(self._send, items))

    async def deliver(self, messages: list[Message], variables: list[dict]) -> Failures:
        items = [(m.topic, m.payload) for m in messages]
        if self.outbox is not None:
            await self._keep(items)
            return []
        failures: Failures = []
        br = self.breaker
        for i, (t, p) in enumerate(items):
            for attempt in range(self.retries + 1):
                if br is not None and not br.allow():
                    failures.append((i, br.refusal()))
                    break
                try:
                    await self._send(t, p)
                except SinkRejected as e:   # an answer about the message: not retried,
                    failures.append((i, e))  # and no sign of an endpoint in trouble
                    if br is not None:
                        br.success()
                    break
                except IotwasmError as e:
                    if br is not None:
                        br.failure(e)
                    if attempt == self.retries:
                        failures.append((i, e))
                    else:
                        await asyncio.sleep(self.retry_backoff.next())
                    continue
                if br is not None:
                    br.success()
                self.retry_backoff.reset()
                break
        return failures


class LocalStore:
    """The node's local results store: one SQLite file, one table per store sink."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = open_db(self.path, synchronous="NORMAL", what="store")
        self._lock = threading.Lock()
        self._tables: set[str] = set()

    def _ensure(self, table: str) -> None:
        if table not in self._tables:
            self._db.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (id INTEGER PRIMARY KEY AUTOINCREMENT, '
                             "route TEXT, topic TEXT, payload BLOB, timestamp_ms INTEGER, stored REAL)")
            self._tables.add(table)

    def insert(self, table: str, route: str, messages: list[Message]) -> None:
        now = time.time()
        with self._lock:
            self._ensure(table)
            self._db.execute("BEGIN")
            self._db.executemany(f'INSERT INTO "{table}"(route, topic, payload, timestamp_ms, stored) '
                                 "VALUES (?,?,?,?,?)",
                                 [(route, m.topic, m.payload, m.timestamp_ms, now) for m in messages])
            self._db.execute("COMMIT")

    def query(self, table: str, limit: int = 100, topic_prefix: str | None = None) -> list[dict]:
        with self._lock:
            self._ensure(table)
            sql = f'SELECT id, route, topic, payload, timestamp_ms FROM "{table}"'
            args: list = []
            if topic_prefix:
                sql += " WHERE topic LIKE ?"
                args.append(topic_prefix.replace("%", r"\%") + "%")
            sql += " ORDER BY id DESC LIMIT ?"
            rows = self._db.execute(sql, [*args, limit]).fetchall()
        return [{"id": r[0], "route": r[1], "topic": r[2], "payload": payload_json(r[3]),
                 "timestamp_ms": r[4]} for r in rows]

    def count(self, table: str) -> int:
        with self._lock:
            self._ensure(table)
            return self._db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class StoreSink:
    def __init__(self, name: str, store: LocalStore, table: str, route: str):
        self.name = name
        self.store = store
        self.table = table
        self.route = route

    async def deliver(self, messages: list[Message], variables: list[dict]) -> Failures:
        await asyncio.to_thread(self.store.insert, self.table, self.route, messages)
        return []


class LogSink:
    def __init__(self, name: str, level: str = "info"):
        self.name = name
        self.level = getattr(logging, level.upper())
        self.log = logging.getLogger(f"iotwasm.route.{name}")

    async def deliver(self, messages: list[Message], variables: list[dict]) -> Failures:
        if self.log.isEnabledFor(self.level):
            for m in messages:
                self.log.log(self.level, "%s %s", m.topic, m.payload[:200].decode("utf-8", "replace"))
        return []
