"""NatsBus against a real nats-server with JetStream (a private one per test on a free port,
tests/brokers.py): core round trips and the topic mapping, what core NATS refuses, queue
groups, a server down at start, connects and reconnects paced by the shared backoff, a
JetStream publish timing out on a hung server, and a server killed with kill -9 and restarted
mid-stream with nothing lost from JetStream."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from brokers import NatsServer
from buses import Inbox, RecordedBackoff, States, poll_until, publish_reliably, run, seqs_of
from iotwasm.errors import ConfigError, SinkRejected
from iotwasm.messaging.errors import MessageTooLarge
from iotwasm.messaging import BrokerUnavailable, BusState, InvalidTopic, NatsBus, PublishTimeout


def test_nats_core_round_trip_and_topic_mapping(nats_server):
    async def main():
        bus = NatsBus(nats_server.url)
        await bus.connect()
        temps, tree = Inbox(), Inbox()
        await bus.subscribe("sensors/+/temp", temps)
        await bus.subscribe("sensors/#", tree)  # also 'sensors' itself, as MQTT
        await bus.publish("sensors/t1/temp", b"21.5")
        await bus.publish("sensors", b"root")
        await bus.publish("sensors/t1/hum", b"40", qos=1)  # core qos 1: server round trip
        await tree.wait_count(3)
        await temps.wait_count(1)
        assert temps.topics == ["sensors/t1/temp"]
        assert sorted(tree.topics) == ["sensors", "sensors/t1/hum", "sensors/t1/temp"]
        with pytest.raises(InvalidTopic, match="contains '.'"):
            await bus.publish("sensors/temp.c", b"1")
        with pytest.raises(ConfigError, match="retain"):
            await bus.publish("sensors/x", b"1", retain=True)
        with pytest.raises(ConfigError, match="jetstream"):
            await bus.subscribe("x", Inbox(), durable="d")
        # over the server's max_payload: refused alone, before sending (a refusal for good)
        big = b"x" * (bus._client().max_payload + 1)
        results = await bus.publish_many([("sensors/a/big", big), ("sensors/a/ok", b"1")], qos=1)
        assert isinstance(results[0], MessageTooLarge) and isinstance(results[0], SinkRejected)
        assert "the server takes at most" in str(results[0]) and results[1] is None
        await bus.close()

    run(main())


def test_nats_queue_group_delivers_each_message_to_exactly_one_member(nats_server):
    async def main():
        members = [NatsBus(nats_server.url) for _ in range(3)]
        changed = asyncio.Event()
        inboxes = [Inbox(changed=changed) for _ in members]
        subs = []
        for bus, inbox in zip(members, inboxes):
            await bus.connect()
            subs.append(await bus.subscribe("jobs/+", inbox, queue="workers"))
        audit_bus = NatsBus(nats_server.url)
        await audit_bus.connect()
        audit = Inbox()
        await audit_bus.subscribe("jobs/+", audit)
        pub = NatsBus(nats_server.url)
        await pub.connect()
        n = 60
        for i in range(n):
            await pub.publish("jobs/a", str(i).encode())
        await pub.flush()
        await audit.wait_count(n)
        await inboxes[0].wait_until(
            lambda _: {p for x in inboxes for p in x.payloads} >= set(audit.payloads),
            "every job handled by some member")
        # anything still on its way to a member has been read once flush returns
        for bus, sub in zip(members, subs):
            await bus.flush()
            await sub.wait_idle()
        got = Counter(p for x in inboxes for p in x.payloads)
        everyone = set(got)
        assert everyone == {str(i).encode() for i in range(n)}
        assert max(got.values()) == 1, [p for p, c in got.items() if c > 1]
        assert sum(1 for x in inboxes if x.messages) >= 2, "work should be spread"
        for bus in members + [audit_bus, pub]:
            await bus.close()

    run(main())


def test_nats_server_down_at_start_connect_raises_then_bus_connects_by_itself(tmp_path):
    server = NatsServer(tmp_path / "late")  # port allocated, server not started

    async def main():
        bus = NatsBus(server.url, stream="LATE")
        states = States(bus)
        with pytest.raises(BrokerUnavailable, match=f"cannot connect to {server.url} within"):
            await bus.connect(timeout=0.3)
        assert not bus.closed and not bus.connected
        with pytest.raises(BrokerUnavailable, match="not connected yet"):
            await bus.publish("late/x", b"1")
        core, durable = Inbox(), Inbox()
        # registered now, set up once the server is there
        await bus.subscribe("late/+", core)
        await bus.subscribe("late/+", durable, qos=1, durable="late")
        await asyncio.to_thread(server.start)
        await states.until_connected()
        await bus.publish("late/x", b"hello", qos=1)
        await core.wait_count(1)
        await durable.wait_count(1)
        assert core.payloads == durable.payloads == [b"hello"]
        await bus.close()

    try:
        run(main())
    finally:
        server.kill()


def test_nats_connects_and_reconnects_with_the_shared_backoff(tmp_path):
    """The first connection and every reconnect wait the injected backoff's delays; a
    connection made starts them over."""
    server = NatsServer(tmp_path / "late")
    delays = RecordedBackoff(0.01, 0.2, rng=random.Random(5))

    def until(cond, what):
        return poll_until(cond, f"{what} ({delays.calls})")

    async def main():
        bus = NatsBus(server.url, backoff=delays, connect_timeout=0.5)
        states = States(bus)
        with pytest.raises(BrokerUnavailable):
            await bus.connect(timeout=0.3)
        await until(lambda: delays.failures >= 3, "three failed first attempts")
        await asyncio.to_thread(server.start)
        await states.until_connected()
        assert delays.failures == 0 and delays.calls[-1] == "reset"
        held = len(delays.calls)
        await asyncio.to_thread(server.kill)
        await states.until_seen(BusState.DISCONNECTED)
        await until(lambda: delays.failures >= 3, "three failed reconnect attempts")
        await asyncio.to_thread(server.start)
        await until(lambda: "reset" in delays.calls[held:], "the reconnect")
        await states.until_seen(BusState.CONNECTED, 2)
        await bus.close()

    try:
        run(main(), timeout=45)
    finally:
        server.kill()


def test_nats_jetstream_publish_times_out_when_server_hangs(nats_server):
    async def main():
        bus = NatsBus(nats_server.url, stream="HANG")
        await bus.connect()
        await bus.publish("hang/x", b"1", qos=1)
        nats_server.pause()
        try:
            await bus.publish("hang/x", b"no-ack-needed", qos=0)
            with pytest.raises(PublishTimeout):
                await bus.publish("hang/x", b"2", qos=1, timeout=0.5)
        finally:
            nats_server.resume()
        await bus.publish("hang/x", b"3", qos=1)
        await bus.close()

    run(main())


def test_nats_server_killed_and_restarted_jetstream_loses_nothing(nats_server):
    """kill -9 nats-server mid-stream and restart it on the same port and store directory.

    The publisher retries what was not acknowledged; the durable consumer (its position is in
    the JetStream store) hands every message to the subscriber at least once, including
    those published while the subscriber's bus was closed.
    """
    n = 300

    async def main():
        pub = NatsBus(nats_server.url, stream="TELEMETRY", reconnect_time_wait=0.1)
        sub_bus = NatsBus(nats_server.url, stream="TELEMETRY", ack_wait=2.0)
        pub_states, sub_states = States(pub), States(sub_bus)
        await pub.connect()
        await sub_bus.connect()
        inbox = Inbox()
        await sub_bus.subscribe("telemetry/+", inbox, qos=1, durable="archive")

        failures: list = []
        failed = asyncio.Event()

        def kill_at_100(seq):
            if seq == 100:
                nats_server.kill()  # mid-stream: 200 messages still to go

        publisher = asyncio.create_task(
            publish_reliably(pub, pub_states, "telemetry/t1", range(n), failures=failures,
                             failed=failed, before=kill_at_100))
        await asyncio.wait_for(failed.wait(), 10)
        await asyncio.to_thread(nats_server.start)
        await asyncio.wait_for(publisher, 25)
        await sub_states.until_seen(BusState.CONNECTED, 2)  # connect + reconnect

        # part two: the subscriber is away while more messages are stored
        await inbox.wait_until(lambda i: seqs_of(i) >= set(range(n)), f"{n} messages", 15)
        await sub_bus.close()
        await publish_reliably(pub, pub_states, "telemetry/t1", range(n, n + 20),
                               failures=failures)
        back = NatsBus(nats_server.url, stream="TELEMETRY")
        await back.connect()
        rest = Inbox()
        await back.subscribe("telemetry/+", rest, qos=1, durable="archive")
        await rest.wait_until(lambda i: seqs_of(i) >= set(range(n, n + 20)), "20 more", 15)

        missing = set(range(n + 20)) - seqs_of(inbox) - seqs_of(rest)
        assert not missing, f"lost {sorted(missing)[:20]}"
        assert failures, "the server was killed mid-stream, some publish should have failed"
        assert pub.stats.reconnects >= 1 and pub_states.seen.count(BusState.DISCONNECTED) >= 1
        await pub.close()
        await back.close()

    run(main(), timeout=50)
