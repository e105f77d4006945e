"""`NatsBus`: NATS core and JetStream through nats-py (asyncio native).

Topics are MQTT-style and mapped to subjects by `topics.to_nats_subject` (topics that have no
one-to-one subject are refused). Core NATS is fire-and-forget; JetStream stores messages and
acknowledges them, which is what qos 1 and durable subscriptions use.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import urllib.parse
from typing import Any, Awaitable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.client import Server as NatsServer
from nats.aio.msg import Msg as NatsMsg
from nats.aio.subscription import Subscription as CoreSubscription
from nats.js.client import JetStreamContext
from nats.js import api as js_api

from ..backoff import Backoff
from ..errors import ConfigError
from ..message import Message
from .bus import FAILED, OK, Bus, BusState, Handler, Subscription, as_payload, check_qos
from .errors import BrokerUnavailable, MessageTooLarge, PublishTimeout
from .topics import (
    OrderKey,
    from_nats_subject,
    matches,
    nats_covers,
    nats_subjects_for_filter,
    to_nats_subject,
    validate_filter,
    validate_topic,
)

log = logging.getLogger("iotwasm.messaging.nats")


def _reserved(subject: str) -> bool:
    first = subject.split(".", 1)[0]
    return first.startswith("$") or first == "_INBOX"


class NatsSubscription(Subscription):
    """A core NATS subscription (one or two subjects feeding one handler queue)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.subjects: list[str] = []
        self.established = False
        self._nats_subs: list[CoreSubscription] = []

    def _upstream_pending(self) -> int:
        return sum(s.pending_msgs for s in self._nats_subs)


class JetStreamSubscription(Subscription):
    """A durable JetStream pull consumer: fetch, handle, ack (or nak on failure).

    Stopping ends its pull requests at the server before it gives anything back (`_end_pull`).
    """

    def __init__(self, *args: Any, batch: int, fetch_timeout: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.subjects: list[str] = []
        self.established = False
        self.psub: JetStreamContext.PullSubscription | None = None  # set once the consumer is bound
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self._fetched: list[NatsMsg] = []
        #: fetch errors other than "nothing to fetch" (reconnects, server restarts)
        self.fetch_errors = 0

    def _upstream_pending(self) -> int:
        return len(self._fetched)

    def _unhanded(self) -> int:
        # a fetch under way counts: cancelled, its pull request would stay open at the server
        # until the unsubscribe reached it, and what it delivered meanwhile (new messages, or
        # ones given back) would be dropped here and come again only after ack_wait
        fetching = self._task is not None and not self._task.done() and not self._busy
        return super()._unhanded() + (1 if fetching and not self.active else 0)

    async def _run(self) -> None:
        bus = self.bus
        if not isinstance(bus, NatsBus):
            raise TypeError(f"durable {self.durable!r}: a JetStream subscription needs a NatsBus, not {bus!r}")
        backoff = Backoff(0.05, 1.0)
        while True:
            if not self._fetched:
                if not self.active:  # paused (detach): what was fetched went on; fetch no more
                    self._progress.set()
                    return
                psub = self.psub
                if psub is None:
                    raise BrokerUnavailable(f"durable {self.durable!r}: fetching before the consumer is bound")
                try:
                    self._fetched = list(await psub.fetch(self.batch, timeout=self.fetch_timeout))
                    backoff.reset()
                except nats.errors.TimeoutError:
                    continue  # nothing to fetch (or a reconnect swallowed the request)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.fetch_errors += 1
                    log.debug("fetch on %r failed: %s: %s", self.durable, type(exc).__name__, exc)
                    # pacing of retries while the server is away, not synchronisation
                    await asyncio.sleep(backoff.next())
                    continue
            while self._fetched:
                nmsg = self._fetched[0]
                try:
                    topic = from_nats_subject(nmsg.subject)
                except Exception:
                    log.warning("durable %r: subject %r has no topic form; terminated",
                                self.durable, nmsg.subject)
                    self._fetched.pop(0)
                    await _settle(nmsg.term())
                    continue
                bus.stats.received += 1
                self._busy = True
                self._fetched.pop(0)
                try:
                    ok, later = await self._call(Message(topic, nmsg.data))
                    if later is not None:  # the handler settles it later (see Subscription)
                        self._settling += 1
                        later.add_done_callback(functools.partial(
                            self._settled, functools.partial(_finish, bus, nmsg)))
                    else:
                        await _finish(bus, nmsg, OK if ok else FAILED)
                finally:
                    self._busy = False
                    self._progress.set()

    async def stop(self, *, grace: float = 5.0, drop_queued: bool = False,
                   release_queued: bool = False) -> None:
        await super().stop(grace=grace, drop_queued=drop_queued, release_queued=release_queued)
        await self._end_pull()
        # fetched but not handled: give them back so another member (or the next run) gets them
        fetched, self._fetched = self._fetched, []
        for nmsg in fetched:
            await _settle(nmsg.nak())

    async def _end_pull(self) -> None:
        """Leave no pull request of this subscription at the server; then messages can be
        given back (nak: what was fetched and not handled here, and what the handler gives
        back later).

        A fetch is a pull request that the server keeps until it is answered in full, expires,
        or is swept because nobody listens on its inbox any more. The client's fetch gives up
        on its own clock, so the server may still hold the last request when the fetch has
        returned (until its expiry is processed, a millisecond or more later). A message given
        back meanwhile meets that request: delivered to it, it goes down with this client; or,
        on nats-server before 2.10.16, the server takes it off the redelivery queue, finds the
        request unusable (expired, or nobody listening) and does not put it back. Either way
        it comes again only after ack_wait (30s by default).

        So: unsubscribe the requests' inbox (the server delivers nothing more to them), then
        ask for the consumer's info — before it answers, the server drops the waiting
        requests that have expired or that nobody listens to. Without the server (a
        reconnect under way) the requests end with their expiry."""
        psub, self.psub = self.psub, None
        if psub is None:
            return
        bus = self.bus
        try:
            await psub.unsubscribe()
        except Exception as exc:
            log.debug("durable %r: unsubscribe failed: %s: %s", self.durable, type(exc).__name__, exc)
            return
        if not isinstance(bus, NatsBus) or not bus.connected:
            return
        try:
            await asyncio.wait_for(psub.consumer_info(), bus.ack_timeout)
        except Exception as exc:
            log.debug("durable %r: consumer info after the unsubscribe failed: %s: %s",
                      self.durable, type(exc).__name__, exc)


async def _finish(bus: NatsBus, nmsg: NatsMsg, outcome: str) -> None:
    """Ack after the handler is done, and wait until the server recorded it (so a new binding
    of the durable does not see it again); nak -> redelivered at once. A lost ack means a
    redelivery after ack_wait."""
    if outcome == OK and bus.connected:
        await _settle(nmsg.ack_sync(timeout=bus.ack_timeout))
    elif outcome == OK:
        await _settle(nmsg.ack())  # sent after the reconnect
    else:
        await _settle(nmsg.nak())


def _merge(have: list[str], want: list[str]) -> list[str]:
    """Stream subjects covering `have` and `want` without overlaps (NATS refuses those): a
    wider subject replaces the ones it covers."""
    out = list(have)
    for s in want:
        if any(nats_covers(h, s) for h in out):
            continue
        out = [h for h in out if not nats_covers(s, h)] + [s]
    return out


async def _flush(nc: NatsClient, timeout: float) -> None:
    """`nc.flush`: nats-py annotates its timeout as int, but waits for float seconds."""
    await nc.flush(timeout=timeout)  # type: ignore[arg-type]


async def _settle(coro: Awaitable[Any]) -> None:
    """Send an ack/nak/term; a lost one is covered by ack_wait redelivery."""
    try:
        await coro
    except Exception as exc:
        log.debug("ack not sent: %s: %s", type(exc).__name__, exc)


class NatsBus(Bus):
    """NATS bus.

    * qos 0 publish: core NATS publish (buffered by the client, at most once).
    * qos 1 publish, `jetstream=True`: JetStream publish, returns after the stream stored the
      message (PubAck). Without JetStream, qos 1 waits for a server round trip (the server
      received it) but nothing is stored.
    * `stream`: a JetStream stream to create if missing and to extend, on demand, with the
      subjects that qos 1 publishes and durable subscriptions use (or with `stream_subjects`,
      MQTT filters, fixed at connect).
    * subscribe `queue=` -> a NATS queue group; `durable=` -> a JetStream durable pull
      consumer, acked after the handler returned, nak'ed when it raised.
    * `retain` is not supported on NATS (ConfigError).
    """

    scheme = "nats"

    def __init__(self, url: str = "nats://127.0.0.1:4222", *, jetstream: bool = False,
                 stream: str | None = None, stream_subjects: list[str] | None = None,
                 publish_timeout: float = 5.0, connect_timeout: float = 2.0,
                 reconnect_time_wait: float = 0.1, reconnect_max: float = 2.0,
                 backoff: Backoff | None = None, max_pending: int = 1000,
                 ack_wait: float = 30.0, ack_timeout: float = 1.0, max_deliver: int = -1,
                 fetch_batch: int = 10,
                 fetch_timeout: float = 1.0, name: str | None = None):
        super().__init__()
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme.lower() != "nats" or not parsed.hostname:
            raise ConfigError(f"not a nats://host[:port] URL: {url!r}")
        if stream is not None:
            jetstream = True
            if not stream or any(c in stream for c in ". *>\t"):
                raise ConfigError(f"bad JetStream stream name {stream!r}")
        self.url = url
        self.jetstream = jetstream
        self.stream = stream
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.reconnect_time_wait = reconnect_time_wait
        #: delays between connection attempts (first connection and reconnects); `backoff`
        #: lets a test pass a seeded one
        self._backoff = backoff or Backoff(reconnect_time_wait, max(reconnect_time_wait, reconnect_max))
        self.max_pending = max_pending
        self.ack_wait = ack_wait
        self.ack_timeout = ack_timeout
        self.max_deliver = max_deliver
        self.fetch_batch = fetch_batch
        self.fetch_timeout = fetch_timeout
        self.name = name
        self._fixed_subjects: list[str] | None = None
        if stream_subjects is not None:
            if stream is None:
                raise ConfigError("stream_subjects needs a stream name")
            subjects: list[str] = []
            for f in stream_subjects:
                subjects.extend(nats_subjects_for_filter(f))
            self._fixed_subjects = subjects
        self._stream_subjects: list[str] = []
        self._stream_known = False
        self._stream_lock = asyncio.Lock()
        self._nc: NatsClient | None = None  # set once the first connection is up
        self._pending_nc: NatsClient | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._js: JetStreamContext | None = None

    # ------------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected and not self._closed

    async def connect(self, *, timeout: float = 10.0) -> None:
        """Connect; from then on nats-py reconnects by itself, forever, until `close`.

        Raises `BrokerUnavailable` when not connected within `timeout`, but keeps trying in
        the background (publishes raise `BrokerUnavailable` meanwhile; subscriptions made
        before are set up once connected). Call `close` to give up.
        """
        self._check_open()
        if self._connect_task is None:
            self._connect_task = asyncio.get_running_loop().create_task(
                self._connect_forever(), name=f"iotwasm-nats-connect:{self.url}")
        try:
            await asyncio.wait_for(asyncio.shield(self._connect_task), timeout)
        except TimeoutError:
            raise BrokerUnavailable(
                f"cannot connect to {self.url} within {timeout}s; still trying in the "
                "background") from None

    async def _connect_forever(self) -> None:
        nc = NatsClient()
        self._pending_nc = nc
        backoff = self._backoff

        async def disconnected_cb() -> None:
            if not self._closed:
                log.warning("nats %s disconnected; reconnecting", self.url)
                self._emit_state(BusState.DISCONNECTED)

        async def reconnected_cb() -> None:
            backoff.reset()
            self.stats.reconnects += 1
            log.info("nats %s reconnected", self.url)
            await self._establish_pending()
            self._emit_state(BusState.CONNECTED)

        async def error_cb(exc: Exception) -> None:
            self.stats.errors += 1
            log.debug("nats %s: %s: %s", self.url, type(exc).__name__, exc)
            if self._nc is None:
                # the first connection: nats-py waits `reconnect_time_wait` before its next
                # attempt and reads it from its options each time
                nc.options["reconnect_time_wait"] = backoff.next()

        def reconnect_delay(servers: list[NatsServer], info: dict[str, Any]) -> tuple[NatsServer | None, float]:
            # asked before every reconnect attempt: any server (None), after this delay
            return None, backoff.next()

        # retries the first connection too, forever (max_reconnect_attempts=-1); nats-py
        # annotates its two durations as int but sleeps and times out on them as float seconds
        await nc.connect(
            servers=[self.url],
            name=self.name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self.reconnect_time_wait,  # type: ignore[arg-type]
            reconnect_to_server_handler=reconnect_delay,
            connect_timeout=self.connect_timeout,  # type: ignore[arg-type]
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            error_cb=error_cb,
        )
        backoff.reset()
        self._nc = nc
        if self.jetstream:
            self._js = nc.jetstream(timeout=self.publish_timeout)
            if self.stream is not None:
                try:
                    await self._ensure_stream(self._fixed_subjects or [], lookup=True)
                except BrokerUnavailable as exc:  # JetStream not ready: done on first use
                    log.warning("nats %s: %s", self.url, exc)
        await self._establish_pending()
        log.info("nats %s connected", self.url)
        self._emit_state(BusState.CONNECTED)

    async def flush(self, *, timeout: float = 5.0) -> None:
        """Round trip to the server: everything published before has reached it, and
        everything it sent before has been read into the subscriptions' queues."""
        nc = self._nc
        if nc is not None and self.connected:
            try:
                await _flush(nc, timeout)
            except nats.errors.TimeoutError:
                raise PublishTimeout(f"{self.url}: flush not answered within {timeout}s") from None

    async def close(self, *, timeout: float = 5.0) -> None:
        if self._closed:
            return
        for sub in list(self._subs):
            await sub.stop(grace=timeout)
        self._subs.clear()
        task = self._connect_task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass
            if self._pending_nc is not None and self._nc is None:
                try:
                    await asyncio.wait_for(self._pending_nc.close(), timeout)
                except BaseException:
                    pass
        if self._nc is not None:
            if self._nc.is_connected:
                try:
                    await _flush(self._nc, timeout)
                except Exception as exc:
                    log.warning("nats %s: flush on close failed: %s", self.url, exc)
            self._closed = True
            try:
                await self._nc.close()
            except Exception as exc:  # pragma: no cover
                log.warning("nats %s: close failed: %s", self.url, exc)
        self._closed = True
        self._emit_state(BusState.CLOSED)

    def _require_connection(self) -> NatsClient:
        if self._closed:
            raise BrokerUnavailable(f"{self.url}: bus is closed")
        return self._client()

    def _client(self) -> NatsClient:
        """The connection; there is none before the first one is up."""
        if self._nc is None:
            raise BrokerUnavailable(f"{self.url}: not connected" + (
                " yet" if self._connect_task is not None else " (call connect first)"))
        return self._nc

    def _jetstream(self) -> JetStreamContext:
        """The JetStream context, made with the first connection of a `jetstream` bus."""
        if self._js is None:
            if not self.jetstream:
                raise ConfigError(f"{self.url}: JetStream is not enabled (jetstream=True)")
            raise BrokerUnavailable(f"{self.url}: not connected yet (JetStream comes with the connection)")
        return self._js

    # ------------------------------------------------------------------ JetStream stream

    async def _ensure_stream(self, subjects: list[str], *, lookup: bool = False) -> None:
        """Create the stream if missing and add the subjects it does not cover yet.

        With `stream_subjects` the stream's subjects are fixed: a subject outside them is a
        ConfigError instead of an extension. `lookup` asks the server even when nothing is
        missing locally (at connect).
        """
        if self.stream is None:
            return
        want = [s for s in subjects if not any(nats_covers(h, s) for h in self._stream_subjects)]
        if not want and not lookup:
            return
        if want and self._fixed_subjects is not None and self._stream_known:
            raise ConfigError(
                f"subject(s) {', '.join(want)} are outside stream {self.stream!r} "
                f"(stream_subjects: {', '.join(self._fixed_subjects)})")
        async with self._stream_lock:
            jsm = self._jetstream()
            try:
                try:
                    info = await jsm.stream_info(self.stream)
                except nats.js.errors.NotFoundError:
                    if not want:
                        return  # created with the first subject that needs it
                    info = await jsm.add_stream(name=self.stream, subjects=_merge([], want),
                                                storage=js_api.StorageType.FILE)
                else:
                    config = info.config
                    have = list(config.subjects or [])
                    merged = _merge(have, want)
                    if merged != have:
                        config.subjects = merged
                        info = await jsm.update_stream(config)
            except nats.js.errors.ServiceUnavailableError as exc:
                raise BrokerUnavailable(f"{self.url}: JetStream unavailable: {exc}") from None
            except nats.js.errors.APIError as exc:
                raise ConfigError(f"stream {self.stream!r}: {exc.description or exc}") from None
            except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError,
                    nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
                    nats.errors.ConnectionReconnectingError) as exc:
                raise BrokerUnavailable(
                    f"{self.url}: JetStream did not answer for stream {self.stream!r} "
                    f"({type(exc).__name__})") from None
            self._stream_subjects = list(info.config.subjects or [])
            self._stream_known = True

    # ------------------------------------------------------------------ publish

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                      timeout: float | None = None) -> None:
        validate_topic(topic)
        subject = to_nats_subject(topic)
        payload = as_payload(payload)
        check_qos(qos)
        if retain:
            raise ConfigError("retain is not supported on NATS (use a JetStream stream instead)")
        nc = self._require_connection()
        if not nc.is_connected:
            raise BrokerUnavailable(f"{self.url}: not connected (reconnecting)")
        wait = self.publish_timeout if timeout is None else timeout
        try:
            if qos == 0:
                await nc.publish(subject, payload)
            elif self._js is not None:
                await self._ensure_stream([subject])
                await self._js.publish(subject, payload, timeout=wait, stream=self.stream)
            else:
                await nc.publish(subject, payload)
                await _flush(nc, wait)
        except nats.errors.TimeoutError:
            raise PublishTimeout(
                f"{self.url}: no acknowledgement for {topic!r} within {wait}s") from None
        except nats.errors.MaxPayloadError:
            raise MessageTooLarge(
                f"{self.url}: the message on {topic!r} has {len(payload):,} bytes; the server "
                f"takes at most {nc.max_payload:,}") from None
        except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError):
            raise BrokerUnavailable(
                f"{self.url}: no JetStream stream answered for {subject!r} (no stream covers "
                "it, or JetStream is not ready)") from None
        except nats.js.errors.ServiceUnavailableError as exc:
            raise BrokerUnavailable(f"{self.url}: JetStream unavailable: {exc}") from None
        except nats.js.errors.APIError as exc:
            raise ConfigError(f"{self.url}: JetStream refused {subject!r}: {exc}") from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                nats.errors.OutboundBufferLimitError, nats.errors.StaleConnectionError,
                OSError) as exc:
            raise BrokerUnavailable(f"{self.url}: {type(exc).__name__}") from None
        self.stats.published += 1

    # ------------------------------------------------------------------ subscribe

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0,
                        queue: str | None = None, durable: str | None = None,
                        order: OrderKey | None = None) -> Subscription:
        """Core subscription (qos is ignored: core NATS has no acknowledgements), or, with
        `durable`, a JetStream durable pull consumer. `queue` on a durable is ignored: every
        subscriber that binds the same durable name already shares its messages.

        Before the first connection is up the subscription is registered and set up as soon
        as it is; afterwards this returns once the server has it.
        """
        self._check_open()
        validate_filter(topic_filter)
        check_qos(qos)
        if durable is not None:
            if not self.jetstream:
                raise ConfigError(f"durable subscription {durable!r} needs jetstream=True")
            if not durable or any(c in durable for c in ". *>\t"):
                raise ConfigError(f"bad durable name {durable!r}")
            # NATS 'a.>' does not match 'a'; a durable consumer has one filter subject
            subjects = [to_nats_subject(topic_filter)]
            sub: NatsSubscription | JetStreamSubscription = JetStreamSubscription(
                self, topic_filter, handler, qos=qos, queue=queue, durable=durable,
                batch=self.fetch_batch, fetch_timeout=self.fetch_timeout)
        else:
            subjects = nats_subjects_for_filter(topic_filter)
            sub = NatsSubscription(self, topic_filter, handler, qos=qos, queue=queue)
            sub.start()
        sub.subjects = subjects
        self._subs.append(sub)
        if self._nc is not None:
            try:
                await self._establish(sub)
            except BaseException:
                await self._drop(sub)
                raise
        return sub

    async def _establish_pending(self) -> None:
        for sub in list(self._subs):
            if not isinstance(sub, (NatsSubscription, JetStreamSubscription)):
                raise TypeError(f"nats {self.url}: {sub!r} was not made by this bus")
            if sub.active and not sub.established:
                try:
                    await self._establish(sub)
                except Exception as exc:
                    self.stats.errors += 1
                    log.error("nats %s: cannot set up subscription %r: %s (retried on the "
                              "next reconnect)", self.url, sub.filter, exc)

    async def _establish(self, sub: Subscription) -> None:
        if isinstance(sub, JetStreamSubscription):
            await self._establish_durable(sub)
            return
        assert isinstance(sub, NatsSubscription)
        topic_filter = sub.filter

        async def enqueue(nmsg: NatsMsg) -> None:
            # never awaits: a message is always in nats-py's queue, ours, or the handler
            subject = nmsg.subject
            if _reserved(subject) or not sub.active:
                return
            try:
                topic = from_nats_subject(subject)
            except Exception:
                return
            if not matches(topic_filter, topic):
                return
            self.stats.received += 1
            if sub.queued() >= self.max_pending or not sub.offer(Message(topic, nmsg.data)):
                self.stats.dropped += 1

        try:
            for s in sub.subjects:
                sub._nats_subs.append(
                    await self._client().subscribe(s, queue=sub.queue or "", cb=enqueue))
        except nats.errors.Error as exc:
            for ns in sub._nats_subs:
                try:
                    await ns.unsubscribe()
                except Exception:
                    pass
            sub._nats_subs.clear()
            raise BrokerUnavailable(
                f"{self.url}: subscribe to {topic_filter!r} failed: {exc}") from None
        sub.established = True

    async def _establish_durable(self, sub: "JetStreamSubscription") -> None:
        durable = sub.durable
        subject = sub.subjects[0]
        await self._ensure_stream([subject])
        config = js_api.ConsumerConfig(
            durable_name=durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_pending,
            deliver_policy=js_api.DeliverPolicy.ALL,
            filter_subject=subject,
        )
        try:
            psub = await self._jetstream().pull_subscribe(subject, durable=durable, stream=self.stream,
                                                 config=config)
        except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError,
                nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            raise BrokerUnavailable(
                f"{self.url}: JetStream did not answer creating durable {durable!r} "
                f"({type(exc).__name__})") from None
        except nats.js.errors.APIError as exc:
            raise ConfigError(f"{self.url}: durable {durable!r} on {subject!r}: {exc}") from None
        sub.psub = psub
        sub.established = True
        sub.start()

    async def _drop(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        await sub.stop(drop_queued=True)
        if isinstance(sub, NatsSubscription):
            for ns in sub._nats_subs:
                try:
                    await ns.unsubscribe()
                except Exception:
                    pass
        # a JetStream subscription ended its pull requests in stop; the durable consumer stays

    async def _unsubscribe(self, sub: Subscription) -> None:
        await self._drop(sub)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self.connected else "disconnected"
        js = f" stream={self.stream!r}" if self.stream else " jetstream" if self.jetstream else ""
        return f"<NatsBus {self.url}{js} {state}>"


__all__ = ["NatsBus", "NatsSubscription", "JetStreamSubscription"]
