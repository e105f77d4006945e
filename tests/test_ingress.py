"""The ingress and its workers' bus (messaging/ingress.py, worker_bus.py), in one event loop
against a real Mosquitto: which worker a message goes to, order per key, acknowledgement only
once a worker settled, a worker that goes away and its next process, refusals."""

from __future__ import annotations

import asyncio
import struct
from collections import defaultdict

import pytest

from brokers import Mosquitto

from iotwasm.errors import ConfigError
from iotwasm.message import Message
from iotwasm.messaging import MqttBus
from iotwasm.messaging import ingress_wire as wire
from iotwasm.messaging.topics import OrderKey
from iotwasm.messaging.errors import BrokerUnavailable, SubscribeDenied
from iotwasm.messaging.ingress import Ingress
from iotwasm.messaging.worker_bus import WorkerBus

TOKEN = b"k" * 16


class Rig:
    def __init__(self, url: str, path: str, workers: int):
        self.url = url
        self.path = path
        self.workers = workers
        self.got: dict[int, list[Message]] = defaultdict(list)
        self.buses: list[WorkerBus] = []

    async def __aenter__(self) -> "Rig":
        self.upstream = MqttBus(self.url, client_id="ingress-test")
        await self.upstream.connect(timeout=10)
        self.ingress = Ingress(self.upstream, self.path, self.workers, TOKEN)
        await self.ingress.start()
        self.pub = MqttBus(self.url)
        await self.pub.connect(timeout=10)
        return self

    async def __aexit__(self, *exc) -> None:
        for bus in self.buses:
            await bus.close(timeout=1)
        await self.ingress.close(grace=1)
        await self.upstream.close(timeout=1)
        await self.pub.close(timeout=1)

    async def worker(self, k: int, *, hold: asyncio.Future | None = None) -> WorkerBus:
        """Worker `k`, subscribed to ``in/+`` keyed by the device level; with `hold`, its
        handler settles nothing until that future is done."""
        bus = WorkerBus(self.path, k, self.workers, TOKEN, MqttBus(self.url))
        await bus.connect(timeout=10)

        async def handler(msg: Message):
            self.got[k].append(msg)
            return hold

        await bus.subscribe("in/+", handler, qos=1, order=OrderKey(1))
        self.buses.append(bus)
        return bus

    async def publish(self, numbers, devices: int = 8) -> None:
        for i in numbers:
            await self.pub.publish(f"in/d{i % devices}", str(i).encode(), qos=1)

    async def until(self, predicate, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)


@pytest.fixture
def mosquitto(tmp_path):
    """A private Mosquitto whose in-flight window (unacknowledged QoS 1 messages to one
    client) is 100 instead of its default 20."""
    broker = Mosquitto(tmp_path / "mosquitto", options={"max_inflight_messages": 100})
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def sock(tmp_path):
    return str(tmp_path / "ingress.sock")


def seqs(msgs: list[Message]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for m in msgs:
        out[m.topic].append(int(m.payload))
    return out


def test_each_device_goes_to_one_worker_in_order(mosquitto, sock):
    async def main():
        async with Rig(mosquitto.url, sock, 3) as rig:
            for k in range(3):
                await rig.worker(k)
            await rig.publish(range(300), devices=12)
            await rig.until(lambda: sum(len(v) for v in rig.got.values()) == 300)
            seen: dict[str, int] = {}
            for k, msgs in rig.got.items():
                for topic, numbers in seqs(msgs).items():
                    assert seen.setdefault(topic, k) == k, f"{topic} went to two workers"
                    assert numbers == sorted(numbers), f"{topic} out of order on worker {k}"
                    assert k == rig.ingress.worker_of(next(iter(rig.ingress.feeds.values())), topic)
            assert len(seen) == 12 and len(rig.got) == 3, "every worker had a share"
            await rig.until(lambda: rig.ingress.settled == 300)
    asyncio.run(main())


def test_a_message_is_acknowledged_only_once_its_worker_settled_it(mosquitto, sock):
    """Nothing settled, nothing acknowledged: a new session of the same client id gets all
    of them again."""
    async def main():
        hold = asyncio.get_running_loop().create_future()
        async with Rig(mosquitto.url, sock, 1) as rig:
            await rig.worker(0, hold=hold)
            await rig.publish(range(10))
            await rig.until(lambda: len(rig.got[0]) == 10)
            assert rig.ingress.settled == 0
        again: list[bytes] = []
        bus = MqttBus(mosquitto.url, client_id="ingress-test")

        async def on(msg: Message) -> None:
            again.append(msg.payload)

        await bus.subscribe("in/+", on, qos=1)
        await bus.connect(timeout=10)
        async with asyncio.timeout(10):
            while len(again) < 10:
                await asyncio.sleep(0.01)
        await bus.close(timeout=1)
        assert sorted(int(p) for p in again) == list(range(10))
    asyncio.run(main())


def test_a_worker_that_goes_away_gets_its_messages_again_in_its_next_process(mosquitto, sock):
    async def main():
        hold = asyncio.get_running_loop().create_future()
        async with Rig(mosquitto.url, sock, 2) as rig:
            w0 = await rig.worker(0, hold=hold)
            await rig.worker(1)
            await rig.publish(range(16))
            feed = next(iter(rig.ingress.feeds.values()))
            mine = [i for i in range(16) if rig.ingress.worker_of(feed, f"in/d{i % 8}") == 0]
            await rig.until(lambda: len(rig.got[0]) == len(mine))
            assert w0._transport is not None
            w0._transport.abort()                    # as if its process were killed
            rig.buses.remove(w0)
            await rig.until(lambda: len(rig.ingress.roster[0].held) == len(mine))
            # meanwhile worker 1's messages go on and 0's wait — as far as the broker's
            # in-flight window allows (here 100), since acknowledgements go in order
            await rig.publish(range(16, 24))
            await rig.publish(range(24, 32))
            theirs = [i for i in range(24) if i not in mine and rig.ingress.worker_of(feed, f"in/d{i % 8}") == 1]
            await rig.until(lambda: set(theirs) <= {int(m.payload) for m in rig.got[1]})
            rig.got[0].clear()
            await rig.worker(0)                      # its next process
            mine_all = [i for i in range(32) if rig.ingress.worker_of(feed, f"in/d{i % 8}") == 0]
            await rig.until(lambda: len(rig.got[0]) == len(mine_all))
            assert [int(m.payload) for m in rig.got[0]] == mine_all, "the held ones first, in order"
            await rig.until(lambda: rig.ingress.settled == 32)
            assert [(w.held, w.held_on) for w in rig.ingress.roster] == [({}, {}), ({}, {})]
    asyncio.run(main())


def test_a_worker_without_the_token_is_refused(mosquitto, sock):
    """Refused, and told so: a worker that cannot join stops rather than idle unseen."""
    async def main():
        async with Rig(mosquitto.url, sock, 1):
            bad = WorkerBus(sock, 0, 1, b"x" * 16, MqttBus(mosquitto.url))
            lost: list[int] = []
            bad.on_lost = lambda: lost.append(1)
            with pytest.raises(BrokerUnavailable, match="wrong token"):
                await bad.connect(timeout=5)
            assert lost, "a worker that cannot join says so (its node stops, its parent starts it again)"
            wrong = WorkerBus(sock, 3, 1, TOKEN, MqttBus(mosquitto.url))
            with pytest.raises(BrokerUnavailable, match="worker 3 of 1"):
                await wrong.connect(timeout=5)
    asyncio.run(main())


def test_a_reader_takes_whole_frames_bounded_and_checked():
    deliver = wire.deliver(1, 2, "in/d1", b"x" * 10, 5, None)
    settle = wire.settle(wire.settled(2, "ok") + wire.settled(9, "released"))
    reader = wire.Reader()
    # a frame split across feeds comes out once it is whole, the rest waits for its bytes
    assert list(reader.feed(deliver[:3])) == []
    assert list(reader.feed(deliver[3:-1])) == []
    assert list(reader.feed(deliver[-1:] + settle[:5])) == [
        (wire.DELIVER, (1, 2, "in/d1", b"x" * 10, 5, None))]
    # several frames in one feed, in order
    assert list(reader.feed(settle[5:] + wire.welcome() + wire.sid_frame(wire.SUBOK, 7))) == [
        (wire.SETTLE, ((2, "ok"), (9, "released"))), (wire.WELCOME, ()), (wire.SUBOK, (7,))]
    # a length over the bound is refused from its four bytes, before any body is waited for
    bound = rf"a frame of {wire.MAX_FRAME + 1} bytes \(at most {wire.MAX_FRAME}\)"
    with pytest.raises(ConfigError, match=bound):
        wire.Reader().feed(struct.pack(">I", wire.MAX_FRAME + 1))
    with pytest.raises(ConfigError, match="a frame of 0 bytes"):
        wire.Reader().feed(struct.pack(">I", 0))
    # a bad kind, or a body too short for its kind; the frames before it are taken first
    taken = []
    with pytest.raises(ConfigError, match="unknown frame kind 99"):
        for frame in wire.Reader().feed(wire.welcome() + struct.pack(">IB", 1, 99)):
            taken.append(frame)
    assert taken == [(wire.WELCOME, ())]
    with pytest.raises(ConfigError, match=f"malformed frame of kind {wire.SUB}"):
        list(wire.Reader().feed(struct.pack(">IBB", 2, wire.SUB, 1)))


def test_order_key_picks_the_level_that_keys_the_order():
    assert OrderKey(1).of("in/d7/t") == "d7"
    assert OrderKey(1, rest=True).of("a/b/c") == "b/c"
    assert OrderKey().of("in/d7") == "in/d7"


RULE = """\
apiVersion: iotwasm.io/v1
kind: Rule
metadata: {name: hot}
spec:
  sql: SELECT device, avg(value) AS v FROM "in/{device}" GROUP BY device, TUMBLINGWINDOW(ss, 10)
  actions: [{store: {table: hot}}]
"""


def test_a_worker_node_runs_bus_routes_and_refuses_what_would_see_only_a_share(
        mosquitto, sock, tmp_path, monkeypatch):
    """A route fed by another source would read it whole in every worker, and a rule's
    windows would see only this worker's devices: both are refused with a problem that
    says why; the route fed by the node's broker runs and gets its messages."""
    import urllib.parse

    from iotwasm.messaging.transports import INGRESS_TOKEN_ENV
    from nodes import echo_route, echo_site, mqtt_sink, running

    monkeypatch.setenv(INGRESS_TOKEN_ENV, TOKEN.hex())
    mdir = echo_site(tmp_path, echo_route("fed", [mqtt_sink(mosquitto.url, "out/{device}")]),
                     echo_route("posted", [mqtt_sink(mosquitto.url, "out/{device}")],
                                source='{http: {path: /in, topic: "in/{device}"}}'))
    (mdir / "rule.yaml").write_text(RULE)
    url = f"ingress://{sock}?worker=0&workers=1&publish={urllib.parse.quote(mosquitto.url, safe='')}"

    async def main():
        upstream = MqttBus(mosquitto.url, client_id="ingress-node")
        await upstream.connect(timeout=10)
        ingress = Ingress(upstream, sock, 1, TOKEN)
        await ingress.start()
        out: list[Message] = []
        sink = MqttBus(mosquitto.url)
        await sink.subscribe("out/#", lambda m: out.append(m) or asyncio.sleep(0), qos=1)
        await sink.connect(timeout=10)
        try:
            async with running(mdir, tmp_path / "data", name="w0", broker=url) as node:
                assert sorted(node.routes) == ["fed"]
                problems = "\n".join(node.last_problems)
                assert "runs only routes fed by the node's broker" in problems and "http source" in problems
                assert "Rule hot: a worker of `iotwasm up --workers` sees only its share" in problems
                assert ingress.roster[0].ready
                pub = MqttBus(mosquitto.url)
                await pub.connect(timeout=10)
                for i in range(5):
                    await pub.publish(f"in/d{i}", b'{"value": 1}', qos=1)
                await pub.close(timeout=1)
                async with asyncio.timeout(20):
                    while len(out) < 5:
                        await asyncio.sleep(0.02)
        finally:
            await sink.close(timeout=1)
            await ingress.close(grace=1)
            await upstream.close(timeout=1)
        assert sorted(m.topic for m in out) == [f"out/d{i}" for i in range(5)]
    asyncio.run(main())


def test_a_subscription_the_broker_refuses_fails_alone(tmp_path, sock):
    """The broker's access control refuses one filter: that worker's subscription fails with
    the broker's reason, as it would on a bus of its own, and the worker's link and its other
    subscriptions carry on."""
    from test_mqtt5_bus import dynsec_broker

    broker = dynsec_broker(tmp_path)
    try:
        async def main():
            async with Rig(broker.url, sock, 1) as rig:
                bus = WorkerBus(sock, 0, 1, TOKEN, MqttBus(broker.url))
                await bus.connect(timeout=10)
                rig.buses.append(bus)
                with pytest.raises(SubscribeDenied, match="refused the subscription to 'secret/#'"):
                    await bus.subscribe("secret/#", lambda m: asyncio.sleep(0), qos=1)
                got: list[Message] = []

                async def on(msg: Message) -> None:
                    got.append(msg)

                await bus.subscribe("open/+", on, qos=1, order=OrderKey(1))
                await rig.pub.publish("open/d1", b"yes", qos=1)
                await rig.until(lambda: [m.payload for m in got] == [b"yes"])
                assert bus.connected and rig.ingress.connected() == [0]
        asyncio.run(main())
    finally:
        broker.kill()
