"""`NatsBus`: NATS core and JetStream through nats-py (asyncio native).

Topics are MQTT-style and mapped to subjects by `topics.to_nats_subject` (topics that have no
one-to-one subject are refused). Core NATS is fire-and-forget; JetStream stores messages and
acknowledges them, which is what qos 1 and durable subscriptions use.

The bus is cut along its seams, one file each:

* nats_connection.py — connecting, reconnects, flush and close;
* nats_inbound.py — subscriptions and the flow of incoming core messages;
* nats_jetstream.py — the JetStream stream and durable pull consumers (fetch, ack, nak).

nats_state.py declares the state they share; this file sets it up and holds publishing.
"""

from __future__ import annotations

import asyncio
import urllib.parse

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from ..backoff import Backoff
from ..errors import ConfigError
from .bus import as_payload, check_qos
from .errors import BrokerUnavailable, MessageTooLarge, PublishTimeout
from .nats_connection import NatsConnection, flush_within
from .nats_inbound import NatsInbound, NatsSubscription
from .nats_jetstream import JetStreamSubscription, NatsJetStream
from .topics import nats_subjects_for_filter, to_nats_subject, validate_topic


class NatsBus(NatsConnection, NatsInbound, NatsJetStream):
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
                await flush_within(nc, wait)
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

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self.connected else "disconnected"
        js = f" stream={self.stream!r}" if self.stream else " jetstream" if self.jetstream else ""
        return f"<NatsBus {self.url}{js} {state}>"


__all__ = ["NatsBus", "NatsSubscription", "JetStreamSubscription"]
