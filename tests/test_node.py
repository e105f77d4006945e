"""A node on its in-process bus: manifests applied live, hot updates without loss, rollback."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from iotwasm.node import Node, NodeConfig

from brokers import free_port
from conftest import ECHO_WAT

TRAP_ALL_WAT = ECHO_WAT.replace("local.get $first i32.const 33 i32.eq (if (then unreachable))",
                                "unreachable")
V2_WAT = ECHO_WAT.replace("(global $heap (mut i32) (i32.const 1024))",
                          "(global $heap (mut i32) (i32.const 2048))")  # same behaviour, new digest


def deployment(name: str, module: str, replicas: int = 1, gate: int = 20) -> str:
    return f"""
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  module: {module}
  replicas: {replicas}
  capabilities:
    topics: {{subscribe: ["in/#"], publish: ["in/#"]}}
  updateStrategy: {{healthGate: {{messages: {gate}, maxTrapRate: 0.2}}}}
"""


def route(name: str, step: str, table: str) -> str:
    return f"""
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: {name}}}
spec:
  source: {{bus: {{topic: "in/{{device}}"}}}}
  steps: [{step}]
  sinks: [{{store: {{table: {table}}}}}]
"""


@pytest.fixture()
def site(tmp_path: Path):
    (tmp_path / "echo.wat").write_text(ECHO_WAT)
    (tmp_path / "v2.wat").write_text(V2_WAT)
    (tmp_path / "trap.wat").write_text(TRAP_ALL_WAT)
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    return tmp_path, mdir


def write(mdir: Path, name: str, text: str) -> None:
    p = mdir / name
    p.write_text(text)
    # make sure the node sees a new stamp even within one mtime tick
    t = time.time_ns() + 1_000_000
    import os
    os.utime(p, ns=(t, t))


async def started(tmp: Path, mdir: Path) -> Node:
    node = Node(NodeConfig(data_dir=tmp / "data", manifests=mdir, sync_interval_s=0.05))
    await node.start()
    return node


async def wait_for(cond, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def publish(node: Node, n: int, start: int = 0, devices: int = 5) -> None:
    for i in range(start, start + n):
        await node.bus.publish(f"in/d{i % devices}", b"%d" % i, qos=1)


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


HTTP_ROUTE = route("web", "echo", "web").replace(
    'source: {bus: {topic: "in/{device}"}}', 'source: {http: {path: /ingest, topic: "in/{device}"}}')


def test_http_ingest_source(site):
    import urllib.request

    tmp, mdir = site
    port = free_port()
    http_route = HTTP_ROUTE

    def post(path: str, body: bytes, ctype: str = "application/json") -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", body, {"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + http_route)
        node = Node(NodeConfig(data_dir=tmp / "data", manifests=mdir, http=f"127.0.0.1:{port}"))
        await node.start()
        try:
            assert await asyncio.to_thread(post, "/ingest?device=d1", b'{"t": 1}') == (202, {"accepted": 1})
            assert await asyncio.to_thread(post, "/ingest?device=d2", b'[{"t": 2}, {"t": 3}]') == (202, {"accepted": 2})
            assert (await asyncio.to_thread(post, "/ingest", b"{}"))[0] == 400  # no device for the topic
            assert (await asyncio.to_thread(post, "/nowhere?device=x", b"{}"))[0] == 404
            assert (await asyncio.to_thread(post, "/ingest?device=d1", b"{oops"))[0] == 400
            await wait_for(lambda: node.store.count("web") == 3, what="3 rows from http")
            rows = node.store.query("web", limit=10)
            assert sorted(r["topic"] for r in rows) == ["in/d1", "in/d2", "in/d2"]
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_http_source_on_a_taken_port_is_a_route_problem_not_the_end_of_the_node(site):
    """Something else listens on the ingest port: the http route cannot start and says why;
    the node (and its other routes) runs on."""
    import socket

    tmp, mdir = site
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    http_route = HTTP_ROUTE

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + http_route
              + "---" + route("local", "echo", "local"))
        node = Node(NodeConfig(data_dir=tmp / "data", manifests=mdir, http=f"127.0.0.1:{port}"))
        await node.start()
        try:
            [problem] = node.last_problems
            assert problem.startswith("Route web: http ingest cannot listen on 127.0.0.1:") \
                and "in use" in problem, problem
            assert "local" in node.routes and "web" not in node.routes
            await node.bus.publish("in/d1", b'{"t": 1}')
            await wait_for(lambda: node.store.count("local") == 1, what="the other route working")
            assert any(e["kind"] == "failed" for e in node.state.events("web"))
        finally:
            await node.shutdown()
            taken.close()

    asyncio.run(main())


def test_http_ingest_refuses_an_oversized_body_while_it_arrives(site):
    """The 1 MiB cap applies while the body streams in: a client that keeps sending gets 413
    once it is past the cap, without the node waiting for (or keeping) the rest."""
    import socket

    tmp, mdir = site
    port = free_port()
    http_route = HTTP_ROUTE

    def endless_upload() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as c:
            c.sendall(b"POST /ingest?device=d1 HTTP/1.1\r\nHost: x\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 65536
            for _ in range(20):  # 1.25 MiB of body, and no end of it
                c.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            return c.recv(200)

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + http_route)
        node = Node(NodeConfig(data_dir=tmp / "data", manifests=mdir, http=f"127.0.0.1:{port}"))
        await node.start()
        try:
            head = await asyncio.to_thread(endless_upload)
            assert head.startswith(b"HTTP/1.1 413"), head
            assert node.store.count("web") == 0
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
