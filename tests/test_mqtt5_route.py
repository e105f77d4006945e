"""MQTT 5 through a node: a device's user properties (headers), content type and correlation
data reach the sinks of a route unchanged — through a wasm step, through the store-and-forward
outbox and directly — while a 3.1.1 sink gets the payload alone. Real Mosquitto 2, real
wasmtime, the node in-process."""

from __future__ import annotations


import asyncio
import contextlib

from brokers import mosquitto  # noqa: F401  (fixture)
from iotwasm.message import Envelope
from iotwasm.messaging.mqtt_bus import MqttBus
from nodes import echo_route, echo_site, mqtt_sink, mqtt_source, running, store_sink
from buses import Inbox, run

HEADERS = (("trace-id", "4bf92f35"), ("tenant", "acme"), ("tenant", "acme-eu"), ("x", ""))


def test_user_properties_arrive_at_the_sinks_unchanged(tmp_path, mosquitto):  # noqa: F811
    url = mosquitto.url
    mdir = echo_site(tmp_path, echo_route("headers", [
        mqtt_sink(f"{url}?version=5", "kept/{device}"),
        mqtt_sink(f"{url}?version=5", "direct/{device}", store_and_forward=False),
        mqtt_sink(url, "old/{device}")]))

    async def main():
        async with running(mdir, tmp_path / "data", name="edge5", broker=url + "?version=5"):
            collector = MqttBus(mosquitto.url, version=5)
            device = MqttBus(mosquitto.url, version=5)
            try:
                await collector.connect()
                await device.connect()
                inbox = Inbox()
                for prefix in ("kept", "direct", "old"):
                    await collector.subscribe(f"{prefix}/#", inbox, qos=1)
                sent = {}
                for i in range(20):
                    env = Envelope(headers=HEADERS + (("seq", str(i)),), content_type="text/plain",
                                   correlation_data=f"c-{i}".encode())
                    sent[str(i).encode()] = env
                    await device.publish(f"in/d{i % 3}", str(i).encode(), qos=1, envelope=env)
                await inbox.wait_until(lambda i: len({(m.topic.split("/")[0], m.payload)
                                                      for m in i.messages}) == 60,
                                       "20 messages at each of the three sinks", timeout=30)
                for m in inbox.messages:
                    prefix, dev = m.topic.split("/")
                    assert dev == f"d{int(m.payload) % 3}"
                    if prefix == "old":
                        assert m.envelope is None      # 3.1.1 carries no properties
                    else:
                        assert m.envelope == sent[m.payload], (prefix, m.envelope)
            finally:
                await collector.close()
                await device.close()

    run(main(), timeout=60)


def test_an_outbox_from_before_envelopes_is_upgraded_in_place(tmp_path):
    """A node upgraded with messages still in its outbox: the table gains the envelope
    column, old rows come out as before, new rows keep their envelope bytes."""
    import sqlite3

    from iotwasm.pipeline.outbox import Outbox
    from iotwasm.pipeline.sinks import storable_envelope, stored_envelope

    path = tmp_path / "outbox.db"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL,
                topic TEXT NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL);
            INSERT INTO outbox(sink, topic, payload, created) VALUES ('s', 'up/a', x'01', 0);
        """)
    box = Outbox(path, max_bytes=10_000)
    env = Envelope(headers=(("k", "v"),), expiry_s=60)
    blob = storable_envelope(env)
    box.append("s", [("up/b", b"\x02", blob)])
    assert box.peek("s") == [(1, "up/a", b"\x01"), (2, "up/b", b"\x02", blob)]
    assert stored_envelope(box.peek("s")[1][3]) == env
    box.close()
    reopened = Outbox(path)
    assert reopened.backlog("s") == 2 and reopened.peek("s")[1][3] == blob
    reopened.close()


def test_nodes_in_one_queue_group_share_a_routes_messages(tmp_path, mosquitto):  # noqa: F811
    """Two nodes run the same route with `queue: workers` (MQTT 5 shared subscription): each
    message is handled by exactly one of them, and both take a part."""
    mdir = echo_site(tmp_path, echo_route("shared", [store_sink("done")],
                                          source=mqtt_source("jobs/{device}", queue="workers")),
                     topics="jobs/#")

    async def main():
        async with contextlib.AsyncExitStack() as nodes_running:
            nodes = [await nodes_running.enter_async_context(
                         running(mdir, tmp_path / f"data{i}", name=f"worker{i}",
                                 broker=mosquitto.url + "?version=5"))
                     for i in range(2)]
            device = MqttBus(mosquitto.url, version=5)
            try:
                await device.connect()
                for i in range(200):
                    await device.publish(f"jobs/d{i % 5}", str(i).encode(), qos=1)
                deadline = asyncio.get_running_loop().time() + 30
                while sum(n.store.count("done") for n in nodes) < 200:
                    assert asyncio.get_running_loop().time() < deadline, [n.store.count("done") for n in nodes]
                    await asyncio.sleep(0.05)
                done = [int(r["payload"]) for n in nodes for r in n.store.query("done", limit=1000)]
                assert sorted(done) == list(range(200))          # each exactly once
                assert all(n.store.count("done") > 0 for n in nodes)
            finally:
                await device.close()

    run(main(), timeout=60)


def test_queue_is_refused_on_a_sink():
    import pytest

    from iotwasm.node.manifests import Sink

    with pytest.raises(ValueError, match="queue shares a source's messages between nodes; a sink has none"):
        Sink.model_validate({"mqtt": {"topic": "x", "queue": "g"}})


def test_a_message_too_large_for_the_uplink_is_a_dead_letter_and_the_rest_go(tmp_path, mosquitto):  # noqa: F811
    """An uplink broker whose maximum packet size one message exceeds: through the outbox
    that message becomes a dead letter of the route (message_too_large), and the messages
    before and after it are delivered in order — it holds nothing back."""
    from brokers import Mosquitto

    small = Mosquitto(tmp_path / "small", options={"max_packet_size": 2048}).start()
    try:
        mdir = echo_site(tmp_path, echo_route("up", [mqtt_sink(f"{small.url}?version=5", "up/{device}")]))

        async def main():
            async with running(mdir, tmp_path / "data", name="edge-big", broker=mosquitto.url) as node:
                collector = MqttBus(small.url, version=5)
                device = MqttBus(mosquitto.url)
                try:
                    await collector.connect()
                    await device.connect()
                    inbox = Inbox()
                    await collector.subscribe("up/#", inbox, qos=1)
                    payloads = [b"m%d" % i if i != 4 else b"x" * 3000 for i in range(10)]
                    for p in payloads:
                        await device.publish("in/d1", p, qos=1)
                    want = [p for p in payloads if len(p) < 100]
                    await inbox.wait_until(lambda i: i.payloads == want, "the nine small ones, in order",
                                           timeout=30)
                    # counted when the route hands it on, kept once the dead-letter store has
                    # written it: wait for the record itself
                    async with asyncio.timeout(10):
                        while not (stored := node.state.dead_letters("up", limit=10)):
                            await asyncio.sleep(0.01)
                    (dead,) = stored
                    assert node.routes["up"].runner.stats.dead_letters == 1
                    assert dead["kind"] == "message_too_large" and dead["step"] == "up/0:mqtt"
                    assert "the broker takes at most 2,048" in dead["error"]
                    assert dead["payload"] == b"x" * 3000
                    sink = node.routes["up"].sinks[0]
                    assert sink.status()["health"] == "ok"
                finally:
                    await collector.close()
                    await device.close()

        run(main(), timeout=60)
    finally:
        small.stop()
