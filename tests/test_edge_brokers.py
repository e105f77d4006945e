"""The node against real brokers it does not control: outages, kill -9, restarts.

Each test starts its own Mosquitto processes on free ports (tests/brokers.py) and, where the
node itself must die, runs the node as a separate `iotwasm up` process killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path


from iotwasm.message import Message
from iotwasm.messaging import open_bus
from iotwasm.messaging.errors import MessagingError

from brokers import Mosquitto
from conftest import ECHO_WAT
from nodes import echo_route, echo_site, mqtt_sink, running, store_sink, up

#: in/{device} → echo → the store table `out`
STORE_ROUTE = echo_route("local", [store_sink("out")])


def wait(cond, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def await_cond(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def wait_online(url: str, node: str = "edge1", timeout: float = 30) -> None:
    """The node publishes its retained 'online' status once its routes are subscribed."""
    bus = open_bus(url)
    await bus.connect(timeout=10)
    seen = asyncio.Event()

    async def on(msg: Message):
        if json.loads(msg.payload).get("state") == "online":
            seen.set()

    await bus.subscribe(f"iotwasm/nodes/{node}/status", on, qos=1)
    try:
        await asyncio.wait_for(seen.wait(), timeout)
    finally:
        await bus.close()


async def publish_reliably(url: str, messages: list[tuple[str, bytes]]) -> None:
    """A device that retries until its broker acknowledges (QoS 1, at-least-once)."""
    bus = open_bus(url)
    await bus.connect(timeout=10)
    try:
        for topic, payload in messages:
            while True:
                try:
                    await bus.publish(topic, payload, qos=1, timeout=2)
                    break
                except MessagingError:
                    await asyncio.sleep(0.05)
    finally:
        await bus.close()


def outbox_rows(data: Path) -> int:
    path = data / "outbox.db"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_uplink_outage_and_node_sigkill_lose_nothing(tmp_path, mosquitto):  # noqa: F811
    device_broker = mosquitto
    uplink = Mosquitto(tmp_path / "uplink")      # allocated, not started: the uplink is down
    mdir = echo_site(tmp_path, echo_route("uplink", [mqtt_sink(uplink.url, "up/{device}")]), replicas=2)
    data = tmp_path / "data"
    n = 300
    msgs = [(f"in/d{i % 6}", json.dumps({"seq": i}).encode()) for i in range(n)]

    node = up(mdir, data, device_broker.url)
    try:
        asyncio.run(wait_online(device_broker.url))
        asyncio.run(publish_reliably(device_broker.url, msgs))
        wait(lambda: outbox_rows(data) == n, 30, f"{n} messages kept in the outbox")
        node.send_signal(signal.SIGKILL)
        node.wait(10)

        uplink.start()
        received: list[dict] = []

        async def collect():
            bus = open_bus(uplink.url)
            await bus.connect(timeout=10)

            async def on(msg: Message):
                received.append({"topic": msg.topic, **json.loads(msg.payload)})

            await bus.subscribe("up/#", on, qos=1)
            node2 = up(mdir, data, device_broker.url)
            try:
                await await_cond(lambda: len({r["seq"] for r in received}) == n, 60, "all messages upstream")
            finally:
                node2.send_signal(signal.SIGINT)
                await asyncio.to_thread(node2.wait, 30)
                await bus.close()
            return node2.returncode

        rc = asyncio.run(collect())
        assert rc == 0
        assert {r["seq"] for r in received} == set(range(n))
        for dev in range(6):  # in order per device (duplicates allowed: at-least-once)
            seqs = [r["seq"] for r in received if r["topic"] == f"up/d{dev}"]
            dedup = list(dict.fromkeys(seqs))
            assert dedup == sorted(dedup)
        assert outbox_rows(data) == 0
    finally:
        if node.poll() is None:
            node.kill()
        if uplink.running:
            uplink.kill()


def test_device_broker_killed_and_restarted_mid_stream(tmp_path, mosquitto):  # noqa: F811
    broker = mosquitto
    mdir = echo_site(tmp_path, STORE_ROUTE, replicas=2)
    n = 400

    async def main():
        async with running(mdir, tmp_path / "data", name="edge2", broker=broker.url,
                           sync_interval_s=0.2) as node:
            first = [(f"in/d{i % 4}", b"%d" % i) for i in range(n // 2)]
            second = [(f"in/d{i % 4}", b"%d" % i) for i in range(n // 2, n)]
            await publish_reliably(broker.url, first)
            await await_cond(lambda: node.store.count("out") >= n // 2, 30, "first half stored")
            broker.kill()                       # SIGKILL the broker mid-stream
            await asyncio.to_thread(broker.start)
            # The killed broker forgot the node's session: what it takes before the node has
            # subscribed again has no subscriber and is gone, whoever publishes it. So the
            # devices go on once the node is back: a SUBSCRIBE made now is confirmed after the
            # renewal the bus sent first on its new connection.
            await await_cond(lambda: node.bus.connected and node.bus.stats.reconnects >= 1, 30,
                             "the node back on the broker")
            barrier = await node.bus.subscribe("barrier/x", lambda msg: None, qos=1)
            await barrier.unsubscribe()
            await publish_reliably(broker.url, second)
            await await_cond(lambda: len({int(r["payload"]) for r in node.store.query("out", limit=10 * n)}) == n,
                             60, "every message stored after the broker came back")
            seqs = [int(r["payload"]) for r in node.store.query("out", limit=10 * n)]
            assert set(seqs) == set(range(n))   # at-least-once: duplicates allowed, no gaps
            assert node.bus.stats.reconnects >= 1

    asyncio.run(main())


def test_node_status_is_retained_and_its_will_marks_it_offline(tmp_path, mosquitto):  # noqa: F811
    mdir = echo_site(tmp_path, STORE_ROUTE, replicas=2)
    data = tmp_path / "data"
    node = up(mdir, data, mosquitto.url)
    states: list[dict] = []

    async def watch(until_state: str, timeout: float):
        bus = open_bus(mosquitto.url)
        await bus.connect(timeout=10)

        async def on(msg: Message):
            states.append(json.loads(msg.payload))

        await bus.subscribe("iotwasm/nodes/edge1/status", on, qos=1)
        try:
            await await_cond(lambda: any(s["state"] == until_state for s in states), timeout, until_state)
        finally:
            await bus.close()

    try:
        asyncio.run(watch("online", 30))
        node.send_signal(signal.SIGKILL)
        node.wait(10)
        states.clear()
        asyncio.run(watch("offline", 90))   # the broker publishes the will after keepalive expiry
        assert any(s.get("reason") == "lost" for s in states)
    finally:
        if node.poll() is None:
            node.kill()


# echo, but each call spins first: with batches of one the route falls behind its source, so
# a kill finds messages queued in the node and not yet stored
SLOW_ECHO_WAT = ECHO_WAT.replace(
    "(local $kind i32) (local $first i32)",
    "(local $kind i32) (local $first i32) (local $spin i32)\n"
    "    i32.const 4000000 local.set $spin\n"
    "    (block $s (loop $sl local.get $spin i32.eqz br_if $s\n"
    "      local.get $spin i32.const 1 i32.sub local.set $spin br $sl))", 1)


def test_node_sigkill_with_messages_queued_in_memory_loses_none(tmp_path, mosquitto):  # noqa: F811
    """Incoming QoS 1 messages are acknowledged only once the route is through with them, so
    those still queued in a node killed with SIGKILL come again from its persistent session."""
    assert SLOW_ECHO_WAT != ECHO_WAT
    mdir = echo_site(tmp_path, echo_route("local", [store_sink("out")], batch=1), wat=SLOW_ECHO_WAT)
    data = tmp_path / "data"
    n = 1500

    def stored() -> list[int]:
        path = data / "store.db"
        if not path.exists():
            return []
        try:
            with sqlite3.connect(path, timeout=5) as db:
                return [int(p) for (p,) in db.execute("SELECT payload FROM out")]
        except sqlite3.OperationalError:
            return []

    node = up(mdir, data, mosquitto.url)
    try:
        asyncio.run(wait_online(mosquitto.url))
        asyncio.run(publish_reliably(mosquitto.url, [(f"in/d{i % 5}", b"%d" % i) for i in range(n)]))
        wait(lambda: len(stored()) >= 50, 60, "the first messages stored")
        before = len(stored())
        node.send_signal(signal.SIGKILL)
        node.wait(10)
        assert before < n, "the route kept up; the kill found nothing queued"

        node2 = up(mdir, data, mosquitto.url)
        try:
            wait(lambda: set(stored()) == set(range(n)), 120, "every message stored after the restart")
        finally:
            node2.send_signal(signal.SIGINT)
            node2.wait(30)
        for dev in range(5):  # per device in order, apart from redelivered duplicates
            seqs = [s for s in stored() if s % 5 == dev]
            dedup = list(dict.fromkeys(seqs))
            assert dedup == sorted(dedup)
    finally:
        if node.poll() is None:
            node.kill()
