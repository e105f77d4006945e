"""NATS connection: connecting, reconnecting, flushing and closing.

`NatsConnection` is the part of `NatsBus` that makes the connection and keeps it: nats-py
retries the first connection and every reconnect forever, with the delays of the bus's
backoff; once connected (and after each reconnect) the bus sets up the subscriptions not yet
made and reports its state. Closing stops the subscriptions, then flushes and closes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.client import Server as NatsServer

from .bus import BusState
from .errors import BrokerUnavailable, PublishTimeout
from .nats_state import NatsState

log = logging.getLogger("iotwasm.messaging.nats")


async def flush_within(nc: NatsClient, timeout: float) -> None:
    """`nc.flush`: nats-py annotates its timeout as int, but waits for float seconds."""
    await nc.flush(timeout=timeout)  # type: ignore[arg-type]


class NatsConnection(NatsState):
    """Connection half of `NatsBus` (a mixin: the state lives on the bus)."""

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
                await flush_within(nc, timeout)
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
                    await flush_within(self._nc, timeout)
                except Exception as exc:
                    log.warning("nats %s: flush on close failed: %s", self.url, exc)
            self._closed = True
            try:
                await self._nc.close()
            except Exception as exc:  # pragma: no cover
                log.warning("nats %s: close failed: %s", self.url, exc)
        self._closed = True
        self._emit_state(BusState.CLOSED)
