"""MqttBus against a real mosquitto (a private one per test on a free port, tests/brokers.py):
qos 0 and 1 round trips and wildcards, a qos 1 publish that returns only after its PUBACK (the
broker paused), a persistent session keeping qos 1 messages while away, a retained status and
the last will after kill -9, and a shared subscription giving each message to one member."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter

import pytest

from buses import Inbox, run
from iotwasm.errors import ConfigError
from iotwasm.messaging import MqttBus, PublishTimeout, Will


def test_mqtt_round_trip_qos0_qos1_and_wildcards(mosquitto):
    async def main():
        bus = MqttBus(mosquitto.url)
        await bus.connect()
        temps, everything = Inbox(), Inbox()
        await bus.subscribe("sensors/+/temp", temps, qos=1)
        await bus.subscribe("sensors/#", everything, qos=0)
        await bus.publish("sensors/t1/temp", b"21.5", qos=1)
        await bus.publish("sensors/t1/hum", b"40", qos=0)
        await bus.publish("sensors", b"root", qos=1)
        await everything.wait_count(3)
        await temps.wait_count(1)
        assert temps.payloads == [b"21.5"] and temps.topics == ["sensors/t1/temp"]
        assert sorted(everything.topics) == ["sensors", "sensors/t1/hum", "sensors/t1/temp"]
        assert bus.stats.published == 3 and bus.stats.received >= 3
        await bus.close()
        assert not bus.connected

    run(main())


def test_mqtt_qos1_publish_returns_only_after_puback(mosquitto):
    """A hung broker (SIGSTOP) keeps the TCP connection but sends no PUBACK: qos 1 must time
    out while qos 0 returns at once; after SIGCONT the bus works again."""

    async def main():
        bus = MqttBus(mosquitto.url, keepalive=60)
        await bus.connect()
        await bus.publish("t", b"warm-up", qos=1)
        mosquitto.pause()
        try:
            await bus.publish("t", b"fire-and-forget", qos=0)
            started = time.monotonic()
            with pytest.raises(PublishTimeout, match="no acknowledgement"):
                await bus.publish("t", b"needs-ack", qos=1, timeout=0.5)
            assert time.monotonic() - started >= 0.45
        finally:
            mosquitto.resume()
        published_before = bus.stats.published
        await bus.publish("t", b"after", qos=1, timeout=5)
        assert bus.stats.published == published_before + 1
        await bus.close()

    run(main())


def test_mqtt_persistent_session_keeps_qos1_messages_while_away(mosquitto):
    async def main():
        sub_bus = MqttBus(mosquitto.url, client_id="keeper")
        await sub_bus.connect()
        first = Inbox()
        await sub_bus.subscribe("inbox/keeper", first, qos=1, durable="keeper")
        await sub_bus.close()

        pub = MqttBus(mosquitto.url)
        await pub.connect()
        for i in range(5):
            await pub.publish("inbox/keeper", str(i).encode(), qos=1)

        back = MqttBus(mosquitto.url, client_id="keeper")
        inbox = Inbox()
        # registered before connecting, so the queued messages have a handler on arrival
        await back.subscribe("inbox/keeper", inbox, qos=1)
        await back.connect()
        await inbox.wait_count(5)
        assert inbox.payloads == [str(i).encode() for i in range(5)]
        assert first.payloads == []
        with pytest.raises(ConfigError, match="persistent session"):
            await pub.subscribe("x", Inbox(), durable="d")
        await back.close()
        await pub.close()

    run(main())


WILL_CHILD = r"""
import asyncio, sys
from iotwasm.messaging import MqttBus, Will

async def main():
    bus = MqttBus(sys.argv[1], client_id="device-7",
                  will=Will("status/device-7", b"offline", qos=1, retain=True))
    await bus.connect()
    await bus.publish("status/device-7", b"online", qos=1, retain=True)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_mqtt_retained_status_and_last_will_after_kill_9(mosquitto):
    """A device process publishes a retained 'online' and has a retained 'offline' will; when
    it is killed with SIGKILL the broker publishes the will; a clean close sends none."""

    async def main():
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WILL_CHILD, mosquitto.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            line = await asyncio.wait_for(child.stdout.readline(), 15)
            assert line.strip() == b"ready", (line, await child.stderr.read())

            watcher = MqttBus(mosquitto.url)
            await watcher.connect()
            status = Inbox()
            await watcher.subscribe("status/+", status, qos=1)
            await status.wait_count(1)
            assert status.payloads == [b"online"]  # retained, from before we subscribed

            child.kill()
            await child.wait()
            await status.wait_count(2)
            assert status.payloads[1] == b"offline" and status.topics[1] == "status/device-7"
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()

        fresh = MqttBus(mosquitto.url)
        await fresh.connect()
        retained = Inbox()
        await fresh.subscribe("status/device-7", retained, qos=1)
        await retained.wait_count(1)
        assert retained.payloads == [b"offline"]  # the will was retained

        # a clean close does not trigger the will
        polite = MqttBus(mosquitto.url, will=Will("status/polite", b"gone"))
        await polite.connect()
        await polite.close()
        await fresh.publish("status/polite", b"marker", qos=1)
        await status.wait_until(lambda i: b"marker" in i.payloads, "the marker")
        assert b"gone" not in status.payloads
        await watcher.close()
        await fresh.close()

    run(main())


def test_mqtt_shared_subscription_gives_each_message_to_one_member(mosquitto):
    async def main():
        members = [MqttBus(mosquitto.url) for _ in range(2)]
        changed = asyncio.Event()
        inboxes = [Inbox(changed=changed), Inbox(changed=changed)]
        for bus, inbox in zip(members, inboxes):
            await bus.connect()
            await bus.subscribe("jobs/+", inbox, qos=1, queue="workers")
        pub = MqttBus(mosquitto.url)
        await pub.connect()
        for i in range(20):
            await pub.publish("jobs/a", str(i).encode(), qos=1)
        total = lambda _: sum(len(x.messages) for x in inboxes)  # noqa: E731
        await inboxes[0].wait_until(lambda i: total(i) >= 20, "20 deliveries in the group")
        got = Counter(p for x in inboxes for p in x.payloads)
        assert set(got) == {str(i).encode() for i in range(20)}
        assert all(inbox.messages for inbox in inboxes), "both members should get work"
        for bus in members + [pub]:
            await bus.close()
        assert max(got.values()) == 1, got

    run(main())


def test_reads_go_through_one_kept_buffer_and_messages_larger_than_it_arrive_whole(mosquitto):
    """The connection reads into one buffer it keeps (messaging/reads.py), not a new 256 KiB
    one per read; a message several times that buffer's size, and the small ones around it
    (split across reads wherever the buffer fills), arrive whole and in order."""
    from iotwasm.messaging.reads import READ_SIZE

    big = bytes(range(256)) * (3 * READ_SIZE // 256 + 7)

    async def main():
        sub = MqttBus(mosquitto.url, client_id="kept-buffer")
        await sub.connect()
        inbox = Inbox()
        await sub.subscribe("kept/#", inbox, qos=1)
        conn = sub._conn
        assert isinstance(conn, asyncio.BufferedProtocol)
        pub = MqttBus(mosquitto.url)
        await pub.connect()
        sent = [str(i).encode() * 40 for i in range(2000)]
        sent[700] = big
        await pub.publish_many([("kept/a", p) for p in sent], qos=1)
        await inbox.wait_count(len(sent))
        assert inbox.payloads == sent
        assert sub._conn is conn and conn._read_view is not None
        assert len(conn._read_view) == READ_SIZE   # the one buffer, still the same size
        await pub.close()
        await sub.close()

    run(main())
