"""The queue of one route lane, and when its lingering backs off (see `iotwasm.pipeline.route`)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

from .worker import resolve

T = TypeVar("T")


class Lane(Generic[T]):
    """A lane's queue: first in, first out; `put` waits while `capacity` items wait. Closing
    it (hand-over, stop) ends a waiting `get` with None and a waiting `put` with False, so
    neither the lane task nor a blocked source waits on a route that no longer takes work.
    Unlike `asyncio.Queue`, what is queued can be taken out whole (`close`) and put back in
    front (`items.extendleft`) — what a route's hand-over does."""

    __slots__ = ("_getter", "_putters", "_want", "capacity", "closed", "items")

    def __init__(self, capacity: int):
        self.items: deque[T] = deque()
        self.capacity = capacity
        self.closed = False
        self._getter: asyncio.Future | None = None
        #: how many queued items wake `_getter` (more than one while `gather` waits)
        self._want = 1
        self._putters: deque[asyncio.Future] = deque()

    def qsize(self) -> int:
        return len(self.items)

    def empty(self) -> bool:
        return not self.items

    def full(self) -> bool:
        return len(self.items) >= self.capacity

    def has_room(self) -> bool:
        """Whether an item put now goes in at once, behind no waiting `put`."""
        return len(self.items) < self.capacity and not self._putters and not self.closed

    def put_nowait(self, item: T) -> None:
        self.items.append(item)
        getter = self._getter
        if getter is not None and len(self.items) >= self._want and not getter.done():
            getter.set_result(None)

    async def put(self, item: T) -> bool:
        """Queue `item`, waiting for room; False (not queued) once the lane is closed."""
        while self.full() and not self.closed:
            waiter = asyncio.get_running_loop().create_future()
            self._putters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._putters:
                    self._putters.remove(waiter)
        if self.closed:
            return False
        self.put_nowait(item)
        return True

    def get_nowait(self) -> T:
        item = self.items.popleft()
        self._wake_putter()
        return item

    async def get(self) -> T | None:
        while not self.items:
            if self.closed:
                return None
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        return self.get_nowait()

    async def gather(self, want: int, timeout: float) -> None:
        """Wait until `want` items are queued, at most `timeout` seconds (ends at once when
        closed): a lane lingering for company stops lingering as soon as its batch is big
        enough, instead of sleeping out the whole linger time."""
        if len(self.items) >= want or self.closed:
            return
        loop = asyncio.get_running_loop()
        self._want = want
        getter = self._getter = loop.create_future()
        timer = loop.call_later(timeout, resolve, getter, None)
        try:
            await getter
        finally:
            timer.cancel()
            self._getter = None
            self._want = 1

    def close(self) -> list[T]:
        """Take no more work; returns what was queued (in order) and wakes every waiter."""
        self.closed = True
        items, self.items = list(self.items), deque()
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)
        for waiter in self._putters:
            if not waiter.done():
                waiter.set_result(None)
        return items

    def _wake_putter(self) -> None:
        while self._putters:
            waiter = self._putters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


#: consecutive lingers that gathered nothing after which the backoff stops growing: a lane
#: then lingers once in 2**6 = 64 batches while it still gathers nothing
MAX_EMPTY_LINGERS = 6


class LingerBackoff:
    """Whether a lane that would linger for company may, judged by what its lingering gathered.

    A linger that gathered nothing says the source sends no more until this batch is through:
    a client that waits for each answer before it sends the next, or a window of in-flight
    messages that is all in this batch already. Lingering then only delays every message
    (a client posting one at a time went from 15,000 to 900 messages a second with a 2 ms
    linger). So after n such lingers in a row the lane runs the next 2**n - 1 batches at once
    (n at most `MAX_EMPTY_LINGERS`), and the first linger that gathers company ends the
    backoff. A steady stream whose messages come on their own fills every linger and never
    backs off."""

    __slots__ = ("_empty", "_skip")

    def __init__(self) -> None:
        self._empty = 0
        self._skip = 0

    def allows(self) -> bool:
        """May the lane linger now? (Called only when it would; a no counts as a skipped batch.)"""
        if self._skip:
            self._skip -= 1
            return False
        return True

    def gathered(self, company: bool) -> None:
        """What the lane's linger brought: `company` when anything arrived during it."""
        if company:
            self._empty = 0
        else:
            self._empty = min(self._empty + 1, MAX_EMPTY_LINGERS)
            self._skip = (1 << self._empty) - 1
