"""Writes on a full disk: the outbox and the store raise a `StorageError` that names the file
and work again once space is back; the outbox forwarder outlives a delete it cannot make and a
dead letter it cannot write, holding the window (nothing deleted, nothing sent twice) until
the disk has room again.

The SQLite files go on a tmpfs of a few MiB (tests/smallfs.py) that the test fills to the
last byte and frees again.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from smallfs import fill_to_the_last_dead_letter, wait_for
from smallfs import small_disk  # noqa: F401  (fixture)

from iotwasm.errors import SinkRejected, StorageError
from iotwasm.message import Message
from iotwasm.messaging.bus import settled
from iotwasm.node.state import NodeState
from iotwasm.pipeline import LocalStore, Outbox
from iotwasm.pipeline.outbox import Forwarder

#: every test here runs with the native group commit and with the Python one
pytestmark = pytest.mark.usefixtures("both_outbox_writes")


def items(n: int, start: int = 0, size: int = 1000) -> list[tuple[str, bytes]]:
    return [(f"t/{i}", json.dumps({"seq": i, "pad": "x" * size}).encode()) for i in range(start, start + n)]


# -- writing on a full disk --------------------------------------------------------------------
def test_outbox_append_on_a_full_disk_raises_and_works_again_once_space_returns(small_disk):  # noqa: F811
    outbox = Outbox(small_disk.path / "outbox.db")
    outbox.append("s", items(10))
    small_disk.fill()
    with pytest.raises(StorageError) as e:
        for k in range(1, 200):   # whatever slack SQLite had (free pages, WAL) runs out
            outbox.append("s", items(20, start=10 * k * 100))
    assert str(e.value).startswith(f"outbox {small_disk.path / 'outbox.db'}: database or disk is full")
    stored = outbox.backlog()
    assert stored == outbox._db.execute("SELECT count(*) FROM outbox").fetchone()[0]  # counters match
    small_disk.free()
    outbox.append("s", items(5, start=10**6))   # no "transaction within a transaction"
    assert outbox.backlog() == stored + 5
    rows = outbox.peek("s", limit=10**6)
    assert [json.loads(p)["seq"] for _, _, p in rows][-5:] == list(range(10**6, 10**6 + 5))
    outbox.close()


def test_store_insert_on_a_full_disk_raises_and_works_again_once_space_returns(small_disk):  # noqa: F811
    store = LocalStore(small_disk.path / "store.db")
    store.insert("out", "r", [Message("t", b"first")])
    small_disk.fill()
    with pytest.raises(StorageError) as e:
        for _ in range(200):
            store.insert("out", "r", [Message("t", b"y" * 1000)] * 20)
    assert str(e.value).startswith(f"store {small_disk.path / 'store.db'}: database or disk is full")
    small_disk.free()
    before = store.count("out")
    store.insert("out", "r", [Message("t", b"after")])
    assert store.count("out") == before + 1
    store.close()


def test_the_forwarder_outlives_a_failed_delete_and_sends_nothing_twice(small_disk):  # noqa: F811
    """The uplink acknowledged a window but the outbox cannot delete it (the WAL cannot grow
    on a full disk): the forwarder keeps those rows, says why, retries the delete, and
    drains the rest once space is back — without sending a message twice."""

    async def main():
        outbox = Outbox(small_disk.path / "outbox.db")
        outbox.append("up", items(300))
        outbox._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")   # the next write must grow the WAL
        small_disk.fill()
        sent: list[int] = []

        async def submit(window):
            sent.extend(json.loads(p)["seq"] for _, p in window)
            return settled([None] * len(window))

        fwd = Forwarder(outbox, "up", submit, batch=50, windows=2, min_backoff=0.01, max_backoff=0.05)
        fwd.start()
        await wait_for(lambda: fwd.storage.error is not None, what="the failed delete reported")
        assert str(fwd.storage.error).startswith(f"outbox {small_disk.path / 'outbox.db'}: database or disk is full")
        assert outbox.backlog("up") == 300   # nothing deleted, nothing lost
        small_disk.free()
        await wait_for(lambda: outbox.backlog("up") == 0, what="the outbox drained")
        assert fwd.storage.error is None
        assert sorted(sent) == list(range(300)) and len(sent) == 300   # in order, once each
        assert sent == sorted(sent)
        # the same forwarder (not a dead task) takes what comes next
        outbox.append("up", items(3, start=300))
        fwd.notify()
        await wait_for(lambda: len(sent) == 303, what="new rows forwarded")
        await fwd.stop()
        outbox.close()

    asyncio.run(main())


def test_a_refusal_for_good_is_held_while_its_dead_letter_cannot_be_written(small_disk, tmp_path):  # noqa: F811
    """The uplink refuses one message for good (`SinkRejected`) while the node database, where
    its dead letter goes, is full: the forwarder holds the window and says why, deletes
    nothing meanwhile, and once space is back the message is a dead letter exactly once and
    the messages behind it are delivered, in order."""

    async def main():
        state = NodeState(small_disk.path / "node.db")
        outbox = Outbox(tmp_path / "outbox.db")   # on a disk with room: deletes could happen
        outbox.append("up", items(10, size=100))
        fill_to_the_last_dead_letter(small_disk, state)
        kept_before = state.dead_letter_count()
        sent: list[int] = []
        attempts: list[bool] = []   # per attempt: the refused row still in the outbox

        async def submit(window):
            seqs = [json.loads(p)["seq"] for _, p in window]
            sent.extend(s for s in seqs if s != 3)
            return settled([SinkRejected("refused: seq 3") if s == 3 else None for s in seqs])

        async def reject(topic: str, payload: bytes, why: SinkRejected) -> None:
            attempts.append(outbox._db.execute("SELECT count(*) FROM outbox WHERE topic = 't/3'").fetchone()[0] == 1)
            await asyncio.to_thread(state.dead_letter, "", "r", "up", why.kind, str(why), topic,
                                    payload + b"x" * 50_000)   # more than any filler left room for

        fwd = Forwarder(outbox, "up", submit, batch=4, windows=2, min_backoff=0.01, max_backoff=0.05,
                        reject=reject)
        fwd.start()
        await wait_for(lambda: fwd.storage.error is not None, what="the dead-letter write held")
        assert str(fwd.storage.error).startswith(f"node state {small_disk.path / 'node.db'}: database or disk is full")
        await wait_for(lambda: len(attempts) >= 3, what="the write retried")
        assert outbox.backlog("up") == 10   # nothing deleted, the refused row least of all
        assert state.dead_letter_count() == kept_before and fwd.rejected == 0
        small_disk.free()
        await wait_for(lambda: outbox.backlog("up") == 0, what="the outbox drained")
        assert fwd.storage.error is None and fwd.last_error is None
        assert all(attempts), "the refused row was deleted before its dead letter was stored"
        dead = state.dead_letters(step="up")
        assert [(d["topic"], d["kind"], json.loads(d["payload"][:-50_000])["seq"]) for d in dead] == \
            [("t/3", "sink_rejected", 3)]
        assert fwd.rejected == 1
        assert sent == [0, 1, 2, 4, 5, 6, 7, 8, 9]   # the rest delivered, in order, once each
        await fwd.stop()
        outbox.close()
        state.close()

    asyncio.run(main())
