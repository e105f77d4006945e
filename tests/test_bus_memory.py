"""The in-process bus and choosing a bus: InProcessBus's wildcards and `$` topics, order per
subscriber, handler errors, backpressure, queue groups, retained messages, states and bad
input; `open_bus` and its URLs, keepalive as a one-line config error; and the bus interface
importing no transport."""

from __future__ import annotations

import asyncio

import pytest

from buses import Inbox, States, run
from iotwasm.errors import ConfigError
from iotwasm.messaging import (
    BrokerUnavailable,
    BusState,
    InProcessBus,
    InvalidTopic,
    MqttBus,
    NatsBus,
    open_bus,
)


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
