"""The outbox's recent rows in memory (`pipeline/outbox_recent.py`) never answer differently
from SQLite: random appends to several sinks, reads from where a forwarder would read,
acknowledgements in order, forgotten windows after a failure, overflow drops, restarts —
after every step what `peek` returns is what the file holds, and the outbox's row and byte
counts are the file's."""

from __future__ import annotations

import asyncio
import random
import sqlite3

import pytest

from iotwasm.pipeline.outbox import Outbox
from iotwasm.pipeline.outbox_recent import RecentRows

#: every test here runs with the native group commit and with the Python one
pytestmark = pytest.mark.usefixtures("both_outbox_writes")


def disk_peek(path, sink: str, after: int, limit: int) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT id, topic, payload, envelope FROM outbox WHERE sink = ? AND id > ? "
                          "ORDER BY id LIMIT ?", (sink, after, limit)).fetchall()
        return [r if r[3] is not None else r[:3] for r in rows]
    finally:
        db.close()


def disk_totals(path) -> tuple[int, int]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*), coalesce(sum(length(payload) + length(topic) "
                          "+ coalesce(length(envelope), 0)), 0) FROM outbox").fetchone()
    finally:
        db.close()


@pytest.mark.parametrize("seed", range(8))
def test_recent_rows_answer_as_the_file_does(tmp_path, seed):
    rnd = random.Random(seed)
    path = tmp_path / "outbox.db"
    sinks = ["a", "b", "c"]
    # small bounds so that the overflow policy and the memory limit both come into play
    ob = Outbox(path, max_rows=300)
    memory = 20 if seed % 2 else ob.recent_rows     # half the runs with a backlog beyond it
    ob.recent_rows = memory
    after = dict.fromkeys(sinks, 0)       # what each sink's forwarder handed out last
    handed: dict[str, list[int]] = {s: [] for s in sinks}
    for step in range(400):
        sink = rnd.choice(sinks)
        op = rnd.random()
        if op < 0.45:
            items = [(f"out/{sink}/{rnd.randrange(9)}", rnd.randbytes(rnd.randrange(1, 60)))
                     + ((b"\x01\x02",) if rnd.random() < 0.2 else ())
                     for _ in range(rnd.randrange(1, 12))]
            ob.append(sink, items)
        elif op < 0.75:       # the forwarder reads its next window
            limit = rnd.choice([1, 5, 16, 100])
            got = ob.peek(sink, limit, after[sink])
            through = max(after[sink], ob._through.get(sink, 0))
            assert got == disk_peek(path, sink, through, limit), f"step {step}"
            if got:
                after[sink] = got[-1][0]
                handed[sink] += [r[0] for r in got]
        elif op < 0.9:        # the uplink acknowledged a prefix of what was handed out
            ids = handed[sink]
            if ids:
                k = rnd.randrange(1, len(ids) + 1)
                ob.ack_later(sink, ids[0], ids[k - 1])
                handed[sink] = ids[k:]
        elif op < 0.95:       # a window failed: everything after the acknowledged part again
            after[sink] = 0
            handed[sink] = []
        else:
            ob.flush_acks()
        if rnd.random() < 0.01:   # a restart: memory is gone, the file stays
            ob.close()
            ob = Outbox(path, max_rows=300)
            ob.recent_rows = memory
            after = dict.fromkeys(sinks, 0)
            handed = {s: [] for s in sinks}
        ob.flush_acks()
        assert (ob._rows, ob._bytes) == tuple(disk_totals(path)), f"step {step}"
    ob.close()


def test_a_steady_stream_is_read_from_memory(tmp_path):
    ob = Outbox(tmp_path / "outbox.db")
    ob.append("s", [("t", b"old")])           # a row from before a restart
    ob.close()
    ob = Outbox(tmp_path / "outbox.db")
    after = 0
    for i in range(50):
        ob.append("s", [("t", b"%d" % i)])
        rows, from_memory = ob.peek_window("s", 100, after)
        assert from_memory == (i > 0)              # the first read goes to disk once
        after = rows[-1][0]
        ob.ack_later("s", rows[0][0], after)
    assert ob._acked["s"].size is not None      # sizes known: no read before the delete
    ob.flush_acks()
    assert ob.backlog() == 0 and ob.stats["s"].sent == 51
    ob.close()


def test_a_window_read_from_disk_takes_at_most_its_disk_limit(tmp_path):
    """`peek_window` says where its rows came from; what has to come from SQLite is capped at
    `disk_limit` (the forwarder reads that much on the event loop), what is in memory is not."""
    path = tmp_path / "outbox.db"
    ob = Outbox(path)
    ob.append("s", [("t", b"%d" % i) for i in range(40)])
    ob.close()
    ob = Outbox(path)   # reopened: nothing in memory
    rows, from_memory = ob.peek_window("s", 30, 0, disk_limit=16)
    assert not from_memory and rows == disk_peek(path, "s", 0, 16)
    ob.append("s", [("t", b"new %d" % i) for i in range(20)])
    after = disk_peek(path, "s", 0, 40)[-1][0]   # the old rows read (on a thread, by the forwarder)
    rows, from_memory = ob.peek_window("s", 30, after, disk_limit=16)
    assert from_memory and rows == disk_peek(path, "s", after, 30) and len(rows) == 20
    assert ob.peek("s", 100, 0) == disk_peek(path, "s", 0, 100)   # no limit but `limit`
    ob.close()


def test_a_forwarder_with_windows_in_flight_drains_a_backlog_on_disk_and_in_memory(tmp_path):
    """A backlog from before a restart (on disk) and rows appended since (in memory), read
    with windows in flight: the first rows of each window on the loop, the rest of a disk
    window on a thread, a memory window whole. Every message goes out once, in order."""
    from iotwasm.messaging.bus import settled
    from iotwasm.pipeline.outbox import INLINE_ROWS, Forwarder

    path = tmp_path / "outbox.db"
    ob = Outbox(path)
    ob.append("s", [("t", b"%d" % i) for i in range(100)])
    ob.close()

    async def main():
        ob = Outbox(path)
        ob.append("s", [("t", b"%d" % i) for i in range(100, 150)])
        sent: list[int] = []
        windows: list[int] = []

        async def submit(window):
            windows.append(len(window))
            sent.extend(int(p) for _, p in window)
            return settled([None] * len(window))

        fwd = Forwarder(ob, "s", submit, batch=40, windows=3)
        fwd.start()
        for _ in range(2000):
            if ob.backlog("s") == 0 and not ob.pending_acks():
                break
            await asyncio.sleep(0.01)
        await fwd.stop()
        assert sent == list(range(150))
        # whole windows while others are in flight, though only INLINE_ROWS of each came on the loop
        assert windows[:3] == [40, 40, 40] and INLINE_ROWS < 40
        ob.close()

    asyncio.run(main())


def test_memory_keeps_only_the_newest_rows_of_a_backlog():
    rec = RecentRows(start=1, limit=3)
    for i in range(1, 6):
        rec.add(i, (i, "t", b"x"), 2)
    assert len(rec) == 3 and rec.start == 3
    assert not rec.covers(1) and rec.covers(2)     # id 2 is only on disk now
    assert [r[0] for r in rec.after(2, 10)] == [3, 4, 5]
    assert rec.pop_through(3, 4) == (2, 4, True)
    assert rec.pop_through(1, 5) == (1, 2, False)  # 1 and 2 were not in memory any more


def test_new_files_have_no_autoincrement_and_ids_keep_growing(tmp_path):
    path = tmp_path / "outbox.db"
    ob = Outbox(path)
    ob.append("s", [("t", b"1"), ("t", b"2")])
    rows = ob.peek("s")
    ob.ack_later("s", rows[0][0], rows[-1][0])
    ob.close()          # deletes them: the table is empty
    db = sqlite3.connect(path)
    assert "AUTOINCREMENT" not in db.execute("SELECT sql FROM sqlite_master WHERE name = 'outbox'").fetchone()[0]
    db.close()
    ob = Outbox(path)   # an empty file again: ids start over, which is fine in a new process
    ob.append("s", [("t", b"3")])
    assert [r[2] for r in ob.peek("s")] == [b"3"]
    ob.close()


def test_an_old_autoincrement_file_keeps_its_ids_above_everything_it_held(tmp_path):
    path = tmp_path / "outbox.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL,
            topic TEXT NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL, envelope BLOB);
        CREATE INDEX outbox_sink ON outbox(sink, id);
        INSERT INTO outbox(sink, topic, payload, created) VALUES ('s', 't', x'00', 0);
        DELETE FROM outbox;""")
    seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()[0]
    db.close()
    ob = Outbox(path)
    ob.append("s", [("t", b"new")])
    assert ob.peek("s")[0][0] == seq + 1
    ob.close()
