"""A batch of small messages is one outbox row (`pipeline/outbox_rows.py`): what is packed
comes back as it went in, large messages keep rows of their own, a row acknowledged in part
keeps only the rest, and a file written before rows held several is read and upgraded."""

from __future__ import annotations

import sqlite3

import pytest

from iotwasm.pipeline.outbox import Outbox
from iotwasm.pipeline.outbox_rows import ROW_BYTES, ROW_MESSAGES, messages, pack, rows_of, unpack


def file_rows(path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT id, n, topic, payload, envelope FROM outbox ORDER BY id").fetchall()
    finally:
        db.close()


def test_packed_messages_come_back_as_they_went_in():
    items = [("plant/α/t", b"", b"\x00env"), ("t", b"x" * 300), ("", b"\x00\xff"), ("a/b", b"{}", b"")]
    got = unpack(7, len(items), pack(items))
    assert got == [(7, "plant/α/t", b"", b"\x00env"), (8, "t", b"x" * 300), (9, "", b"\x00\xff"),
                   (10, "a/b", b"{}", b"")]   # an empty envelope stays an envelope


def test_a_batch_is_one_row_and_large_or_many_messages_are_split():
    small = [("t", b"%d" % i) for i in range(10)]
    rows, size = rows_of("s", 1, small, 0.0)
    assert [(r[0], r[6]) for r in rows] == [(1, 10)] and size == len(rows[0][3])
    big = b"x" * ROW_BYTES
    rows, _ = rows_of("s", 1, small[:3] + [("t", big)] + small[3:4], 0.0)
    assert [(r[0], r[6]) for r in rows] == [(1, 3), (4, 1), (5, 1)]   # alone, as are the ones beside it
    assert rows[1][2:4] == ("t", big)                                 # a row of one keeps its columns
    many = [("t", b"m")] * (ROW_MESSAGES * 2 + 1)
    rows, _ = rows_of("s", 1, many, 0.0)
    assert [r[6] for r in rows] == [ROW_MESSAGES, ROW_MESSAGES, 1]
    rows, _ = rows_of("s", 1, [("t", b"y" * (ROW_BYTES // 3))] * 4, 0.0)
    assert [r[6] for r in rows] == [2, 2]                              # packed up to ROW_BYTES
    every = [m for r in rows_of("s", 5, many, 0.0)[0] for m in messages((r[0], r[6], r[2], r[3], r[5]))]
    assert [m[0] for m in every] == list(range(5, 5 + len(many)))


def test_an_append_writes_one_row_and_the_bounds_count_messages(tmp_path):
    ob = Outbox(tmp_path / "outbox.db", max_rows=25)
    assert ob.append("s", [("t", b"%d" % i) for i in range(20)]) == 20
    assert len(file_rows(ob.path)) == 1 and ob.backlog() == ob.backlog("s") == 20
    ob.append("s", [("t", b"%d" % i) for i in range(20, 30)])   # 30 > 25: the oldest row goes whole
    assert ob.backlog() == 10 and ob.stats["s"].dropped == 20
    assert [p for _, _, p in ob.peek("s", 100)] == [b"%d" % i for i in range(20, 30)]
    ob.close()


def test_a_row_acknowledged_in_part_keeps_the_rest_and_a_clean_close_sends_nothing_twice(tmp_path):
    path = tmp_path / "outbox.db"
    ob = Outbox(path)
    ob.append("s", [("t", b"%d" % i, b"e%d" % i) for i in range(10)])
    window = ob.peek("s", 4)
    ob.ack_later("s", window[-1][0])   # a window ended inside the row
    ob.flush_acks()
    rows = file_rows(path)
    assert [(r[0], r[1]) for r in rows] == [(window[-1][0] + 1, 6)]
    assert ob.backlog() == 6 and ob.stats["s"].sent == 4
    assert ob.peek("s", 100) == [(i + 1, "t", b"%d" % i, b"e%d" % i) for i in range(4, 10)]
    ob.close()
    again = Outbox(path)
    assert again.peek("s", 100) == [(i + 1, "t", b"%d" % i, b"e%d" % i) for i in range(4, 10)]
    assert again._bytes == sum(len(r[2]) + len(r[3]) for r in file_rows(path))
    again.append("s", [("t", b"new")])
    assert again.peek("s", 100)[-1] == (11, "t", b"new")      # ids stay above every stored one
    again.close()


@pytest.mark.parametrize("limit", [1, 3, 16])
def test_a_window_from_disk_starts_inside_a_row(tmp_path, limit):
    path = tmp_path / "outbox.db"
    ob = Outbox(path)
    ob.append("s", [("t", b"%d" % i) for i in range(30)])
    ob.close()
    ob = Outbox(path)   # nothing in memory: read from the file
    got = ob.peek("s", limit, after=5)
    assert [r[0] for r in got] == list(range(6, 6 + limit)) and got[0][2] == b"5"
    ob.close()


def test_a_file_written_before_rows_held_several_is_upgraded_and_read(tmp_path):
    path = tmp_path / "outbox.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE outbox (id INTEGER PRIMARY KEY, sink TEXT NOT NULL, topic TEXT NOT NULL,
            payload BLOB NOT NULL, created REAL NOT NULL, envelope BLOB);
        CREATE INDEX outbox_sink ON outbox(sink, id);
        INSERT INTO outbox VALUES (1, 's', 'a', x'01', 0, NULL), (2, 's', 'b', x'02', 0, x'ee');""")
    db.close()
    ob = Outbox(path)
    assert ob.backlog() == 2 and ob.peek("s") == [(1, "a", b"\x01"), (2, "b", b"\x02", b"\xee")]
    ob.append("s", [("c", b"\x03"), ("d", b"\x04")])
    assert [r[0] for r in ob.peek("s")] == [1, 2, 3, 4]
    ob.ack_later("s", 3)
    ob.flush_acks()
    assert ob.peek("s") == [(4, "d", b"\x04")] and ob.backlog() == 1
    ob.close()
