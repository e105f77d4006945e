"""Remote invocation over NATS request/reply with queue groups, against a real nats-server:
one replica anywhere answers, traps come back as dead letters, a node that leaves is
routed around, and a deployment nobody runs is a clear error."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from iotwasm.fleet.invoke import InvokeError, InvokeServer, invoke
from iotwasm.node import Node, NodeConfig


from conftest import ECHO_WAT

DEPLOYMENT = """
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  module: {module}
  capabilities:
    topics: {{subscribe: ["invoke/#"], publish: ["invoke/#"]}}
"""


async def until(cond, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_invocations_reach_one_replica_anywhere_and_survive_a_node_leaving(tmp_path, nats_server):  # noqa: F811
    (tmp_path / "echo.wat").write_text(ECHO_WAT)
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "echo.yaml").write_text(DEPLOYMENT.format(module=tmp_path / "echo.wat"))

    async def main():
        nodes, servers, conns, tasks = [], [], [], []
        try:
            for name in ("edge-a", "edge-b"):
                node = Node(NodeConfig(data_dir=tmp_path / name, manifests=mdir, name=name))
                tasks.append(asyncio.create_task(node.run()))
                await until(lambda n=node: n.ready and "echo" in n.deployments, f"{name} ready")
                nc = await nats.connect(nats_server.url)
                server = InvokeServer(node, nc)
                await server.start()
                nodes.append(node)
                servers.append(server)
                conns.append(nc)
            caller = await nats.connect(nats_server.url)
            conns.append(caller)

            answered_by = set()
            for i in range(40):
                r = await invoke(caller, "echo", b"reading %d" % i)
                assert r.outputs == [("invoke/echo", b"reading %d" % i)] and r.dead_letters == []
                answered_by.add(r.node)
            assert answered_by == {"edge-a", "edge-b"}  # a queue group: both replicas take work

            r = await invoke(caller, "echo", b"!boom", topic="invoke/d7")
            assert r.outputs == [] and len(r.dead_letters) == 1
            assert r.dead_letters[0]["kind"] == "trap" and "echo" in r.dead_letters[0]["error"]
            r = await invoke(caller, "echo", b"after", topic="invoke/d7")
            assert r.outputs == [("invoke/d7", b"after")]

            await servers[0].stop()  # edge-a leaves: every call is answered by edge-b
            for _ in range(10):
                r = await invoke(caller, "echo", b"x")
                assert r.node == "edge-b"

            with pytest.raises(InvokeError, match="invoke 'nosuch': no replica is subscribed"):
                await invoke(caller, "nosuch", b"x", retries=1)
        finally:
            for s in servers:
                await s.stop()
            for n in nodes:
                n.stop()
            for t in tasks:
                await asyncio.wait_for(t, 15)
            for c in conns:
                await c.close()

    asyncio.run(main())


SPINNING = """
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: spin}}
spec:
  module: {module}
  resources: {{timeout: 8s}}
  capabilities:
    host: [log]
    topics: {{subscribe: ["invoke/#"], publish: ["invoke/#"]}}
"""


def test_an_invocation_spinning_to_its_limit_holds_up_no_other(tmp_path, nats_server):  # noqa: F811
    """The module runs off the node's event loop: while one invocation spins until its time
    limit, another deployment's invocation is answered (before the spinning one's reply)."""
    from conftest import TEST_MODULES

    (tmp_path / "echo.wat").write_text(ECHO_WAT)
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "echo.yaml").write_text(DEPLOYMENT.format(module=tmp_path / "echo.wat"))
    (mdir / "spin.yaml").write_text(SPINNING.format(module=TEST_MODULES / "log_then_spin.wat"))

    async def main():
        node = Node(NodeConfig(data_dir=tmp_path / "n", manifests=mdir, name="edge-s"))
        task = asyncio.create_task(node.run())
        nc = caller = server = None
        try:
            await until(lambda: node.ready and {"echo", "spin"} <= set(node.deployments), "node ready")
            nc = await nats.connect(nats_server.url)
            server = InvokeServer(node, nc)
            await server.start()
            caller = await nats.connect(nats_server.url)
            spinning = asyncio.create_task(invoke(caller, "spin", b"x", timeout=60, retries=0))
            await until(lambda: any(ln.text == "spinning" for ln in node.guest_logs.lines("spin")),
                        "the module spinning")
            r = await invoke(caller, "echo", b"meanwhile", timeout=60, retries=0)
            assert r.outputs == [("invoke/echo", b"meanwhile")]
            assert not spinning.done(), "echo was answered only after the spinning call ended"
            r = await spinning
            assert r.outputs == [] and [d["kind"] for d in r.dead_letters] == ["timeout"]
        finally:
            if server is not None:
                await server.stop()
            node.stop()
            await asyncio.wait_for(task, 30)
            for c in (nc, caller):
                if c is not None:
                    await c.close()

    asyncio.run(main())
