"""Group commit: the outbox's appends of one turn of the event loop in one transaction.

Split from `outbox` (the table, its bounds and acknowledgements); `outbox` re-exports it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .forwarder import INLINE_ROWS

if TYPE_CHECKING:
    from .outbox import Outbox


class GroupCommit:
    """Appends of one outbox from the event loop, written together: one transaction for all.

    Every lane of every route appends its batch's results before its source acknowledges
    them; committing each batch alone made two SQLite commits per message at low batch sizes
    the main cost of the durable path. Here the appends made ready in one turn of the loop
    are written in one transaction at the end of that turn, and while a large group is being
    written on a thread the next appends gather for the following one. (No waiting for more:
    a lane awaits its append before its source acknowledges, and the broker's in-flight
    window bounds unacknowledged messages, so a wait of 1 ms per group halved throughput.) A caller's future
    resolves only after the transaction holding its rows committed, so nothing is
    acknowledged before it is stored; a failed write fails every caller of its group (none of
    their rows was stored), and a request refused by the ``reject`` policy fails alone.

    A group of up to `INLINE_ROWS` rows is written on the loop (no fsync under WAL with
    ``synchronous=NORMAL``; a thread hop costs more than the insert); a larger one on a thread.
    """

    def __init__(self, outbox: Outbox, loop: asyncio.AbstractEventLoop):
        self.outbox = outbox
        self.loop = loop
        self._pending: list[tuple[str, list[tuple], asyncio.Future]] = []
        self._busy = False
        #: transactions written and requests they carried, for tests and benchmarks
        self.groups = 0
        self.requests = 0

    def add(self, sink: str, items: list[tuple]) -> asyncio.Future:
        fut = self.loop.create_future()
        self._pending.append((sink, items, fut))
        if not self._busy:
            self._busy = True
            self.loop.call_soon(self._flush)   # after the callbacks already ready this turn
        return fut

    def _flush(self) -> None:
        group, self._pending = self._pending, []
        self.groups += 1
        self.requests += len(group)
        requests = [(sink, items) for sink, items, _ in group]
        if sum(len(items) for _, items in requests) <= INLINE_ROWS:
            self._settle(group, self._write(requests))
        else:
            self.loop.create_task(self._write_off_loop(group, requests))

    def _write(self, requests: list[tuple[str, list[tuple]]]) -> list[int | BaseException]:
        try:
            return self.outbox.append_many(requests)
        except Exception as e:   # e.g. the outbox was closed: every caller learns it
            return [e] * len(requests)

    async def _write_off_loop(self, group: list, requests: list[tuple[str, list[tuple]]]) -> None:
        try:
            results = await self.outbox.off_loop(self._write, requests)
        except Exception as e:   # the outbox was closed meanwhile: every caller learns it
            results = [e] * len(requests)
        self._settle(group, results)

    def _settle(self, group: list, results: list[int | BaseException]) -> None:
        for (_, _, fut), res in zip(group, results):
            if fut.done():   # its caller was cancelled; its rows are stored all the same
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)
        if self._pending:
            self.loop.call_soon(self._flush)
        else:
            self._busy = False
