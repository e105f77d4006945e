"""MqttBus when its broker fails: killed with kill -9 and restarted mid-stream (nothing lost,
subscriptions renewed), gone while publishing (fails fast), down at start (the bus connects by
itself later), a peer sending garbage or an oversized or QoS 3 packet (the connection dropped
and made again), and reconnects paced by the shared backoff. Each broker is a private process
on a free port (tests/brokers.py) that a test can pause, kill -9 and start again."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from brokers import Mosquitto, free_port
from buses import Inbox, RecordedBackoff, States, poll_until, publish_reliably, run, seqs_of
from iotwasm.backoff import Backoff
from iotwasm.messaging import BrokerUnavailable, BusState, MqttBus


def test_mqtt_broker_killed_and_restarted_mid_stream_loses_nothing(mosquitto):
    """kill -9 the broker while a qos 1 stream is flowing, restart it on the same port.

    The bus reconnects by itself and renews its subscription; a publisher that retries on
    BrokerUnavailable/PublishTimeout gets every message through at least once. Publisher and
    subscriber share one bus (one connection): the broker writes the subscriber's copy before
    the PUBACK on that connection, so a PUBACK means the copy had already arrived; the killed
    broker keeps no state, so everything after the restart depends on the resubscription.
    A second bus only subscribes, and must also be back after the restart.
    """
    n = 400

    async def main():
        bus = MqttBus(mosquitto.url, client_id="stream-1", reconnect_max=1.0)
        watcher = MqttBus(mosquitto.url, reconnect_max=1.0)
        states, watcher_states = States(bus), States(watcher)
        await bus.connect()
        await watcher.connect()
        inbox, watched = Inbox(), Inbox()
        await bus.subscribe("stream/seq", inbox, qos=1)
        await watcher.subscribe("stream/#", watched, qos=1)

        failures: list = []
        failed = asyncio.Event()

        def kill_at_100(seq):
            if seq == 100:
                mosquitto.kill()  # mid-stream: 300 messages still to go

        publisher = asyncio.create_task(
            publish_reliably(bus, states, "stream/seq", range(n), failures=failures,
                             failed=failed, before=kill_at_100))
        await asyncio.wait_for(failed.wait(), 10)  # the publisher noticed
        await states.until_seen(BusState.DISCONNECTED)
        await asyncio.to_thread(mosquitto.start)
        await asyncio.wait_for(publisher, 25)

        await inbox.wait_until(lambda i: seqs_of(i) >= set(range(n)),
                               f"all {n} sequence numbers", timeout=10)
        missing = set(range(n)) - seqs_of(inbox)
        assert not missing, f"lost {sorted(missing)[:20]}"
        assert failures, "the broker was killed mid-stream, some publish should have failed"
        assert bus.stats.reconnects >= 1
        assert states.seen.count(BusState.DISCONNECTED) >= 1

        # the watcher reconnected and resubscribed by itself too
        await watcher_states.until_connected()
        await watcher_states.until_seen(BusState.CONNECTED, 2)
        await bus.publish("stream/end", b"end", qos=1)
        await watched.wait_until(lambda i: b"end" in i.payloads, "the end marker")
        await bus.close()
        await watcher.close()

    run(main(), timeout=45)


def test_mqtt_publish_while_disconnected_fails_fast(mosquitto):
    async def main():
        bus = MqttBus(mosquitto.url, reconnect_min=0.1, reconnect_max=0.5)
        states = States(bus)
        await bus.connect()
        mosquitto.kill()
        await states.until_seen(BusState.DISCONNECTED)
        for qos in (0, 1):
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="not connected"):
                await bus.publish("t", b"x", qos=qos)
            assert time.monotonic() - started < 0.1
        await asyncio.to_thread(mosquitto.start)
        await states.until_connected()
        await bus.publish("t", b"back", qos=1)
        await bus.close()

    run(main())


def test_mqtt_broker_down_at_start_connect_raises_then_bus_connects_by_itself(tmp_path):
    broker = Mosquitto(tmp_path / "late")  # port allocated, broker not started

    async def main():
        bus = MqttBus(broker.url, reconnect_max=0.5)
        states = States(bus)
        inbox = Inbox()
        with pytest.raises(BrokerUnavailable, match=f"cannot connect to {broker.url} within"):
            await bus.connect(timeout=0.3)
        assert not bus.closed and not bus.connected
        with pytest.raises(BrokerUnavailable, match="not connected"):
            await bus.publish("late/x", b"1", qos=1)
        await bus.subscribe("late/#", inbox, qos=1)  # made once connected
        await asyncio.to_thread(broker.start)
        await states.until_connected()
        await bus.publish("late/x", b"hello", qos=1)
        await inbox.wait_count(1)
        assert bus.stats.reconnects == 0  # the first connection, however late
        await bus.close()
        assert states.seen[-1] == BusState.CLOSED

    try:
        run(main())
    finally:
        broker.kill()


def test_mqtt_broker_sending_garbage_is_dropped_and_reconnected():
    """A peer that answers CONNACK and then sends bytes that are not MQTT: the bus drops that
    connection, says why in one line, and connects again; the process and the loop go on."""

    async def main():
        connections = []

        async def peer(reader, writer):
            connections.append(writer)
            await reader.read(1024)  # CONNECT
            writer.write(b"\x20\x02\x00\x00")  # CONNACK accepted
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"\x30\xff\xff\xff\xff\x01")  # a remaining length of 5 bytes
            await writer.drain()
            await reader.read(1024)

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        bus = MqttBus(f"mqtt://127.0.0.1:{port}", reconnect_min=0.05, reconnect_max=0.1)
        states = States(bus)
        await bus.connect()
        await states.until_seen(BusState.DISCONNECTED)
        await states.until_seen(BusState.CONNECTED, 2)
        assert len(connections) >= 2 and bus.stats.reconnects >= 1
        await bus.close()
        server.close()

    run(main())


@pytest.mark.parametrize("bad,says", [
    (b"\x30\xff\xff\xff\x7f", "exceeds the limit of 65,536 bytes"),       # announces 256 MiB
    (b"\x36\x09\x00\x01t\x00\x01hello", "QoS 3"),                           # no such level
])
def test_mqtt_oversized_or_qos3_packet_drops_the_connection_and_reconnects(bad, says, caplog):
    """A broker cannot make the bus buffer more than `max_packet_size` (the limit applies when
    the length is read) nor hand it a QoS 3 message: one line says what, the connection is
    dropped and made again."""

    async def main():
        connections = []

        async def peer(reader, writer):
            connections.append(writer)
            await reader.read(1024)  # CONNECT
            writer.write(b"\x20\x02\x00\x00" + bad)  # CONNACK accepted, then the bad packet
            await writer.drain()
            await reader.read(1024)

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        bus = MqttBus(f"mqtt://127.0.0.1:{port}", max_packet_size=65536,
                      backoff=Backoff(0.01, 0.05, rng=random.Random(7)))
        states = States(bus)
        await bus.connect()
        await states.until_seen(BusState.DISCONNECTED)
        await states.until_seen(BusState.CONNECTED, 2)
        assert bus.stats.errors >= 1
        await bus.close()
        server.close()

    with caplog.at_level("WARNING", logger="iotwasm.messaging.mqtt"):
        run(main())
    lines = [r.getMessage() for r in caplog.records if says in r.getMessage()]
    assert lines and "reconnect" in lines[0], [r.getMessage() for r in caplog.records]


def test_mqtt_reconnects_with_the_shared_backoff(tmp_path):
    """While the broker is away each attempt waits the next delay of the injected backoff
    (growing, with jitter); a connection that stayed up longer than `reconnect_max` starts
    the delays over."""
    port = free_port()
    delays = RecordedBackoff(0.01, 0.2, rng=random.Random(3))

    def until(cond, what):
        return poll_until(cond, f"{what} ({delays.calls})")

    async def main():
        bus = MqttBus(f"mqtt://127.0.0.1:{port}", backoff=delays, reconnect_max=0.2)
        states = States(bus)
        await bus.connect(wait=False)
        await until(lambda: delays.failures >= 4, "four failed attempts")
        assert "reset" not in delays.calls
        broker = Mosquitto(tmp_path / "late", port=port)
        await asyncio.to_thread(broker.start)
        try:
            await states.until_connected()
            held = len(delays.calls)
            await asyncio.sleep(0.3)  # longer than reconnect_max: a connection that held
            await asyncio.to_thread(broker.stop)
            await states.until_seen(BusState.DISCONNECTED)
            await until(lambda: "next" in delays.calls[held:], "the first delay after the drop")
            assert delays.calls[held:held + 2] == ["reset", "next"]
        finally:
            broker.kill()
        await bus.close()

    run(main())
