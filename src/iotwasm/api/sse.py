"""Server-sent event streams of the API (followed guest logs, node events): a bounded queue fed
from the node's threads, read by one response until the client goes away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol

from fastapi.responses import StreamingResponse


class _Source(Protocol):
    async def get(self) -> Any: ...


def put(q: asyncio.Queue, item: Any) -> None:
    """Offer `item` to a follower's queue (on the loop); a follower too slow to keep up misses
    it (the ring it came from still has it)."""
    try:
        q.put_nowait(item)
    except asyncio.QueueFull:
        pass


class Filtered:
    """The items of a queue that `keep` accepts."""

    def __init__(self, q: asyncio.Queue, keep: Callable[[Any], bool]):
        self.q, self.keep = q, keep

    async def get(self) -> Any:
        while True:
            item = await self.q.get()
            if self.keep(item):
                return item


def stream(initial: list[dict], q: _Source, cleanup: Callable[[], None], event: str) -> StreamingResponse:
    """`initial` then every item of `q` as `event`s, with a keep-alive comment every 15 s of
    silence; `cleanup` runs when the client goes away."""
    async def gen():
        try:
            for item in initial:
                yield f"event: {event}\ndata: {json.dumps(item)}\n\n"
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), timeout=15)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: {event}\ndata: {json.dumps(item)}\n\n"
        finally:
            try:
                cleanup()
            except ValueError:
                pass
    return StreamingResponse(gen(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
