"""Background tasks outlive their failures: a supervised task is restarted after a backoff and
a failure that repeats is logged once with its traceback, then summarised; a task that
finishes is not restarted; the manifest directory's watch follows a directory replaced by a
rename.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from smallfs import wait_for

from iotwasm.backoff import Backoff


# -- supervised background tasks ---------------------------------------------------------------
class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_supervised_task_is_restarted_and_a_repeating_failure_logged_once(caplog):
    from iotwasm.supervise import supervise

    log = logging.getLogger("test.supervised")
    clock = _Clock()

    async def main():
        runs = []

        async def flaky():
            runs.append(clock.now)
            clock.now += 1.0
            if len(runs) < 50:
                raise OSError("inotify went away")
            await asyncio.Event().wait()   # then runs for good

        task = supervise("watcher", flaky, log=log, backoff=Backoff(0.0001, 0.001, jitter=0),
                         clock=clock, summary_every=10.0)
        await wait_for(lambda: len(runs) == 50, what="50 runs")
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return runs

    with caplog.at_level(logging.INFO, logger="test.supervised"):
        runs = asyncio.run(main())
    assert len(runs) == 50
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "watcher" in tracebacks[0].getMessage()
    summaries = [r for r in caplog.records if "again" in r.getMessage()]
    # 48 repeats over 48 clock seconds, summarised at most once per 10 s
    assert 3 <= len(summaries) <= 5
    assert sum(int(r.args[1]) for r in summaries) <= 48


def test_a_supervised_task_that_finishes_is_not_restarted():
    from iotwasm.supervise import supervise

    async def main():
        runs = []

        async def once():
            runs.append(1)

        task = supervise("once", once, log=logging.getLogger("test.supervised"))
        await task
        return runs

    assert asyncio.run(main()) == [1]


def test_the_manifest_watch_follows_a_replaced_directory(tmp_path):
    """Deploy tools replace a configuration directory by renaming a new one over it: the
    inotify watch on the old directory would never fire again; the watch re-arms itself."""
    from iotwasm.node.watch import ManifestWatch

    async def main():
        mdir = tmp_path / "manifests"
        mdir.mkdir()
        changed = asyncio.Event()
        watch = ManifestWatch(mdir, changed)
        assert watch.start()
        (mdir / "a.yaml").write_text("a")
        await asyncio.wait_for(changed.wait(), 10)
        new = tmp_path / "manifests.new"
        new.mkdir()
        changed.clear()
        mdir.rename(tmp_path / "manifests.old")
        await asyncio.wait_for(changed.wait(), 10)   # the watched directory moved away
        new.rename(mdir)
        deadline = time.monotonic() + 20
        n = 0
        while True:   # the watch re-arms after a short backoff: write until it is seen
            changed.clear()
            (mdir / f"b{n}.yaml").write_text("b")
            n += 1
            try:
                await asyncio.wait_for(changed.wait(), 0.2)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "the watch never saw the new directory"
        watch.stop()

    asyncio.run(main())


def test_periodic_jobs_sleep_until_the_same_beat():
    """`until_beat`: jobs of the same period fall due at the same instant of the loop's clock,
    whenever each went to sleep, so a quiet node wakes once per period for all of them."""
    from iotwasm.supervise import until_beat

    async def main():
        loop = asyncio.get_running_loop()
        seen = []
        for now in (12.25, 12.75, 13.0):
            loop.time = lambda now=now: now   # type: ignore[method-assign]
            seen.append((now + until_beat(1.0), now + until_beat(0.5)))
        assert until_beat(0.0) == 0.0   # no period: no wait, never a division by zero
        return seen

    assert asyncio.run(main()) == [(13.0, 12.5), (13.0, 13.0), (14.0, 13.5)]
