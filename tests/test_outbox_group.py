"""Group commit of the outbox and the forwarder's range deletes, on real SQLite files.

Appends made in one turn of the event loop (concurrent lanes, routes, sinks) share one
transaction; each caller learns its own outcome only once that transaction committed, a
request the ``reject`` policy refuses fails alone, and a write that fails on a full disk
fails every caller of its group with nothing stored (so nothing is acknowledged). The
forwarder deletes acknowledged windows as one id range per sink, several windows at once.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from smallfs import small_disk  # noqa: F401  (fixture)

from iotwasm.errors import StorageError
from iotwasm.messaging.bus import settled
from iotwasm.pipeline.outbox import INLINE_ROWS, Forwarder, Outbox, OutboxFull

#: every test here runs with the native group commit and with the Python one
pytestmark = pytest.mark.usefixtures("both_outbox_writes")


def items(n: int, start: int = 0, size: int = 10) -> list[tuple[str, bytes]]:
    return [(f"t/{i}", json.dumps({"seq": i, "pad": "x" * size}).encode()) for i in range(start, start + n)]


def seqs(outbox: Outbox, sink: str) -> list[int]:
    return [json.loads(r[2])["seq"] for r in outbox.peek(sink, limit=10**6)]


def test_appends_of_one_loop_turn_share_one_transaction_and_keep_their_order(tmp_path):
    async def main():
        outbox = Outbox(tmp_path / "outbox.db")
        futs = [outbox.append_soon("a" if k % 2 else "b", items(3, start=10 * k)) for k in range(6)]
        assert not any(f.done() for f in futs)   # nothing is acknowledged before the commit
        assert await asyncio.gather(*futs) == [3] * 6
        writer = outbox._writer
        assert (writer.groups, writer.requests) == (1, 6)
        assert seqs(outbox, "b") == [0, 1, 2, 20, 21, 22, 40, 41, 42]
        assert seqs(outbox, "a") == [10, 11, 12, 30, 31, 32, 50, 51, 52]
        # on disk: another connection sees every row
        outbox.close()
        again = Outbox(tmp_path / "outbox.db")
        assert again.backlog() == 18 and again.stats == {}
        again.close()
        assert outbox.stats["a"].stored == outbox.stats["b"].stored == 9

    asyncio.run(main())


def test_a_large_group_is_written_off_the_loop_and_the_next_appends_gather_meanwhile(tmp_path):
    async def main():
        outbox = Outbox(tmp_path / "outbox.db")
        first = [outbox.append_soon("s", items(INLINE_ROWS, start=1000 * k)) for k in range(4)]
        await asyncio.sleep(0)           # the first group is on its thread now
        later = [outbox.append_soon("s", items(2, start=100_000 + 10 * k)) for k in range(5)]
        assert await asyncio.gather(*first, *later) == [INLINE_ROWS] * 4 + [2] * 5
        writer = outbox._writer
        assert writer.requests == 9 and writer.groups == 2
        got = seqs(outbox, "s")
        assert got == sorted(got) and len(got) == 4 * INLINE_ROWS + 10   # call order kept
        outbox.close()

    asyncio.run(main())


def test_a_request_refused_mid_group_fails_alone(tmp_path):
    async def main():
        outbox = Outbox(tmp_path / "outbox.db", max_rows=10, overflow="reject")
        futs = [outbox.append_soon("s", items(4, start=0)),
                outbox.append_soon("s", items(4, start=10)),
                outbox.append_soon("s", items(4, start=20)),   # 12 rows: over the bound
                outbox.append_soon("s", items(2, start=30))]
        results = await asyncio.gather(*futs, return_exceptions=True)
        assert results[:2] == [4, 4] and results[3] == 2
        assert isinstance(results[2], OutboxFull) and "4 message(s) refused" in str(results[2])
        assert seqs(outbox, "s") == [0, 1, 2, 3, 10, 11, 12, 13, 30, 31]
        assert outbox.stats["s"].rejected == 4 and outbox.stats["s"].stored == 10
        assert outbox.backlog() == 10 == outbox._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        outbox.close()

    asyncio.run(main())


def test_a_group_that_fails_on_a_full_disk_stores_nothing_and_fails_every_caller(small_disk):  # noqa: F811
    async def main():
        outbox = Outbox(small_disk.path / "outbox.db")
        await outbox.append_soon("s", items(5))
        small_disk.fill()
        failed = None
        for k in range(1, 400):   # whatever slack SQLite had (free pages, WAL) runs out
            before = outbox.backlog()
            futs = [outbox.append_soon(s, items(6, start=1000 * k + 10 * j, size=1000))
                    for j, s in enumerate(("s", "t", "s"))]
            results = await asyncio.gather(*futs, return_exceptions=True)
            if any(isinstance(r, BaseException) for r in results):
                failed = results
                break
        assert failed is not None, "the disk never filled"
        assert all(isinstance(r, StorageError) for r in failed)   # all or nothing
        assert outbox.backlog() == before == outbox._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        small_disk.free()
        assert await outbox.append_soon("s", items(2, start=10**6)) == 2
        assert seqs(outbox, "s")[-2:] == [10**6, 10**6 + 1]
        outbox.close()

    asyncio.run(main())


@pytest.mark.parametrize("rows", [1, INLINE_ROWS + 1])   # written on the loop, on the outbox's thread
def test_a_closed_outbox_fails_its_callers_instead_of_leaving_them_waiting(tmp_path, rows):
    async def main():
        outbox = Outbox(tmp_path / "outbox.db")
        outbox.close()
        with pytest.raises(Exception, match="closed"):
            await asyncio.wait_for(outbox.append_soon("s", items(rows)), timeout=10)

    asyncio.run(main())


def test_the_forwarder_deletes_acknowledged_windows_by_range_and_leaves_other_sinks_alone(tmp_path):
    async def main():
        outbox = Outbox(tmp_path / "outbox.db")
        for k in range(10):   # two sinks interleaved in the id sequence
            outbox.append("up", items(3, start=10 * k))
            outbox.append("other", items(2, start=10 * k))
        windows, gate, submit = gated_uplink()   # windows pile up, confirmed together
        fw = Forwarder(outbox, "up", submit, batch=4, windows=4, min_backoff=0.01, max_backoff=0.02)
        await run_gated(fw, outbox, gate, lambda: sum(map(len, windows)) >= 16)
        sent = [s for w in windows for s in w]
        assert sent == [10 * k + i for k in range(10) for i in range(3)]   # in order, once each
        assert outbox.stats["up"].sent == 30
        assert seqs(outbox, "other") == [10 * k + i for k in range(10) for i in range(2)]
        assert outbox.backlog() == 20
        outbox.close()

    asyncio.run(main())


def test_a_failed_window_leaves_its_unacknowledged_rows_for_the_retry(tmp_path):
    async def main():
        outbox = Outbox(tmp_path / "outbox.db")
        outbox.append("up", items(8))
        attempts: list[list[int]] = []

        async def submit(window):
            got = [json.loads(p)["seq"] for _, p in window]
            attempts.append(got)
            if len(attempts) == 1:   # the third message of the first window fails
                return settled([None, None, RuntimeError("nack")] + [None] * (len(got) - 3))
            return settled([None] * len(got))

        fw = Forwarder(outbox, "up", submit, batch=5, windows=1, min_backoff=0.01, max_backoff=0.02)
        fw.start()
        deadline = asyncio.get_running_loop().time() + 20
        while outbox.backlog("up"):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        await fw.stop()
        assert attempts[0] == [0, 1, 2, 3, 4] and attempts[1][0] == 2   # resent from the failure
        assert [s for a in attempts[1:] for s in a] == [2, 3, 4, 5, 6, 7]
        assert outbox.stats["up"].sent == 8
        outbox.close()

    asyncio.run(main())


def test_acknowledged_rows_are_never_handed_out_again_and_go_with_the_next_append(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append("up", items(5))
    outbox.append("other", items(2, start=100))
    rows = outbox.peek("up", limit=3)
    outbox.ack_later("up", rows[0][0], rows[-1][0])
    assert outbox.pending_acks()
    assert seqs(outbox, "up") == [3, 4]          # even from the start (after a failed window)
    assert outbox.backlog("up") == 5             # still in the file until a write deletes them
    outbox.append("other", items(1, start=200))  # the append's transaction takes the delete along
    assert not outbox.pending_acks()
    assert outbox._db.execute("SELECT count(*) FROM outbox WHERE sink = 'up'").fetchone()[0] == 2
    assert outbox.backlog() == 5 and outbox.stats["up"].sent == 3
    assert seqs(outbox, "other") == [100, 101, 200]
    outbox.close()


def test_a_crash_before_the_delete_sends_the_acknowledged_rows_again_and_loses_nothing(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append("up", items(4))
    rows = outbox.peek("up", limit=2)
    outbox.ack_later("up", rows[0][0], rows[-1][0])
    # killed here: no close, no later write; another process opens the file
    again = Outbox(tmp_path / "outbox.db")
    assert seqs(again, "up") == [0, 1, 2, 3]   # at-least-once: sent again, none lost
    again.close()
    outbox.close()                             # a clean close deletes them
    third = Outbox(tmp_path / "outbox.db")
    assert seqs(third, "up") == [2, 3] and third.backlog() == 2
    third.close()


def test_acknowledgements_held_on_a_full_disk_are_deleted_once_space_returns(small_disk):  # noqa: F811
    outbox = Outbox(small_disk.path / "outbox.db")
    outbox.append("up", items(50, size=1000))
    outbox._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")   # the next write must grow the WAL
    rows = outbox.peek("up", limit=50)
    small_disk.fill()
    outbox.ack_later("up", rows[0][0], rows[-1][0])
    with pytest.raises(StorageError):
        outbox.flush_acks()
    assert outbox.pending_acks() and seqs(outbox, "up") == [] and outbox.backlog("up") == 50
    small_disk.free()
    outbox.flush_acks()
    assert not outbox.pending_acks() and outbox.backlog() == 0 and outbox.stats["up"].sent == 50
    outbox.close()


def test_a_window_read_while_others_are_in_flight_is_whole_and_in_order(tmp_path):
    """With windows in flight the forwarder reads the first rows on the loop and the rest of
    a full window on a thread: the window is as large as configured, in id order."""
    async def main():
        outbox = Outbox(tmp_path / "outbox.db")
        outbox.append("up", items(120))
        outbox.append("other", items(5, start=1000))
        windows, gate, submit = gated_uplink()
        fw = Forwarder(outbox, "up", submit, batch=50, windows=3, min_backoff=0.01, max_backoff=0.02)
        await run_gated(fw, outbox, gate, lambda: len(windows) >= 3)
        assert [len(w) for w in windows] == [50, 50, 20]
        assert [s for w in windows for s in w] == list(range(120))
        outbox.close()

    asyncio.run(main())


def gated_uplink():
    """An uplink recording each window's seqs whose acknowledgements all wait for `gate`."""
    windows: list[list[int]] = []
    gate = asyncio.Event()

    async def submit(window):
        windows.append([json.loads(p)["seq"] for _, p in window])

        async def confirmed():
            await gate.wait()
            return [None] * len(window)

        return confirmed()

    return windows, gate, submit


async def run_gated(fw, outbox, gate, handed_out) -> None:
    """Start `fw`, open `gate` once `handed_out()` holds, stop once the outbox is empty."""
    fw.start()
    deadline = asyncio.get_running_loop().time() + 20
    while not handed_out():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    gate.set()
    while outbox.backlog("up"):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    await fw.stop()
