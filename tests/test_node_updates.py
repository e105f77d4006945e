"""Updates of a node's deployments on its in-process bus: a hot update under load that loses and
duplicates nothing, a failed health gate that rolls back by itself, an update to a module that
cannot start refused, and a crash-looping deployment restarted with a backoff while its
neighbours keep flowing."""

from __future__ import annotations

import asyncio

from conftest import ECHO_WAT
from nodesite import deployment, publish, route, started, wait_for, write
from nodesite import site as site  # the fixture, re-exported so that the tests' parameter shadows no unused import


def test_hot_update_under_load_loses_and_duplicates_nothing(site):
    tmp, mdir = site
    total, after = 3000, 100

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat"), replicas=2) + "---"
              + route("r", "echo", "out"))
        node = await started(tmp, mdir)
        try:
            async def load():
                for i in range(total):
                    await node.bus.publish(f"in/d{i % 7}", b"%d" % i, qos=1)
                    if i % 50 == 0:
                        await asyncio.sleep(0)

            producer = asyncio.create_task(load())
            await wait_for(lambda: node.store.count("out") > total // 4, what="traffic flowing")
            write(mdir, "a.yaml", deployment("echo", str(tmp / "v2.wat"), replicas=2) + "---"
                  + route("r", "echo", "out"))
            await node.sync()
            assert node.deployments["echo"].handle.revision == 2
            await producer
            # traffic after the swap, so that the new revision's health gate sees its messages
            # even when the producer finished while the new version was starting
            for i in range(total, total + after):
                await node.bus.publish(f"in/d{i % 7}", b"%d" % i, qos=1)
            await wait_for(lambda: node.store.count("out") >= total + after, what="all messages stored")
            rows = node.store.query("out", limit=total * 2)
            seqs = sorted(int(r["payload"]) for r in rows)
            assert seqs == list(range(total + after))  # no loss, no duplicate
            hist = node.state.history("echo")
            assert [h["revision"] for h in hist] == [1, 2]
            await wait_for(lambda: not node.deployments["echo"].handle.gate_pending, what="gate decided")
            hist = node.state.history("echo")
            assert [h["status"] for h in hist] == ["replaced", "serving"]
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_failed_health_gate_rolls_back_by_itself(site):
    tmp, mdir = site

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + route("r", "echo", "out"))
        node = await started(tmp, mdir)
        try:
            await publish(node, 20)
            await wait_for(lambda: node.store.count("out") == 20, what="v1 output")
            write(mdir, "a.yaml", deployment("echo", str(tmp / "trap.wat"), gate=20) + "---"
                  + route("r", "echo", "out"))
            await node.sync()
            handle = node.deployments["echo"].handle
            await publish(node, 100, start=20)
            await wait_for(lambda: handle.rollbacks == 1, what="rollback")
            assert handle.revision == 1
            assert "revision 2 failed its health gate" in handle.last_rollback_reason
            await wait_for(lambda: node.store.count("out") + node.state.dead_letter_count() == 120,
                           what="every message stored or dead-lettered")
            hist = node.state.history("echo")
            assert hist[1]["status"] == "rolled-back" and "health gate" in hist[1]["reason"]
            # after the rollback v1 handles traffic again
            before = node.store.count("out")
            await publish(node, 5, start=500)
            await wait_for(lambda: node.store.count("out") == before + 5, what="v1 serving again")
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_update_to_a_module_that_cannot_start_is_refused(site):
    tmp, mdir = site
    (tmp / "broken.wat").write_text(ECHO_WAT.replace('(export "iot_process")', ""))

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + route("r", "echo", "out"))
        node = await started(tmp, mdir)
        try:
            write(mdir, "a.yaml", deployment("echo", str(tmp / "broken.wat")) + "---" + route("r", "echo", "out"))
            await node.sync()
            assert node.deployments["echo"].handle.revision == 1
            refused = node.state.history("echo")[-1]
            assert refused["status"] == "refused" and "missing export 'iot_process'" in refused["reason"]
            await publish(node, 3)
            await wait_for(lambda: node.store.count("out") == 3, what="v1 still serving")
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_a_crash_looping_deployment_restarts_with_backoff_and_neighbours_keep_flowing(site):
    tmp, mdir = site
    crashy = deployment("crashy", str(tmp / "trap.wat")).replace(
        "updateStrategy", "restartPolicy: {backoff: 100ms, crashLoopBatches: 3}\n  updateStrategy")
    crashy_route = route("bad", "crashy", "bad").replace('"in/{device}"', '"in/crash/{device}"') \
        .replace("  sinks:", "  batch: {maxSize: 10}\n  sinks:")

    async def main():
        write(mdir, "a.yaml", "---".join([deployment("echo", str(tmp / "echo.wat")), crashy,
                                          route("good", "echo", "good").replace('"in/{device}"', '"in/ok/{device}"'),
                                          crashy_route]))
        node = await started(tmp, mdir)
        try:
            crash = node.deployments["crashy"].handle.current
            for i in range(200):
                await node.bus.publish(f"in/crash/d{i % 3}", b"%d" % i, qos=1)
                await node.bus.publish(f"in/ok/d{i % 3}", b"%d" % i, qos=1)
            await wait_for(lambda: node.store.count("good") == 200, what="healthy route delivered everything")
            await wait_for(lambda: crash.restarts >= 1, what="crashy restarted")
            assert node.snapshot()["routes"]["good"]["dead_letters"] == 0
            history = [e["message"] for e in node.state.events("crashy") if e["kind"] == "state"]
            assert any("crash loop" in m for m in history), history
            await wait_for(lambda: node.state.dead_letter_count() >= 1, what="dead letters recorded")
        finally:
            await node.shutdown()

    asyncio.run(main())
