"""The worker thread that runs guest calls for the event loop (pipeline.worker.Worker)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from iotwasm.pipeline.worker import Worker


def test_calls_run_in_order_on_the_worker_thread_never_on_the_loop():
    async def main():
        w = Worker("t")
        seen: list[tuple[int, int]] = []
        loop_thread = threading.get_ident()
        try:
            results = [await w.run(lambda i=i: seen.append((i, threading.get_ident())) or i * 2)
                       for i in range(5)]
            results += await asyncio.gather(*(w.run(lambda i=i: seen.append((i, threading.get_ident())) or i)
                                              for i in range(5, 10)))
        finally:
            w.close()
        assert results == [0, 2, 4, 6, 8, 5, 6, 7, 8, 9]
        assert [i for i, _ in seen] == list(range(10))
        threads = {t for _, t in seen}
        assert len(threads) == 1 and loop_thread not in threads

    asyncio.run(main())


def test_an_exception_reaches_the_awaiting_task():
    async def main():
        w = Worker("t")
        try:
            with pytest.raises(ZeroDivisionError):
                await w.run(lambda: 1 / 0)
            assert await w.run(lambda: "still serving") == "still serving"
        finally:
            w.close()

    asyncio.run(main())


def test_a_cancelled_wait_leaves_the_call_running_and_the_loop_free():
    """Cancelling the await (a route stopping) does not interrupt the call; while it runs
    the loop goes on, and its late result is dropped."""
    async def main():
        w = Worker("t")
        entered, release, finished = threading.Event(), threading.Event(), threading.Event()

        def held() -> str:
            entered.set()
            release.wait(30)
            finished.set()
            return "late"

        task = asyncio.ensure_future(w.run(held))
        await asyncio.to_thread(entered.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not finished.is_set()          # the loop went on while the call was held
        release.set()
        assert await w.run(lambda: "next") == "next"   # runs after the held call, in order
        assert finished.is_set()
        w.close()

    asyncio.run(main())


def test_close_ends_the_thread_and_refuses_more_calls():
    async def main():
        w = Worker("t")
        assert not w.alive            # no thread until the first call
        await w.run(lambda: None)
        assert w.alive
        w.close()
        await asyncio.to_thread(w._thread.join, 30)
        assert not w.alive
        with pytest.raises(RuntimeError, match="worker t is closed"):
            w.run(lambda: None)

    asyncio.run(main())
