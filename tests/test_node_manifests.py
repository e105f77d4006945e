"""A node on its in-process bus follows its manifests live: edits applied without a restart, a
route that loses its step and gets it back, a bad manifest or a route whose step may not
receive its source refused while the node runs on, queued messages handed to an edited route,
changes seen by the directory watch, and a deployment asking more time per call than the node
allows refused."""

from __future__ import annotations

import asyncio

import pytest

from iotwasm.node import Node, NodeConfig

from conftest import ECHO_WAT
from nodesite import deployment, publish, route, started, wait_for, write
from nodesite import site as site  # the fixture, re-exported so that the tests' parameter shadows no unused import


def test_manifest_edits_apply_without_restart(site):
    tmp, mdir = site

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + route("r", "echo", "out1"))
        node = await started(tmp, mdir)
        try:
            await publish(node, 10)
            await wait_for(lambda: node.store.count("out1") == 10, what="10 rows in out1")
            write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat"), replicas=3) + "---"
                  + route("r", "echo", "out2"))
            await node.sync()
            assert node.deployments["echo"].handle.current.replicas == 3
            await publish(node, 10, start=10)
            await wait_for(lambda: node.store.count("out2") == 10, what="10 rows in out2")
            assert node.store.count("out1") == 10
            kinds = [e["kind"] for e in node.state.events("echo")]
            assert "scaled" in kinds and "created" in kinds
            write(mdir, "a.yaml", "")  # everything removed
            await node.sync()
            assert not node.deployments and not node.routes
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_a_route_whose_step_goes_away_stops_and_runs_again_when_it_returns(site):
    """A deployment removed from under a route (a fleet assignment that drops it, a file edit)
    takes the route down with it, and the route starts again over the new deployment when the
    name returns, instead of holding messages for a container that was stopped."""
    tmp, mdir = site

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + route("r", "echo", "out"))
        node = await started(tmp, mdir)
        try:
            await publish(node, 5)
            await wait_for(lambda: node.store.count("out") == 5, what="5 rows")
            write(mdir, "a.yaml", route("r", "echo", "out"))
            problems = await node.sync()
            assert not node.deployments and "r" not in node.routes
            assert problems == ["Route r: step 'echo' is not a deployment on this node"]
            write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + route("r", "echo", "out"))
            assert await node.sync() == [] and "r" in node.routes
            await publish(node, 5, start=5)
            await wait_for(lambda: node.store.count("out") == 10, what="5 more rows through the new deployment")
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_bad_manifest_is_rejected_and_the_node_keeps_running(site):
    tmp, mdir = site

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + route("r", "echo", "out"))
        node = await started(tmp, mdir)
        try:
            write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat"), replicas=0) + "---"
                  + route("r", "echo", "out"))
            await node.sync()
            assert "a.yaml#1 (Deployment echo) spec.replicas: Input should be greater than or equal to 1" \
                in node.last_manifest_error
            await publish(node, 5)
            await wait_for(lambda: node.store.count("out") == 5, what="old route still working")
            assert any(e["kind"] == "manifest-error" for e in node.state.events())
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_route_refused_when_first_step_may_not_receive_its_source(site):
    tmp, mdir = site

    async def main():
        bad_route = route("r", "echo", "out").replace('"in/{device}"', '"secret/{device}"')
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + bad_route)
        node = await started(tmp, mdir)
        try:
            assert "r" not in node.routes
            ev = [e for e in node.state.events("r") if e["kind"] == "failed"]
            assert "deployment echo may not receive 'secret/+'" in ev[0]["message"]
        finally:
            await node.shutdown()

    asyncio.run(main())


SLOW_ECHO_WAT = ECHO_WAT.replace(
    "(local $kind i32) (local $first i32)",
    "(local $kind i32) (local $first i32) (local $spin i32)\n"
    "    i32.const 2000000 local.set $spin\n"
    "    (block $s (loop $sl local.get $spin i32.eqz br_if $s\n"
    "      local.get $spin i32.const 1 i32.sub local.set $spin br $sl))", 1)


@pytest.mark.parametrize("edit", ["batch", "source"])
def test_a_route_edit_hands_queued_messages_to_the_new_version(site, edit):
    """Messages queued when a route is edited (its batch size, or its source) are processed
    by the new version, each once, in order per device; an unchanged source stays as it is."""
    tmp, mdir = site
    (tmp / "slow.wat").write_text(SLOW_ECHO_WAT)
    slow = route("r", "echo", "out").replace("  steps: [echo]", "  steps: [echo]\n  batch: {maxSize: 1}")
    edited = {"batch": slow.replace("maxSize: 1", "maxSize: 50"),
              "source": slow.replace('topic: "in/{device}"', 'topic: "in/{dev}"').replace(
                  "maxSize: 1}", "maxSize: 50}\n  orderBy: dev")}[edit]

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "slow.wat")) + "---" + slow)
        node = await started(tmp, mdir)
        try:
            old = node.routes["r"]
            for i in range(200):
                await node.bus.publish(f"in/d{i % 4}", b"%d" % i)
            await wait_for(lambda: node.store.count("out") >= 5, what="the first messages stored")
            assert node.store.count("out") < 200, "nothing was queued at the edit"
            write(mdir, "a.yaml", deployment("echo", str(tmp / "slow.wat")) + "---" + edited)
            assert await node.sync() == []
            new = node.routes["r"]
            assert new is not old and (new.source is old.source) == (edit == "batch")
            assert new.runner.stats.received > 0, "the queue went to the new version"
            await wait_for(lambda: node.store.count("out") >= 200, what="all 200 stored")
            rows = node.store.query("out", limit=1000)[::-1]
            seqs = [int(r["payload"]) for r in rows]
            assert sorted(seqs) == list(range(200))
            for d in range(4):
                mine = [int(r["payload"]) for r in rows if r["topic"] == f"in/d{d}"]
                assert mine == sorted(mine)
            assert any(e["kind"] == "updated" for e in node.state.events("r"))
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_manifest_changes_are_noticed_without_waiting_for_the_poll(site):
    """With the periodic check an hour away, only the directory watch can make the node see
    a new file, an editor-style save (write elsewhere, rename over) and a deletion."""
    import os

    tmp, mdir = site

    async def main():
        write(mdir, "a.yaml", deployment("first", str(tmp / "echo.wat")))
        node = Node(NodeConfig(data_dir=tmp / "data", manifests=mdir, sync_interval_s=3600))
        task = asyncio.create_task(node.run())
        try:
            await wait_for(lambda: node.ready and "first" in node.deployments, what="first deployment")
            (mdir / "b.yaml").write_text(deployment("second", str(tmp / "echo.wat")))
            await wait_for(lambda: "second" in node.deployments, what="a new file noticed")
            staged = tmp / "b.yaml.tmp"
            staged.write_text(deployment("second", str(tmp / "v2.wat")))
            os.replace(staged, mdir / "b.yaml")
            v2 = node.deployments["second"]
            await wait_for(lambda: node.deployments["second"].manifest.spec.module.endswith("v2.wat"),
                           what="a file replaced by rename noticed")
            assert v2 is node.deployments["second"]    # updated in place, not recreated
            (mdir / "b.yaml").unlink()
            await wait_for(lambda: "second" not in node.deployments, what="a deleted file noticed")
            assert "first" in node.deployments
        finally:
            node.stop()
            await asyncio.wait_for(task, 20)
    asyncio.run(main())


def test_a_deployment_asking_more_time_than_the_node_allows_is_refused(site):
    tmp, mdir = site
    write(mdir, "d.yaml", deployment("ok", tmp / "echo.wat").replace(
        "  replicas:", "  resources: {timeout: 1s}\n  replicas:") + "---" +
        deployment("greedy", tmp / "echo.wat").replace("  replicas:", "  resources: {timeout: 2s}\n  replicas:"))

    async def main():
        node = Node(NodeConfig(data_dir=tmp / "data", manifests=mdir, max_timeout_ms=1000))
        await node.start()
        try:
            assert set(node.deployments) == {"ok"}
            assert node.last_problems == ["Deployment greedy: resources.timeout 2s is above this node's "
                                          "maximum of 1s per call (iotwasm up --max-timeout)"]
        finally:
            await node.shutdown()

    asyncio.run(main())
