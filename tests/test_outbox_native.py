"""The outbox's native group commit (pipeline/outbox_native.py, native/outbox_writer.c) on
real SQLite files: a node built by setup.sh uses it; it stores exactly what the Python path
stores; what it leaves to Python (other value types, rows to drop for the bound) is stored
all the same; an SQLite error rolls back the whole transaction and comes back as the error
Python's sqlite3 raises, with its code; a close while another thread writes waits for that
transaction, and every group is whole in the file or was failed to its callers. The outbox
tests (test_outbox_group, test_outbox_recent, test_storage_full) run with both writers
besides."""

from __future__ import annotations

import random
import sqlite3
import threading

import pytest

from iotwasm.pipeline import outbox_native
from iotwasm.pipeline.outbox import Outbox
from iotwasm.pipeline.outbox_native import NativeWriter


def rows_of(path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT id, sink, topic, payload, typeof(payload), envelope FROM outbox "
                          "ORDER BY id").fetchall()
    finally:
        db.close()


def test_a_node_outbox_writes_natively_when_setup_built_the_extension(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    try:
        assert outbox._native is not None, f"{outbox_native.EXTENSION} is not built or will not load"
    finally:
        outbox.close()


@pytest.mark.parametrize("seed", range(4))
def test_the_native_writer_stores_what_the_python_one_stores(tmp_path, seed):
    files, dropped = {}, {}
    for kind in ("native", "python"):
        rnd = random.Random(seed)
        path = files[kind] = tmp_path / f"{kind}.db"
        outbox = Outbox(path, writes=kind, max_rows=60)
        for _ in range(60):
            requests = []
            for sink in rnd.sample(["a", "b", "c"], rnd.randint(1, 3)):
                items = []
                for _ in range(rnd.randint(0, 12)):
                    topic, payload = f"t/{rnd.randint(0, 9)}/é", rnd.randbytes(rnd.randint(0, 40))
                    items.append((topic, payload, b"env") if rnd.random() < 0.2 else (topic, payload))
                requests.append((sink, items))
            assert all(not isinstance(r, BaseException) for r in outbox.append_many(requests))
            sink = rnd.choice("abc")
            window = outbox.peek(sink, limit=rnd.randint(1, 20))
            if window:
                outbox.ack_later(sink, window[0][0], window[-1][0])
        dropped[kind] = sum(st.dropped for st in outbox.stats.values())
        outbox.close()
    assert rows_of(files["native"]) == rows_of(files["python"])
    assert dropped["native"] == dropped["python"] > 0     # the bound was reached: the Python way


def test_values_of_other_types_go_the_python_way_and_are_stored_the_same(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db", writes="native")
    writer = NativeWriter(tmp_path / "outbox.db", 1.0)
    try:
        row = (1, "s", "t", bytearray(b"p"), 0.0, None)
        assert writer.append([], [row]) is False       # nothing done: not a plain type
        assert rows_of(tmp_path / "outbox.db") == []
        assert outbox.append("s", [("t", bytearray(b"p")), ("u", memoryview(b"q"))]) == 2
        assert [r[2:5] for r in rows_of(tmp_path / "outbox.db")] == [("t", b"p", "blob"), ("u", b"q", "blob")]
    finally:
        writer.close()
        outbox.close()


def test_an_error_rolls_back_the_deletes_and_the_inserts_and_comes_back_as_sqlite3_s(tmp_path):
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, writes="native")
    assert outbox.append("s", [("t", b"1"), ("t", b"2"), ("t", b"3")]) == 3
    outbox.close()
    writer = NativeWriter(path, 1.0)
    try:
        # deletes row 1, inserts row 4, then row 2 again: the primary key refuses it
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE") as info:
            writer.append([("s", 1, 1)], [(4, "s", "t", b"4", 0.0, None), (2, "s", "t", b"x", 0.0, None)])
        assert info.value.sqlite_errorcode == 1555     # SQLITE_CONSTRAINT_PRIMARYKEY
        assert [r[0] for r in rows_of(path)] == [1, 2, 3]
        assert writer.append([("s", 1, 1)], [(4, "s", "t", b"4", 0.0, None)]) is True   # usable again
        assert [r[0] for r in rows_of(path)] == [2, 3, 4]
    finally:
        writer.close()


def test_a_write_lock_held_elsewhere_is_waited_for_then_reported_as_busy(tmp_path):
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    writer = NativeWriter(path, 0.05)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked") as info:
            writer.append([], [(1, "s", "t", b"p", 0.0, None)])
        assert info.value.sqlite_errorcode & 0xFF == 5   # SQLITE_BUSY
        other.execute("COMMIT")
        assert writer.append([], [(1, "s", "t", b"p", 0.0, None)]) is True
    finally:
        other.close()
        writer.close()


def test_a_closed_writer_says_so(tmp_path):
    Outbox(tmp_path / "outbox.db").close()
    writer = NativeWriter(tmp_path / "outbox.db", 1.0)
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.append([], [])


def test_a_writer_that_cannot_open_leaves_the_writes_to_python_unless_it_was_required(tmp_path, monkeypatch, caplog):
    from iotwasm.pipeline import outbox as outbox_module

    class Unopenable:
        def __init__(self, path, timeout_s):
            raise OSError(f"cannot open the outbox writer on {path}: unable to open database file (14)")

    monkeypatch.setattr(outbox_module, "NativeWriter", Unopenable)
    outbox = Outbox(tmp_path / "outbox.db")
    try:
        assert outbox._native is None
        assert "every write through Python's sqlite3" in caplog.text
        assert outbox.append("s", [("t", b"p")]) == 1 and outbox.backlog("s") == 1
    finally:
        outbox.close()
    with pytest.raises(OSError, match="cannot open the outbox writer"):
        Outbox(tmp_path / "other.db", writes="native")


@pytest.mark.parametrize("writes", ["native", "python"])
def test_a_close_while_another_thread_writes_waits_for_its_transaction_and_loses_no_group(tmp_path, writes):
    """A node stopping while a large group is written on the outbox's thread: the close
    waits for the transaction under way; every group either is whole in the file or failed
    (and its callers were told), never half there; nothing crashes."""
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, writes=writes)
    told: list[tuple[int, object]] = []
    started = threading.Event()

    def writer() -> None:
        for g in range(1000):
            res = outbox.append_many([("s", [(f"t/{g}", bytes(64))] * 500)])[0]
            told.append((g, res))
            started.set()
            if isinstance(res, BaseException):
                return

    t = threading.Thread(target=writer)
    t.start()
    assert started.wait(60)
    outbox.close()
    t.join(60)
    assert not t.is_alive()
    stored = {g for g, res in told if res == 500}
    assert told and isinstance(told[-1][1], BaseException), told[-1:]   # a write after the close fails
    by_group: dict[str, int] = {}
    for _, _, topic, *_ in rows_of(path):
        by_group[topic] = by_group.get(topic, 0) + 1
    assert by_group == {f"t/{g}": 500 for g in stored}
