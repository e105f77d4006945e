"""Acknowledgement and settlement on the MQTT and NATS buses against real brokers: messages
that arrive with the CONNACK acknowledged, a detached subscription keeping its session or
durable consumer while what was given back comes again, an unsubscribe ending the session's
subscription, a message given back on a live bus delivered again, and JetStream redelivering
after a handler failure. `Holder` settles each message when the test says, as the pipeline
does."""

from __future__ import annotations

import asyncio
import time

from brokers import Mosquitto
from buses import Inbox, States, run, seqs_of
from iotwasm.backoff import Backoff
from iotwasm.message import Message
from iotwasm.messaging import BusState, MqttBus, NatsBus


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
