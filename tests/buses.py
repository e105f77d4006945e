"""Helpers for the bus tests (tests/test_bus_*.py, tests/test_mqtt5_*.py) against real brokers.

A test's coroutine runs with a bound (`run`); `Inbox` is a handler that records messages and
`States` records a bus's state events, both awaited on events (messages arriving, connection
state changes) with bounded timeouts that say what was awaited; what reports no event is polled
with a deadline (`poll_until`). `publish_reliably` is the caller side of at-least-once and
`RecordedBackoff` the shared backoff, recording what a bus asked of it.
"""

from __future__ import annotations

import asyncio
import time

from iotwasm.backoff import Backoff
from iotwasm.message import Message
from iotwasm.messaging import BrokerUnavailable, BusState, PublishTimeout
from waiting import until_set

TEST_TIMEOUT = 30.0


def run(coro, timeout: float = TEST_TIMEOUT):
    async def bounded():
        try:
            async with asyncio.timeout(timeout) as scope:
                return await coro
        except TimeoutError:
            if scope.expired():
                raise AssertionError(f"test did not finish within {timeout}s") from None
            raise

    return asyncio.run(bounded())


class Inbox:
    """A handler that records messages and lets a test await a condition on them."""

    def __init__(self, fail_on=None, changed: asyncio.Event | None = None):
        self.messages: list[Message] = []
        self.attempts: list[bytes] = []
        self.fail_on = fail_on
        # inboxes that share one event can be awaited together
        self._changed = changed or asyncio.Event()

    async def __call__(self, msg: Message) -> None:
        self.attempts.append(msg.payload)
        self._changed.set()
        if self.fail_on is not None and self.fail_on(msg, self):
            raise RuntimeError(f"handler refuses {msg.payload!r}")
        self.messages.append(msg)

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]

    @property
    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]

    async def wait_until(self, predicate, what: str, timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; have {len(self.messages)} "
                f"message(s): {self.payloads[:10]}{'...' if len(self.messages) > 10 else ''}"
            ) from None

    async def wait_count(self, n: int, timeout: float = 10.0) -> None:
        await self.wait_until(lambda i: len(i.messages) >= n, f"{n} message(s)", timeout)


class States:
    """Records a bus's state events; awaits 'connected now' or a given event."""

    def __init__(self, bus):
        self.bus = bus
        self.seen: list[BusState] = []
        self._changed = asyncio.Event()
        bus.on_state(self._record)

    def _record(self, state: BusState) -> None:
        self.seen.append(state)
        self._changed.set()

    async def wait(self, predicate, what: str, timeout: float = 15.0) -> None:
        if not await until_set(self._changed, predicate, timeout):
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; states seen: "
                f"{[s.value for s in self.seen]}"
            )

    async def until_connected(self, timeout: float = 15.0) -> None:
        await self.wait(lambda: self.bus.connected, "the bus to be connected", timeout)

    async def until_seen(self, state: BusState, count: int = 1, timeout: float = 15.0) -> None:
        await self.wait(lambda: self.seen.count(state) >= count,
                        f"{count}x {state.value}", timeout)


async def publish_reliably(bus, states: States, topic: str, seqs, *, failures: list,
                           failed: asyncio.Event | None = None, timeout: float = 2.0,
                           before=None) -> None:
    """The caller side of at-least-once: retry each message until the broker confirmed it.

    `before(seq)` runs before each message's first attempt (a test kills the broker there).
    """
    for seq in seqs:
        if before is not None:
            before(seq)
        while True:
            try:
                await bus.publish(topic, str(seq).encode(), qos=1, timeout=timeout)
                break
            except BrokerUnavailable:
                failures.append(("unavailable", seq))
                if failed is not None:
                    failed.set()
                if bus.connected:  # e.g. JetStream still starting: pace the retries
                    await asyncio.sleep(0.05)
                await states.until_connected()
            except PublishTimeout:
                failures.append(("timeout", seq))
                if failed is not None:
                    failed.set()


def seqs_of(inbox: Inbox) -> set[int]:
    return {int(p) for p in inbox.payloads}


async def poll_until(cond, what: str, timeout: float = 15.0) -> None:
    """For what reports no event (a failed connection attempt): poll, with a generous deadline."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class RecordedBackoff(Backoff):
    """The shared backoff, recording what the bus asked of it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def next(self) -> float:
        self.calls.append("next")
        return super().next()

    def reset(self) -> None:
        self.calls.append("reset")
        super().reset()
