"""The rows an outbox appended lately, kept in memory for its forwarder.

At a steady rate the forwarder reads back, a moment later, exactly the rows the node has just
written: a `SELECT` per window for rows still in hand, and a `SELECT` of their sizes before
they are deleted. `RecentRows` keeps one sink's newest rows (their ids, what `Outbox.peek`
returns, and their sizes) so that both come from memory; SQLite stays the record, and
whatever this does not hold is read from it as before.

What makes that safe is one promise, kept under the outbox's lock: every row of the sink with
an id of at least `start` that is in the database is also here, in id order. A read whose
rows all lie above `start` can be answered here; any other goes to SQLite. Rows leave from
the front only: acknowledged (`pop_through`), or the oldest when more than `limit` are held
(the uplink is down and a backlog builds up), which moves `start` past them, so memory stays
bounded and the backlog is read from disk. Anything else that deletes rows (the overflow
policy, explicit acknowledgements) makes the outbox forget the sink's recent rows, which is
always safe: the next append starts afresh.
"""

from __future__ import annotations

import bisect

#: rows kept per sink; beyond this the oldest are read from SQLite again
RECENT_ROWS = 4096


class RecentRows:
    """One sink's newest rows, oldest first (see the module's doc)."""

    __slots__ = ("ids", "rows", "sizes", "head", "start", "limit")

    def __init__(self, start: int, limit: int = RECENT_ROWS):
        self.ids: list[int] = []
        self.rows: list[tuple] = []
        self.sizes: list[int] = []
        self.head = 0          # entries before it have left
        self.start = start     # every row of the sink from this id on is here
        self.limit = limit

    def __len__(self) -> int:
        return len(self.ids) - self.head

    def add(self, row_id: int, row: tuple, size: int) -> None:
        """A row just committed (ids only grow)."""
        self.ids.append(row_id)
        self.rows.append(row)
        self.sizes.append(size)
        if len(self) > self.limit:       # the oldest go back to being read from disk
            self.head += 1
            self.start = self.ids[self.head]
            self._compact()

    def covers(self, after: int) -> bool:
        """Whether every row with an id above `after` is here."""
        return after >= self.start - 1

    def after(self, after: int, limit: int) -> list[tuple]:
        """Up to `limit` rows with an id above `after` (call only when `covers(after)`)."""
        i = bisect.bisect_right(self.ids, after, self.head)
        return self.rows[i:i + limit]

    def pop_through(self, first: int, last: int) -> tuple[int, int, bool]:
        """The rows up to id `last` leave (acknowledged: never read again). Returns how
        many, their bytes, and whether that is all the sink's rows from `first` to `last`
        (so their count and size need not be read back before they are deleted)."""
        exact = first >= self.start
        end = bisect.bisect_right(self.ids, last, self.head)
        n = end - self.head
        size = sum(self.sizes[self.head:end])
        self.head = end
        self._compact()
        return n, size, exact

    def _compact(self) -> None:
        if self.head > 1024 and self.head * 2 > len(self.ids):
            del self.ids[:self.head], self.rows[:self.head], self.sizes[:self.head]
            self.head = 0
