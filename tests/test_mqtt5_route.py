"""MQTT 5 through a node: a device's user properties (headers), content type and correlation
data reach the sinks of a route unchanged — through a wasm step, through the store-and-forward
outbox and directly — while a 3.1.1 sink gets the payload alone. Real Mosquitto 2, real
wasmtime, the node in-process."""

from __future__ import annotations


import asyncio

from brokers import mosquitto  # noqa: F401  (fixture)
from conftest import ECHO_WAT
from iotwasm.message import Envelope
from iotwasm.messaging.mqtt_bus import MqttBus
from iotwasm.node import Node, NodeConfig
from test_messaging_bus import Inbox, run

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
metadata: {{name: headers}}
spec:
  source: {{mqtt: {{topic: "in/{{device}}", qos: 1}}}}
  steps: [echo]
  sinks:
    - mqtt: {{url: "{url}?version=5", topic: "kept/{{device}}", qos: 1}}
    - mqtt: {{url: "{url}?version=5", topic: "direct/{{device}}", qos: 1}}
      storeAndForward: false
    - mqtt: {{url: "{url}", topic: "old/{{device}}", qos: 1}}
"""

HEADERS = (("trace-id", "4bf92f35"), ("tenant", "acme"), ("tenant", "acme-eu"), ("x", ""))


def test_user_properties_arrive_at_the_sinks_unchanged(tmp_path, mosquitto):  # noqa: F811
    (tmp_path / "echo.wat").write_text(ECHO_WAT)
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "a.yaml").write_text(MANIFESTS.format(module=tmp_path / "echo.wat", url=mosquitto.url))

    async def main():
        node = Node(NodeConfig(data_dir=tmp_path / "data", manifests=mdir,
                               broker=mosquitto.url + "?version=5", name="edge5"))
        await node.start()
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
            await node.shutdown()

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


SHARED = """
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  module: {module}
  capabilities:
    topics: {{subscribe: ["jobs/#"], publish: ["jobs/#"]}}
---
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: shared}}
spec:
  source: {{mqtt: {{topic: "jobs/{{device}}", qos: 1, queue: workers}}}}
  steps: [echo]
  sinks:
    - store: {{table: done}}
"""


def test_nodes_in_one_queue_group_share_a_routes_messages(tmp_path, mosquitto):  # noqa: F811
    """Two nodes run the same route with `queue: workers` (MQTT 5 shared subscription): each
    message is handled by exactly one of them, and both take a part."""
    (tmp_path / "echo.wat").write_text(ECHO_WAT)
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "a.yaml").write_text(SHARED.format(module=tmp_path / "echo.wat"))

    async def main():
        nodes = [Node(NodeConfig(data_dir=tmp_path / f"data{i}", manifests=mdir,
                                 broker=mosquitto.url + "?version=5", name=f"worker{i}"))
                 for i in range(2)]
        for node in nodes:
            await node.start()
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
            for node in nodes:
                await node.shutdown()

    run(main(), timeout=60)


def test_queue_is_refused_on_a_sink():
    import pytest

    from iotwasm.node.manifests import Sink

    with pytest.raises(ValueError, match="queue shares a source's messages between nodes; a sink has none"):
        Sink.model_validate({"mqtt": {"topic": "x", "queue": "g"}})
