"""A node on NATS JetStream: durable consumption survives the node being down."""

from __future__ import annotations

import asyncio
import time

from iotwasm.messaging import open_bus
from iotwasm.node.node import subject_to_topic

from nodes import echo_route, echo_site, running, store_sink


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
    mdir = echo_site(tmp_path, echo_route("durable", [store_sink("out")],
                                          source='{nats: {subject: "in.{device}", jetstream: true, durable: edge}}'))
    url = f"{nats_server.url}?stream=IOT"

    async def publish(start: int, n: int) -> None:
        bus = open_bus(url)
        await bus.connect(timeout=10)
        try:
            for i in range(start, start + n):
                await bus.publish(f"in/d{i % 3}", b"%d" % i, qos=1)   # JetStream ack awaited
        finally:
            await bus.close()

    async def main():
        async with running(mdir, tmp_path / "data", name="n1", broker=url) as n1:
            await publish(0, 50)
            await until(lambda: n1.store.count("out") == 50, 30, "first 50 stored")
        await publish(50, 50)                     # nobody is consuming now
        async with running(mdir, tmp_path / "data", name="n1", broker=url) as n2:
            await until(lambda: n2.store.count("out") == 100, 30, "the 50 published while down")
            seqs = sorted(int(r["payload"]) for r in n2.store.query("out", limit=500))
            assert seqs == list(range(100))

    asyncio.run(main())
