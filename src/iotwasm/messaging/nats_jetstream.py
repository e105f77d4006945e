"""JetStream: the bus's stream and its durable pull consumers.

`JetStreamSubscription` fetches from a durable consumer, hands each message to its handler
and acks it once handled (naks it when the handler failed); stopping ends its pull requests
at the server before anything is given back. `NatsJetStream` is the part of `NatsBus` that
creates the stream and extends it with the subjects that qos 1 publishes and durable
subscriptions use, and binds a durable subscription to its consumer. Kept apart from core
NATS because this is where messages are stored and acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Awaitable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg as NatsMsg
from nats.js.client import JetStreamContext
from nats.js import api as js_api

from ..backoff import Backoff
from ..errors import ConfigError
from ..message import Message
from .bus import FAILED, OK, Subscription
from .errors import BrokerUnavailable
from .nats_state import NatsState
from .topics import from_nats_subject, nats_covers

log = logging.getLogger("iotwasm.messaging.nats")


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
        if not isinstance(bus, NatsState):
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
        if not isinstance(bus, NatsState) or not bus.connected:
            return
        try:
            await asyncio.wait_for(psub.consumer_info(), bus.ack_timeout)
        except Exception as exc:
            log.debug("durable %r: consumer info after the unsubscribe failed: %s: %s",
                      self.durable, type(exc).__name__, exc)


async def _finish(bus: NatsState, nmsg: NatsMsg, outcome: str) -> None:
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


async def _settle(coro: Awaitable[Any]) -> None:
    """Send an ack/nak/term; a lost one is covered by ack_wait redelivery."""
    try:
        await coro
    except Exception as exc:
        log.debug("ack not sent: %s: %s", type(exc).__name__, exc)


class NatsJetStream(NatsState):
    """JetStream half of `NatsBus` (a mixin: the state lives on the bus)."""

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
