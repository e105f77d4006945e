"""The messages an outbox appended lately, kept in memory for its forwarder.

At a steady rate the forwarder reads back, a moment later, exactly the messages the node has
just written: a `SELECT` per window for messages still in hand. `RecentRows` keeps one sink's
newest messages (their ids and what `Outbox.peek` returns) so that those reads come from
memory; SQLite stays the record, and whatever this does not hold is read from it as before.

What makes that safe is one promise, kept under the outbox's lock: every message of the sink
with an id of at least `start` that is in the database is also here, in id order. A read
whose messages all lie above `start` can be answered here; any other goes to SQLite. Messages
leave from the front only: acknowledged (`pop_through`), or the oldest when more than `limit`
are held (the uplink is down and a backlog builds up), which moves `start` past them, so
memory stays bounded and the backlog is read from disk. Anything else that deletes messages
(the overflow policy) makes the outbox forget the sink's recent messages, which is always
safe: the next append starts afresh.
"""

from __future__ import annotations

import bisect

#: messages kept per sink; beyond this the oldest are read from SQLite again
RECENT_ROWS = 4096


class RecentRows:
    """One sink's newest messages, oldest first (see the module's doc)."""

    __slots__ = ("ids", "rows", "head", "start", "limit")

    def __init__(self, start: int, limit: int = RECENT_ROWS):
        self.ids: list[int] = []
        self.rows: list[tuple] = []
        self.head = 0          # entries before it have left
        self.start = start     # every row of the sink from this id on is here
        self.limit = limit

    def __len__(self) -> int:
        return len(self.ids) - self.head

    def extend(self, first: int, rows: list[tuple]) -> None:
        """Rows just committed, with ids from `first` on (ids only grow)."""
        self.ids.extend(range(first, first + len(rows)))
        self.rows.extend(rows)
        if len(self) > self.limit:       # the oldest go back to being read from disk
            self.head = len(self.ids) - self.limit
            self.start = self.ids[self.head]
            self._compact()

    def covers(self, after: int) -> bool:
        """Whether every row with an id above `after` is here."""
        return after >= self.start - 1

    def after(self, after: int, limit: int) -> list[tuple]:
        """Up to `limit` rows with an id above `after` (call only when `covers(after)`)."""
        i = bisect.bisect_right(self.ids, after, self.head)
        return self.rows[i:i + limit]

    def pop_through(self, last: int) -> None:
        """The rows up to id `last` leave (acknowledged: never read again)."""
        self.head = bisect.bisect_right(self.ids, last, self.head)
        self._compact()

    def _compact(self) -> None:
        if self.head > 1024 and self.head * 2 > len(self.ids):
            del self.ids[:self.head], self.rows[:self.head]
            self.head = 0
