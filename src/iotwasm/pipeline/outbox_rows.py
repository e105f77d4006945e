"""How the outbox lays messages out in its rows: a batch of small messages shares one row.

A row has an id and a count `n`, and holds the messages with ids ``id`` to ``id + n - 1``,
in order. A row of one message (``n = 1``: every row of a file written before batches were
packed, and any message too large to share) keeps its topic, payload and envelope in their
own columns. A row of several keeps them packed in its payload column, topic empty and
envelope NULL::

    n topic lengths, n payload lengths, n (envelope length + 1), each a little-endian uint32;
    then the n topics, the n payloads and the envelopes, back to back

(a 0 there means the message has no envelope). Why: the durable path commits every
batch before its messages are acknowledged, and SQLite's cost is per row — an insert into the
table and its ``(sink, id)`` index, and later a delete from both. A batch of 14 messages took
75 µs of CPU as 14 rows and 22 µs as one (docs/benchmarks.md, "One outbox row per batch").

A row's size, for the outbox's byte bound, is what SQLite's ``length`` gives for it; the
header counts with a packed row.
"""

from __future__ import annotations

import sqlite3
import struct

#: at most this many messages share a row
ROW_MESSAGES = 64
#: messages are packed into one row until it holds this many bytes; a message this large or
#: larger has a row of its own
ROW_BYTES = 64 * 1024

def item_size(item: tuple) -> int:
    """An item's size as a row of its own ((topic, payload) or (topic, payload, envelope))."""
    return len(item[0]) + len(item[1]) + (len(item[2]) if len(item) > 2 else 0)


def rows_of(sink: str, first: int, items: list[tuple], created: float) -> tuple[list[tuple], int]:
    """The rows (id, sink, topic, payload, created, envelope, n) that store `items` with ids
    from `first` on, and their size in bytes."""
    if 2 <= len(items) <= ROW_MESSAGES:
        blob = pack(items, ROW_BYTES)
        if blob is not None:   # a batch of small messages, as usual: one row
            return [(first, sink, "", blob, created, None, len(items))], len(blob)
    rows: list[tuple] = []
    size = 0
    i, count = 0, len(items)
    while i < count:
        j, packed = i, 0
        while j < count and j - i < ROW_MESSAGES:
            s = item_size(items[j])
            if s >= ROW_BYTES or (packed and packed + s > ROW_BYTES):
                break
            packed += s
            j += 1
        if j - i >= 2:
            blob = pack(items[i:j])
            assert blob is not None
            rows.append((first + i, sink, "", blob, created, None, j - i))
            size += len(blob)
        else:
            j = i + 1
            item = items[i]
            rows.append((first + i, sink, item[0], item[1], created, item[2] if len(item) > 2 else None, 1))
            size += item_size(item)
        i = j
    return rows, size


def pack(items: list[tuple], limit: int | None = None) -> bytes | None:
    """Items (topic, payload[, envelope]) as one row's payload; None when `limit` is given
    and their bytes come to more, or one of them alone comes to as much."""
    n = len(items)
    try:   # (str topic, payload) pairs: the usual
        topics = [t.encode() for t, _ in items]
        payloads = [p for _, p in items]
        envelopes: list[bytes] = []
        marks = [0] * n
    except (ValueError, AttributeError):   # envelopes, or topics given as bytes
        topics = [i[0].encode() if isinstance(i[0], str) else i[0] for i in items]
        payloads = [i[1] for i in items]
        envelopes = [i[2] for i in items if len(i) > 2 and i[2] is not None]
        marks = [len(i[2]) + 1 if len(i) > 2 and i[2] is not None else 0 for i in items]
    tl = [len(t) for t in topics]
    pl = [len(p) for p in payloads]
    if limit is not None:
        sizes = [a + b + (m - 1 if m else 0) for a, b, m in zip(tl, pl, marks)]
        if sum(sizes) > limit or max(sizes) >= limit:
            return None
    return struct.pack(f"<{3 * n}I", *tl, *pl, *marks) + b"".join(topics + payloads + envelopes)


def unpack(first: int, n: int, blob: bytes) -> list[tuple]:
    """A packed row's messages as `Outbox.peek` gives them: (id, topic, payload), with the
    envelope as a fourth item where the message has one."""
    lengths = struct.unpack_from(f"<{3 * n}I", blob)
    tl, pl, marks = lengths[:n], lengths[n:2 * n], lengths[2 * n:]
    view = memoryview(blob)
    at = 12 * n
    topics = []
    for k in range(n):
        topics.append(bytes(view[at:at + tl[k]]).decode())
        at += tl[k]
    payloads = []
    for k in range(n):
        payloads.append(bytes(view[at:at + pl[k]]))
        at += pl[k]
    out: list[tuple] = []
    for k in range(n):
        if marks[k]:
            out.append((first + k, topics[k], payloads[k], bytes(view[at:at + marks[k] - 1])))
            at += marks[k] - 1
        else:
            out.append((first + k, topics[k], payloads[k]))
    return out


def messages(row: tuple) -> list[tuple]:
    """A row read back as (id, n, topic, payload, envelope): its messages, as `unpack`."""
    row_id, n, topic, payload, envelope = row
    if n == 1:
        return [(row_id, topic, payload) if envelope is None else (row_id, topic, payload, envelope)]
    return unpack(row_id, n, payload)


def count_expr(db: sqlite3.Connection) -> str:
    """The SQL that counts an outbox's messages: ``sum(n)``, or ``count(*)`` in a file written
    before rows held several (read-only tools open such files without upgrading them)."""
    cols = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
    return "coalesce(sum(n), 0)" if "n" in cols else "count(*)"
