"""Buses against real brokers: the in-process bus, mosquitto and nats-server (with JetStream).

Every broker is a private process on a free port (tests/brokers.py), so tests can pause it,
kill -9 it and start it again on the same port and data directory. Waits are on events
(messages arriving, connection state changes) with bounded timeouts that say what was awaited.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter

import pytest

from brokers import Mosquitto, NatsServer, free_port
from iotwasm.backoff import Backoff
from iotwasm.errors import ConfigError, SinkRejected
from iotwasm.message import Message
from iotwasm.messaging.errors import MessageTooLarge
from iotwasm.messaging import (
    BrokerUnavailable,
    BusState,
    InProcessBus,
    InvalidTopic,
    MqttBus,
    NatsBus,
    PublishTimeout,
    Will,
    open_bus,
)

TEST_TIMEOUT = 30.0


def run(coro, timeout: float = TEST_TIMEOUT):
    async def bounded():
        try:
            async with asyncio.timeout(timeout) as scope:
                return await coro
        except TimeoutError:
            if scope.expired():
                raise AssertionError(f"test did not finish within {timeout}s") from None
            raise

    return asyncio.run(bounded())


class Inbox:
    """A handler that records messages and lets a test await a condition on them."""

    def __init__(self, fail_on=None, changed: asyncio.Event | None = None):
        self.messages: list[Message] = []
        self.attempts: list[bytes] = []
        self.fail_on = fail_on
        # inboxes that share one event can be awaited together
        self._changed = changed or asyncio.Event()

    async def __call__(self, msg: Message) -> None:
        self.attempts.append(msg.payload)
        self._changed.set()
        if self.fail_on is not None and self.fail_on(msg, self):
            raise RuntimeError(f"handler refuses {msg.payload!r}")
        self.messages.append(msg)

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]

    @property
    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]

    async def wait_until(self, predicate, what: str, timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; have {len(self.messages)} "
                f"message(s): {self.payloads[:10]}{'...' if len(self.messages) > 10 else ''}"
            ) from None

    async def wait_count(self, n: int, timeout: float = 10.0) -> None:
        await self.wait_until(lambda i: len(i.messages) >= n, f"{n} message(s)", timeout)


class States:
    """Records a bus's state events; awaits 'connected now' or a given event."""

    def __init__(self, bus):
        self.bus = bus
        self.seen: list[BusState] = []
        self._changed = asyncio.Event()
        bus.on_state(self._record)

    def _record(self, state: BusState) -> None:
        self.seen.append(state)
        self._changed.set()

    async def wait(self, predicate, what: str, timeout: float = 15.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; states seen: "
                f"{[s.value for s in self.seen]}"
            ) from None

    async def until_connected(self, timeout: float = 15.0) -> None:
        await self.wait(lambda: self.bus.connected, "the bus to be connected", timeout)

    async def until_seen(self, state: BusState, count: int = 1, timeout: float = 15.0) -> None:
        await self.wait(lambda: self.seen.count(state) >= count,
                        f"{count}x {state.value}", timeout)


async def publish_reliably(bus, states: States, topic: str, seqs, *, failures: list,
                           failed: asyncio.Event | None = None, timeout: float = 2.0,
                           before=None) -> None:
    """The caller side of at-least-once: retry each message until the broker confirmed it.

    `before(seq)` runs before each message's first attempt (a test kills the broker there).
    """
    for seq in seqs:
        if before is not None:
            before(seq)
        while True:
            try:
                await bus.publish(topic, str(seq).encode(), qos=1, timeout=timeout)
                break
            except BrokerUnavailable:
                failures.append(("unavailable", seq))
                if failed is not None:
                    failed.set()
                if bus.connected:  # e.g. JetStream still starting: pace the retries
                    await asyncio.sleep(0.05)
                await states.until_connected()
            except PublishTimeout:
                failures.append(("timeout", seq))
                if failed is not None:
                    failed.set()


def seqs_of(inbox: Inbox) -> set[int]:
    return {int(p) for p in inbox.payloads}


# ============================================================================ in-process


def test_memory_pubsub_wildcards_and_dollar_topics():
    async def main():
        bus = InProcessBus()
        await bus.connect()
        plus, hash_, exact, everything, sys_ = Inbox(), Inbox(), Inbox(), Inbox(), Inbox()
        await bus.subscribe("a/+", plus)
        await bus.subscribe("a/#", hash_)
        await bus.subscribe("b", exact)
        await bus.subscribe("#", everything)
        await bus.subscribe("$SYS/#", sys_)
        for t in ["a", "a/x", "a/x/y", "b", "b/c", "$SYS/load"]:
            await bus.publish(t, t.encode())
        await bus.flush()
        assert plus.topics == ["a/x"]
        assert hash_.topics == ["a", "a/x", "a/x/y"]
        assert exact.topics == ["b"]
        assert everything.topics == ["a", "a/x", "a/x/y", "b", "b/c"]  # not $SYS
        assert sys_.topics == ["$SYS/load"]
        assert bus.stats.published == 6
        await bus.close()

    run(main())


def test_memory_order_per_subscriber_and_handler_errors_do_not_stop_delivery():
    async def main():
        bus = InProcessBus()
        await bus.connect()
        inbox = Inbox(fail_on=lambda m, _: m.payload == b"3")
        sub = await bus.subscribe("s", inbox)
        for i in range(10):
            await bus.publish("s", str(i).encode())
        await bus.flush()
        assert inbox.payloads == [str(i).encode() for i in range(10) if i != 3]
        assert (sub.delivered, sub.handled, sub.failed) == (10, 9, 1)
        assert bus.stats.errors == 1
        await bus.close()

    run(main())


def test_memory_backpressure_publish_waits_for_a_slow_subscriber():
    async def main():
        bus = InProcessBus(max_pending=2)
        await bus.connect()
        release = asyncio.Event()
        seen: list[bytes] = []

        async def slow(msg):
            await release.wait()
            seen.append(msg.payload)

        sub = await bus.subscribe("s", slow)
        await bus.publish("s", b"0")  # taken by the handler, which blocks
        for _ in range(5):
            await asyncio.sleep(0)  # let the worker pick it up
        await bus.publish("s", b"1")
        await bus.publish("s", b"2")  # queue now full (2)
        blocked = asyncio.create_task(bus.publish("s", b"3"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not blocked.done(), "publish should wait while the subscriber's queue is full"
        assert sub.pending == 3  # one in the handler, two queued
        release.set()
        await asyncio.wait_for(blocked, 5)
        await bus.flush()
        assert seen == [b"0", b"1", b"2", b"3"]
        await bus.close()

    run(main())


def test_memory_queue_group_retain_unsubscribe_and_states():
    async def main():
        bus = InProcessBus()
        states = States(bus)
        await bus.connect()
        a, b, c = Inbox(), Inbox(), Inbox()
        await bus.subscribe("jobs/#", a, queue="workers")
        await bus.subscribe("jobs/#", b, queue="workers")
        sub_c = await bus.subscribe("jobs/#", c)
        for i in range(10):
            await bus.publish("jobs/x", str(i).encode())
        await bus.flush()
        assert sorted(a.payloads + b.payloads) == sorted(c.payloads)  # each once in the group
        assert len(a.payloads) == len(b.payloads) == 5
        await sub_c.unsubscribe()
        await bus.publish("jobs/x", b"after")
        await bus.flush()
        assert b"after" not in c.payloads

        await bus.publish("status/d1", b"online", retain=True)
        late = Inbox()
        await bus.subscribe("status/+", late)
        await late.wait_count(1)
        assert late.payloads == [b"online"]
        await bus.publish("status/d1", b"", retain=True)  # clears
        later = Inbox()
        await bus.subscribe("status/+", later)
        await bus.flush()
        assert later.payloads == []

        await bus.close()
        assert states.seen == [BusState.CONNECTED, BusState.CLOSED]
        with pytest.raises(BrokerUnavailable, match="closed"):
            await bus.publish("x", b"1")

    run(main())


def test_memory_rejects_bad_input():
    async def main():
        bus = InProcessBus()
        with pytest.raises(BrokerUnavailable, match="not connected"):
            await bus.publish("x", b"1")
        await bus.connect()
        with pytest.raises(InvalidTopic):
            await bus.publish("a/+", b"1")
        with pytest.raises(InvalidTopic):
            await bus.subscribe("a/#/b", Inbox())
        with pytest.raises(TypeError):
            await bus.publish("a", "text")
        await bus.close()

    run(main())


def test_open_bus_urls():
    assert isinstance(open_bus(None), InProcessBus)
    assert isinstance(open_bus("memory://"), InProcessBus)
    m = open_bus("mqtt://user:p%40ss@broker.local:1884?client_id=dev-7&keepalive=15")
    assert isinstance(m, MqttBus)
    assert (m.host, m.port, m.client_id, m.persistent, m.keepalive) == (
        "broker.local", 1884, "dev-7", True, 15)
    assert (m.username, m.password) == ("user", "p@ss")
    assert not open_bus("mqtt://h").persistent
    n = open_bus("nats://h:4223?jetstream=1&stream=IOT")
    assert isinstance(n, NatsBus) and n.jetstream and n.stream == "IOT"
    assert not open_bus("nats://h").jetstream
    with pytest.raises(ConfigError, match="unsupported bus URL"):
        open_bus("amqp://h")
    with pytest.raises(ConfigError, match="unknown option"):
        open_bus("mqtt://h?qos=1")


@pytest.mark.parametrize("url, kwargs, match", [
    ("mqtt://h?keepalive=soon", {}, r"keepalive in 'mqtt://h\?keepalive=soon' must be a whole number"),
    ("mqtt://h?keepalive=70000", {}, r"mqtt://h: keepalive must be whole seconds from 0 \(off\) to 65535, not 70000"),
    ("mqtt://h", {"keepalive": -1}, r"keepalive must be whole seconds .* not -1"),
    ("mqtt://h", {"keepalive": 1.5}, r"keepalive must be whole seconds .* not 1.5"),
])
def test_bad_keepalive_is_a_one_line_config_error(url, kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        open_bus(url, **kwargs)
    assert "\n" not in str(info.value)


def test_the_bus_interface_imports_no_transport():
    """bus.py is the interface (with the modules it re-exports): the MQTT and NATS buses are
    chosen in transports.py."""
    import ast
    import iotwasm.messaging.bus as bus_module
    from iotwasm.messaging import bus_interface, memory_bus, subscription

    for module in (bus_module, bus_interface, memory_bus, subscription):
        tree = ast.parse(open(module.__file__).read())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & {"mqtt_bus", "nats_bus", "transports"}, (module.__name__, imported)
    assert not hasattr(bus_module, "open_bus")


# ============================================================================ MQTT


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


def test_mqtt_messages_arriving_with_the_connack_are_acknowledged(tmp_path):
    """A persistent session with messages waiting: the broker sends them right behind the
    CONNACK, often in the same read. Each must be acknowledged on that connection: one left
    unacknowledged holds one of the broker's few in-flight slots (here 5) for good and comes
    again on every later connection; with all five held, nothing more is delivered."""
    broker = Mosquitto(tmp_path / "small-window", options={"max_inflight_messages": 5})
    broker.start()
    n = 60

    async def main():
        first = MqttBus(broker.url, client_id="window")
        await first.subscribe("win/#", Inbox(), qos=1)
        await first.connect()
        await first.close()
        pub = MqttBus(broker.url)
        await pub.connect()
        for i in range(n):
            await pub.publish("win/x", str(i).encode(), qos=1)
        await pub.close()

        for round_ in range(3):  # each reconnect of the session gets what is left, once
            bus = MqttBus(broker.url, client_id="window")
            inbox = Inbox()
            await bus.subscribe("win/#", inbox, qos=1)  # registered before the CONNACK arrives
            await bus.connect()
            if round_ == 0:
                await inbox.wait_until(lambda i: seqs_of(i) == set(range(n)),
                                       f"all {n} messages through a window of 5", timeout=15)
            # a flush: a message published now arrives after everything the broker still had
            await bus.publish("win/end", str(1000 + round_).encode(), qos=1)
            await inbox.wait_until(lambda i: 1000 + round_ in seqs_of(i), "the end marker")
            await bus.close()
            again = seqs_of(inbox) - {1000 + round_} - (set() if round_ else set(range(n)))
            assert not again, f"reconnect {round_ + 1}: redelivered {sorted(again)}"

    try:
        run(main(), timeout=60)
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


async def poll_until(cond, what: str, timeout: float = 15.0) -> None:
    """For what reports no event (a failed connection attempt): poll, with a generous deadline."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class RecordedBackoff(Backoff):
    """The shared backoff, recording what the bus asked of it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def next(self) -> float:
        self.calls.append("next")
        return super().next()

    def reset(self) -> None:
        self.calls.append("reset")
        super().reset()


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


class Holder:
    """A handler that returns a future per message, as the pipeline does: the message is
    acknowledged when the test settles it, given back when the test cancels it."""

    def __init__(self):
        self.held: list[tuple[bytes, asyncio.Future]] = []
        self.changed = asyncio.Event()

    async def __call__(self, msg: Message) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.held.append((msg.payload, fut))
        self.changed.set()
        return fut

    async def wait_count(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.held) < n:
                self.changed.clear()
                await self.changed.wait()


async def publish_all(url: str, topic: str, payloads) -> None:
    pub = MqttBus(url)
    await pub.connect()
    for p in payloads:
        await pub.publish(topic, p, qos=1)
    await pub.close()


def test_mqtt_detach_keeps_the_session_and_gives_back_what_was_not_processed(mosquitto):
    """A process that stops detaches: no UNSUBSCRIBE, so the broker keeps queueing for the
    session; a message processed is acknowledged, one given back unprocessed comes again."""

    async def main():
        bus = MqttBus(mosquitto.url, client_id="detacher")
        holder = Holder()
        sub = await bus.subscribe("det/#", holder, qos=1)
        await bus.connect()
        await publish_all(mosquitto.url, "det/x", [b"0", b"1", b"2"])
        await holder.wait_count(3)
        holder.held[0][1].set_result(True)       # processed
        await sub.detach()
        for _, fut in holder.held[1:]:
            fut.cancel()                         # not processed: given back
        await bus.close()
        await publish_all(mosquitto.url, "det/x", [b"3", b"4"])   # while it is away

        back = MqttBus(mosquitto.url, client_id="detacher")
        inbox = Inbox()
        await back.subscribe("det/#", inbox, qos=1)
        await back.connect()
        await inbox.wait_count(4)
        await back.publish("det/x", b"end", qos=1)
        await inbox.wait_until(lambda i: b"end" in i.payloads, "the end marker")
        assert inbox.payloads == [b"1", b"2", b"3", b"4", b"end"]
        await back.close()

    run(main())


def test_mqtt_unsubscribe_ends_the_session_subscription(mosquitto):
    """The other kind of stop, for a route that is gone: the broker keeps nothing for it."""

    async def main():
        bus = MqttBus(mosquitto.url, client_id="leaver")
        sub = await bus.subscribe("gone/#", Inbox(), qos=1)
        await bus.connect()
        await sub.unsubscribe()
        await bus.close()
        await publish_all(mosquitto.url, "gone/x", [b"lost"])
        back = MqttBus(mosquitto.url, client_id="leaver")
        inbox = Inbox()
        await back.subscribe("gone/#", inbox, qos=1)
        await back.connect()
        await back.publish("gone/x", b"end", qos=1)
        await inbox.wait_until(lambda i: b"end" in i.payloads, "the end marker")
        assert inbox.payloads == [b"end"]
        await back.close()

    run(main())


def test_mqtt_message_given_back_on_a_live_bus_is_delivered_again(mosquitto):
    """MQTT has no negative acknowledgement: while other subscriptions still take messages,
    the bus reconnects so the broker delivers the message given back once more."""

    async def main():
        bus = MqttBus(mosquitto.url, client_id="giver", backoff=Backoff(0.01, 0.1))
        states = States(bus)
        holder, other = Holder(), Inbox()
        await bus.subscribe("give/#", holder, qos=1)
        await bus.subscribe("keep/#", other, qos=1)
        await bus.connect()
        await publish_all(mosquitto.url, "give/x", [b"once more"])
        await holder.wait_count(1)
        holder.held[0][1].cancel()
        await holder.wait_count(2)
        assert [p for p, _ in holder.held] == [b"once more", b"once more"]
        assert BusState.DISCONNECTED in states.seen and bus.stats.reconnects >= 1
        holder.held[1][1].set_result(True)
        await publish_all(mosquitto.url, "keep/x", [b"still here"])
        await other.wait_count(1)
        await bus.close()

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


# ============================================================================ NATS


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


def test_nats_jetstream_redelivers_after_handler_failure(nats_server):
    async def main():
        bus = NatsBus(nats_server.url, stream="JOBS", ack_wait=5.0)
        await bus.connect()
        for i in range(10):
            await bus.publish("jobs/work", str(i).encode(), qos=1)
        # fail the first attempt at 3 and the first two at 7
        inbox = Inbox(fail_on=lambda m, i: (m.payload == b"3" and i.attempts.count(b"3") == 1)
                      or (m.payload == b"7" and i.attempts.count(b"7") <= 2))
        sub = await bus.subscribe("jobs/work", inbox, qos=1, durable="workers")
        await inbox.wait_until(lambda i: seqs_of(i) == set(range(10)), "all 10 handled")
        await sub.wait_idle()
        assert inbox.attempts.count(b"3") == 2 and inbox.attempts.count(b"7") == 3
        assert sub.failed == 3 and bus.stats.errors >= 3
        await bus.flush()
        info = await bus._js.consumer_info("JOBS", "workers")
        assert (info.num_pending, info.num_ack_pending) == (0, 0), info
        await bus.close()

        # the durable consumer remembers: a new bus binding it gets only new messages
        again = NatsBus(nats_server.url, stream="JOBS")
        await again.connect()
        later = Inbox()
        await again.subscribe("jobs/work", later, qos=1, durable="workers")
        await again.publish("jobs/work", b"10", qos=1)
        await later.wait_count(1)
        assert later.payloads == [b"10"]
        await again.close()

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


def test_nats_jetstream_detach_keeps_the_durable_and_redelivers_what_was_given_back(nats_server):
    async def main():
        # the default ack_wait: a message given back that met a pull request still open at the
        # server (the detached fetch's) would come again only after 30s, not at once
        bus = NatsBus(nats_server.url, stream="DETACH")
        assert bus.ack_wait == 30.0
        await bus.connect()
        holder = Holder()
        sub = await bus.subscribe("jd/+", holder, qos=1, durable="jd")
        for i in range(3):
            await bus.publish("jd/x", str(i).encode(), qos=1)
        await holder.wait_count(3)
        holder.held[0][1].set_result(True)
        deadline = time.monotonic() + 10
        # the ack of 0 is on its way (ack_sync in a task): wait until the server has it
        while (await bus._js.consumer_info("DETACH", "jd")).num_ack_pending != 2:
            assert time.monotonic() < deadline, "the acknowledgement of 0 never arrived"
            await asyncio.sleep(0.01)
        await sub.detach()
        for _, fut in holder.held[1:]:
            fut.cancel()
        await bus.close()

        back = NatsBus(nats_server.url, stream="DETACH")
        await back.connect()
        inbox = Inbox()
        await back.subscribe("jd/+", inbox, qos=1, durable="jd")
        await back.publish("jd/x", b"end", qos=1)
        # given back, they come again at once (5s: far below ack_wait)
        await inbox.wait_until(lambda i: {b"1", b"2", b"end"} <= set(i.payloads),
                               "the two given back and the end marker", timeout=5)
        # 0 was acknowledged before the detach: never again; and nothing twice
        assert sorted(inbox.payloads) == [b"1", b"2", b"end"]
        await back.close()

    run(main())


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
