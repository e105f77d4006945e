"""The state `NatsBus` keeps, declared once for the parts that share it.

`NatsConnection`, `NatsInbound` and `NatsJetStream` are mixins of `NatsBus`: the state lives
on the bus (set in `NatsBus.__init__`), and each part reads and writes it. `NatsState` names
that state and the methods one part calls on another, so each file type-checks on its own,
and holds the accessors of the connection and the JetStream context: each returns it, or
raises an error that says why there is none.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from ..backoff import Backoff
from ..errors import ConfigError
from .bus import Bus
from .errors import BrokerUnavailable

if TYPE_CHECKING:
    from .nats_jetstream import JetStreamSubscription


class NatsState(Bus):
    """Annotations of `NatsBus`'s shared state (see the module's doc)."""

    url: str
    jetstream: bool
    stream: str | None
    publish_timeout: float
    connect_timeout: float
    reconnect_time_wait: float
    max_pending: int
    ack_wait: float
    ack_timeout: float
    max_deliver: int
    fetch_batch: int
    fetch_timeout: float
    name: str | None

    _backoff: Backoff
    _fixed_subjects: list[str] | None
    _stream_subjects: list[str]
    _stream_known: bool
    _stream_lock: asyncio.Lock
    _nc: NatsClient | None
    _pending_nc: NatsClient | None
    _connect_task: asyncio.Task[None] | None
    _js: JetStreamContext | None

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

    if TYPE_CHECKING:
        # what one part calls on another
        async def _ensure_stream(self, subjects: list[str], *, lookup: bool = False) -> None: ...
        async def _establish_pending(self) -> None: ...
        async def _establish_durable(self, sub: JetStreamSubscription) -> None: ...
