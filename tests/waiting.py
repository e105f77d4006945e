"""Waiting in async tests for what a node does on its own time: `wait_for` polls a condition
(a plain call or a coroutine) until it holds, and fails the test naming what never happened;
`until_set` looks at a condition again each time an event says something changed."""

from __future__ import annotations

import asyncio
import time


async def wait_for(cond, timeout: float = 20.0, what: str = "condition", every: float = 0.02):
    """The first truthy value of `cond()` (awaited when it returns a coroutine), polled every
    `every` seconds; an AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def until_set(changed: asyncio.Event, predicate, timeout: float) -> bool:
    """Whether `predicate()` came to hold within `timeout` seconds, looked at again each time
    `changed` is set (and cleared before each wait)."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        return False
    return True
