"""Remote invocation over NATS request/reply with queue groups, against a real nats-server:
one replica anywhere answers, traps come back as dead letters, a node that leaves is
routed around, and a deployment nobody runs is a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats
import pytest

from iotwasm.fleet.invoke import InvokeError, InvokeServer, invoke

from nodes import echo_site, running


async def until(cond, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_invocations_reach_one_replica_anywhere_and_survive_a_node_leaving(tmp_path, nats_server):  # noqa: F811
    mdir = echo_site(tmp_path, topics="invoke/#")

    async def main():
        async with contextlib.AsyncExitStack() as stack:
            servers = []
            for name in ("edge-a", "edge-b"):
                node = await stack.enter_async_context(running(mdir, tmp_path / name, name=name, serve=True))
                await until(lambda n=node: n.ready and "echo" in n.deployments, f"{name} ready")
                nc = await nats.connect(nats_server.url)
                stack.push_async_callback(nc.close)
                server = InvokeServer(node, nc)
                await server.start()
                stack.push_async_callback(server.stop)
                servers.append(server)
            caller = await nats.connect(nats_server.url)
            stack.push_async_callback(caller.close)

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

    mdir = echo_site(tmp_path, topics="invoke/#")
    (mdir / "spin.yaml").write_text(SPINNING.format(module=TEST_MODULES / "log_then_spin.wat"))

    async def main():
        async with running(mdir, tmp_path / "n", name="edge-s", serve=True) as node, \
                contextlib.AsyncExitStack() as stack:
            await until(lambda: node.ready and {"echo", "spin"} <= set(node.deployments), "node ready")
            nc = await nats.connect(nats_server.url)
            stack.push_async_callback(nc.close)
            server = InvokeServer(node, nc)
            await server.start()
            stack.push_async_callback(server.stop)
            caller = await nats.connect(nats_server.url)
            stack.push_async_callback(caller.close)
            spinning = asyncio.create_task(invoke(caller, "spin", b"x", timeout=60, retries=0))
            await until(lambda: any(ln.text == "spinning" for ln in node.guest_logs.lines("spin")),
                        "the module spinning")
            r = await invoke(caller, "echo", b"meanwhile", timeout=60, retries=0)
            assert r.outputs == [("invoke/echo", b"meanwhile")]
            assert not spinning.done(), "echo was answered only after the spinning call ended"
            r = await spinning
            assert r.outputs == [] and [d["kind"] for d in r.dead_letters] == ["timeout"]

    asyncio.run(main())


def test_a_breaker_stops_invoking_a_deployment_nobody_answers_for_and_probes_it(nats_server):  # noqa: F811
    from iotwasm.breaker import CLOSED, OPEN, CircuitBreaker

    class Clock:
        t = 0.0

        def __call__(self):
            return self.t

    async def main():
        nc = await nats.connect(nats_server.url)
        try:
            clock = Clock()
            br = CircuitBreaker("invoke echo", failures=2, open_for=5, max_open_for=5, clock=clock)
            for _ in range(2):   # nobody answers: each invocation fails after its tries
                with pytest.raises(InvokeError, match="no replica is subscribed"):
                    await invoke(nc, "echo", b"x", retries=1, backoff=0.001, breaker=br)
            assert br.state == OPEN
            requests = []

            async def record(m):
                requests.append(m)

            sub = await nc.subscribe("iotwasm.invoke.echo", cb=record)
            with pytest.raises(InvokeError, match="circuit of invoke echo is open after 2 failure"):
                await invoke(nc, "echo", b"x", breaker=br)
            await nc.flush()
            assert requests == [] and br.rejected == 1   # refused without a request
            await sub.unsubscribe()

            async def answer(m):
                await m.respond(b'{"node": "n1", "outputs": [{"payload": "y"}], "dead_letters": []}')

            await nc.subscribe("iotwasm.invoke.echo", cb=answer)
            clock.t += 5           # half-open: one probe goes out, succeeds, closes it
            res = await invoke(nc, "echo", b"x", breaker=br)
            assert res.node == "n1" and br.state == CLOSED
        finally:
            await nc.close()

    asyncio.run(main())
