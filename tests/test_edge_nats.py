"""A node on NATS JetStream: durable consumption survives the node being down."""

from __future__ import annotations

import asyncio
import time

from iotwasm.messaging import open_bus
from iotwasm.node import Node, NodeConfig
from iotwasm.node.node import subject_to_topic


from conftest import ECHO_WAT

MANIFESTS = """
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  module: {module}
  capabilities:
    topics: {{subscribe: ["in/#"], publish: ["in/#"]}}
---
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: durable}}
spec:
  source: {{nats: {{subject: "in.{{device}}", jetstream: true, durable: edge}}}}
  steps: [echo]
  sinks: [{{store: {{table: out}}}}]
"""


def test_subject_mapping():
    assert subject_to_topic("in.{device}") == "in/{device}"
    assert subject_to_topic("a.*.>") == "a/+/#"
    assert subject_to_topic("already/topic") == "already/topic"


async def until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_jetstream_durable_source_gets_what_was_published_while_the_node_was_down(tmp_path, nats_server):  # noqa: F811
    (tmp_path / "echo.wat").write_text(ECHO_WAT)
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "a.yaml").write_text(MANIFESTS.format(module=tmp_path / "echo.wat"))
    url = f"{nats_server.url}?stream=IOT"

    async def publish(start: int, n: int) -> None:
        bus = open_bus(url)
        await bus.connect(timeout=10)
        try:
            for i in range(start, start + n):
                await bus.publish(f"in/d{i % 3}", b"%d" % i, qos=1)   # JetStream ack awaited
        finally:
            await bus.close()

    def node() -> Node:
        return Node(NodeConfig(data_dir=tmp_path / "data", manifests=mdir, broker=url, name="n1"))

    async def main():
        n1 = node()
        await n1.start()
        await publish(0, 50)
        await until(lambda: n1.store.count("out") == 50, 30, "first 50 stored")
        await n1.shutdown()
        await publish(50, 50)                     # nobody is consuming now
        n2 = node()
        await n2.start()
        try:
            await until(lambda: n2.store.count("out") == 100, 30, "the 50 published while down")
            seqs = sorted(int(r["payload"]) for r in n2.store.query("out", limit=500))
            assert seqs == list(range(100))
        finally:
            await n2.shutdown()

    asyncio.run(main())
