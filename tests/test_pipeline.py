"""Routes with real WASM containers as steps: ordering, backpressure, ACLs, no loss."""

from __future__ import annotations

import asyncio
import threading

import pytest

from iotwasm.container import WasmContainer
from iotwasm.errors import CapabilityDenied
from iotwasm.message import Message
from iotwasm.messaging.acl import TopicACL
from iotwasm.pipeline import BatchPolicy, QueuePolicy, RouteRunner, TopicPattern, TopicTemplate


from conftest import ECHO_WAT


class Step:
    """A deployment as the pipeline sees it: a real container plus its topic grants."""

    def __init__(self, container: WasmContainer, acl: TopicACL):
        self.name = container.name
        self.container = container
        self.acl = acl

    def process(self, messages):
        return self.container.process(messages)


class Collect:
    name = "collect"

    def __init__(self):
        self.messages: list[Message] = []

    async def deliver(self, messages, variables):
        self.messages.extend(messages)
        return []


def echo_step(runtime, replicas=1, publish=("#",), subscribe=("#",)):
    c = WasmContainer("echo", ECHO_WAT, runtime=runtime, replicas=replicas).start()
    return Step(c, TopicACL(list(publish), list(subscribe), "echo"))


def test_per_device_order_is_kept_across_lanes(runtime):
    async def main():
        sink = Collect()
        r = RouteRunner("r", [echo_step(runtime, replicas=3)], [sink], lanes=3,
                        batch=BatchPolicy(max_size=7, max_linger_s=0))
        r.start()
        for i in range(600):
            dev = f"d{i % 20}"
            await r.offer(Message(f"devices/{dev}/x", b"%d" % i), {"device": dev})
        assert await r.drain(20)
        await r.stop()
        return sink.messages

    out = asyncio.run(main())
    assert len(out) == 600
    per_dev: dict[str, list[int]] = {}
    for m in out:
        per_dev.setdefault(m.topic, []).append(int(m.payload))
    assert len(per_dev) == 20
    for seq in per_dev.values():
        assert seq == sorted(seq)


def test_drop_oldest_counts_what_it_drops(runtime):
    async def main():
        sink = Collect()
        r = RouteRunner("r", [echo_step(runtime)], [sink], queue=QueuePolicy(capacity=5, overflow="drop-oldest"))
        for i in range(50):  # lanes not started yet: the queue fills up
            await r.offer(Message("t", b"%d" % i))
        r.start()
        assert await r.drain(10)
        await r.stop()
        return r.stats, sink.messages

    stats, out = asyncio.run(main())
    assert stats.dropped == 45
    assert [m.payload for m in out] == [b"45", b"46", b"47", b"48", b"49"]


def test_block_policy_makes_the_source_wait(runtime):
    async def main():
        r = RouteRunner("r", [echo_step(runtime)], [Collect()], queue=QueuePolicy(capacity=3))
        for _ in range(3):
            await r.offer(Message("t", b"x"))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(r.offer(Message("t", b"y")), 0.2)
        r.start()
        await asyncio.wait_for(r.offer(Message("t", b"z")), 5)
        assert await r.drain(5)
        await r.stop()
        return r.stats

    assert asyncio.run(main()).dropped == 0


def test_acl_denials_are_dead_lettered_and_counted(runtime):
    dead = []

    async def on_dead(route, step, dl, variables):
        dead.append((step, dl.message.topic, dl.error))

    async def main():
        sink = Collect()
        step = echo_step(runtime, subscribe=["sensors/#"], publish=["sensors/a/#"])
        r = RouteRunner("r", [step], [sink], dead_letter=on_dead)
        r.start()
        for t in ("sensors/a/1", "sensors/b/1", "other/x"):
            await r.offer(Message(t, b"v"))
        assert await r.drain(5)
        await r.stop()
        return r.stats, sink.messages, step.acl.stats

    stats, out, acl_stats = asyncio.run(main())
    assert [m.topic for m in out] == ["sensors/a/1"]
    assert stats.acl_denied == 2 and acl_stats.subscribe_denied == 1 and acl_stats.publish_denied == 1
    assert {(s, t) for s, t, _ in dead} == {("echo", "other/x"), ("echo", "sensors/b/1")}
    assert all(isinstance(e, CapabilityDenied) for _, _, e in dead)
    assert "may not emit on 'sensors/b/1'" in str(next(e for s, t, e in dead if t == "sensors/b/1"))


def test_suspended_step_holds_messages_until_it_resumes(runtime):
    async def main():
        sink = Collect()
        step = echo_step(runtime)
        step.container.suspend()
        r = RouteRunner("r", [step], [sink])
        r.start()
        for i in range(10):
            await r.offer(Message("t", b"%d" % i))
        await asyncio.sleep(0.3)
        held = len(sink.messages)
        threading.Timer(0.1, step.container.resume).start()
        assert await r.drain(10)
        await r.stop()
        return held, sink.messages, r.stats

    held, out, stats = asyncio.run(main())
    assert held == 0 and stats.step_retries > 0
    assert [m.payload for m in out] == [b"%d" % i for i in range(10)]


def test_traps_become_dead_letters_and_the_rest_flows(runtime):
    dead = []

    async def on_dead(route, step, dl, variables):
        dead.append(dl.message.payload)

    async def main():
        sink = Collect()
        r = RouteRunner("r", [echo_step(runtime), echo_step(runtime)], [sink], dead_letter=on_dead)
        r.start()
        for p in (b"a", b"!boom", b"b", b"?bad", b"c"):
            await r.offer(Message("t", p))
        assert await r.drain(5)
        await r.stop()
        return sink.messages

    out = asyncio.run(main())
    assert [m.payload for m in out] == [b"a", b"b", b"c"]
    assert sorted(dead) == [b"!boom", b"?bad"]


def test_topic_patterns_and_templates():
    p = TopicPattern.parse("devices/{device}/sensors/{rest*}")
    assert p.filter == "devices/+/sensors/#"
    assert p.capture("devices/d7/sensors/t/1") == {"device": "d7", "rest": "t/1"}
    t = TopicTemplate("alerts/{device}/{payload.sensor}")
    assert t.fill({"device": "d7"}, b'{"sensor": "temp"}') == "alerts/d7/temp"
    assert TopicTemplate("{topic}").fill({"topic": "a/b"}) == "a/b"
    assert TopicTemplate("x/{device}").fill({"device": "a/b+#"}) == "x/a_b__"
    with pytest.raises(KeyError, match="no value for {device}"):
        TopicTemplate("alerts/{device}").fill({})


def test_topics_remembered_per_device_give_what_a_fresh_fill_gives(monkeypatch):
    """Patterns and templates remember what they computed per topic and per set of values;
    what they return must not depend on it: each device its own topic, a missing value an
    error every time, captures a fresh dict per call, a payload field read from each payload,
    and a full memo starts over rather than growing."""
    from iotwasm.pipeline import templates

    p = TopicPattern.parse("devices/{device}/sensors/{rest*}")
    first = p.capture("devices/d1/sensors/t")
    first["device"] = "changed by a caller"
    assert p.capture("devices/d1/sensors/t") == {"device": "d1", "rest": "t"}
    assert p.capture("devices/d2/sensors/h/2") == {"device": "d2", "rest": "h/2"}

    t = TopicTemplate("alerts/{device}/{topic}")
    for _ in range(3):
        assert t.fill({"device": "d1"}, None, "a") == "alerts/d1/a"
        assert t.fill({"device": "d2"}, None, "a") == "alerts/d2/a"
        assert t.fill({"device": "d1"}, None, "b") == "alerts/d1/b"
        assert t.fill({"device": "d1", "topic": "b"}) == "alerts/d1/b"
        with pytest.raises(KeyError, match="no value for {device}"):
            t.fill({}, None, "a")
    assert t.fill({"device": ["not", "hashable"]}, None, "a") == "alerts/['not', 'hashable']/a"
    numbered = TopicTemplate("x/{n}")
    assert [numbered.fill({"n": v}) for v in (1, True, 1.0, "1")] == ["x/1", "x/True", "x/1.0", "x/1"]

    by_payload = TopicTemplate("alerts/{device}/{payload.sensor}")
    assert by_payload.fill({"device": "d1"}, b'{"sensor": "t"}') == "alerts/d1/t"
    assert by_payload.fill({"device": "d1"}, b'{"sensor": "h"}') == "alerts/d1/h"

    monkeypatch.setattr(templates, "MEMO_SIZE", 4)
    small = TopicTemplate("x/{device}")
    for i in range(10):
        assert small.fill({"device": f"d{i}"}) == f"x/d{i}"
    assert len(small._memo) <= 4
    assert small.fill({"device": "d0"}) == "x/d0"
    for i in range(10):
        assert p.capture(f"devices/e{i}/sensors/x") == {"device": f"e{i}", "rest": "x"}
    assert len(p._memo) <= 4


def test_mqtt_sink_keeps_order_while_batches_are_confirmed_off_the_lane(runtime, mosquitto):
    """Lanes hand batches to the MQTT sink without waiting for the previous batch's PUBACKs;
    with an in-flight window smaller than a batch, publishers queue for room. Everything must
    still arrive, once per QoS 1 delivery, in order per device."""
    from iotwasm.messaging import MqttBus
    from iotwasm.pipeline.sinks import BusSink

    n, devices = 3000, 12

    async def main():
        out_bus = MqttBus(mosquitto.url, max_inflight=16)
        watch = MqttBus(mosquitto.url)
        await out_bus.connect()
        await watch.connect()
        got: list[Message] = []
        done = asyncio.Event()

        async def on_out(msg):
            got.append(msg)
            if len(got) >= n:
                done.set()

        await watch.subscribe("out/#", on_out, qos=1)
        sink = BusSink("uplink", out_bus, "out/{device}", qos=1)
        await sink.start()
        r = RouteRunner("r", [echo_step(runtime, replicas=3)], [sink], lanes=3,
                        batch=BatchPolicy(max_size=50, max_linger_s=0.001))
        r.start()
        for i in range(n):
            dev = f"d{i % devices}"
            await r.offer(Message(f"in/{dev}", b"%d" % i), {"device": dev})
        assert await r.drain(30)
        await asyncio.wait_for(done.wait(), 30)
        await r.stop()
        await out_bus.close()
        await watch.close()
        return r.stats, sink.sent, got

    stats, sent, got = asyncio.run(main())
    assert stats.delivered == n and stats.dead_letters == 0 and sent == n
    per_dev: dict[str, list[int]] = {}
    for m in got:
        per_dev.setdefault(m.topic, []).append(int(m.payload))
    assert len(per_dev) == devices
    for topic, seq in per_dev.items():
        assert seq == sorted(seq), f"{topic} out of order"
    assert sorted(int(m.payload) for m in got) == list(range(n))


# ---------------------------------------------------------------------------- hand-over


class Gate:
    """A sink that holds each batch until the test opens it (a batch in flight, on demand)."""

    name = "gate"

    def __init__(self):
        self.messages: list[Message] = []
        self.open = asyncio.Event()
        self.entered = asyncio.Event()

    async def deliver(self, messages, variables):
        self.entered.set()
        await self.open.wait()
        self.messages.extend(messages)
        return []


#: offers running in the background (referenced, so none is collected half-way)
_offers: set[asyncio.Task] = set()


def offer_later(r: RouteRunner, payload: bytes, settled=None, device="d1") -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(
        r.offer(Message(f"in/{device}", payload), {"device": device}, settled))
    _offers.add(task)
    task.add_done_callback(_offers.discard)
    return task


def offered(r: RouteRunner, payloads, device="d1") -> list[asyncio.Future]:
    """Offer messages, each with the future a source waits on before acknowledging it."""
    loop = asyncio.get_running_loop()
    futs = []
    for p in payloads:
        futs.append(loop.create_future())
        offer_later(r, p, futs[-1], device)
    return futs


def test_a_replaced_route_hands_its_queue_to_its_successor_in_order(runtime):
    """The batch in flight finishes in the old route; the queued messages, with their
    acknowledgements still pending, run in the new one, ahead of what it got meanwhile and
    each exactly once."""

    async def main():
        old_sink, new_sink = Gate(), Collect()
        old = RouteRunner("r", [echo_step(runtime)], [old_sink], batch=BatchPolicy(max_size=2, max_linger_s=0))
        new = RouteRunner("r", [echo_step(runtime)], [new_sink], batch=BatchPolicy(max_size=50, max_linger_s=0))
        old.start()
        first = offered(old, [b"0", b"1"])
        await old_sink.entered.wait()            # batch [0, 1] is in the old route's sink
        queued = offered(old, [b"%d" % i for i in range(2, 8)])
        await asyncio.sleep(0)                   # the offers are queued
        assert old.depth() == 6
        handing = asyncio.create_task(old.hand_over(new))
        await asyncio.sleep(0.05)
        meanwhile = offered(old, [b"8", b"9"])   # the source still feeds the old route
        assert not handing.done(), "the hand-over waits for the batch in flight"
        old_sink.open.set()
        await handing
        new.start()
        assert await new.drain(10) and await old.drain(10)
        await old.stop()
        await new.stop()
        return old_sink.messages, new_sink.messages, first, queued + meanwhile

    old_out, new_out, first, rest = asyncio.run(main())
    assert [m.payload for m in old_out] == [b"0", b"1"]
    assert [m.payload for m in new_out] == [b"%d" % i for i in range(2, 10)]
    assert all(f.done() and not f.cancelled() for f in first + rest)


def test_a_batch_held_for_an_unavailable_step_goes_to_the_successor(runtime):
    async def main():
        sink = Collect()
        stuck = echo_step(runtime)
        stuck.container.suspend()
        old = RouteRunner("r", [stuck], [Collect()])
        new = RouteRunner("r", [echo_step(runtime)], [sink])
        old.start()
        futs = offered(old, [b"a", b"b", b"c"])
        await asyncio.sleep(0.2)                 # held, retried with backoff
        assert old.stats.step_retries > 0
        await old.hand_over(new)
        new.start()
        assert await new.drain(10)
        await old.stop()
        await new.stop()
        return sink.messages, futs

    out, futs = asyncio.run(main())
    assert [m.payload for m in out] == [b"a", b"b", b"c"]
    assert all(f.done() and not f.cancelled() for f in futs)


def test_a_source_waiting_on_a_full_route_is_passed_to_the_successor(runtime):
    async def main():
        sink = Collect()
        old = RouteRunner("r", [echo_step(runtime)], [Collect()], queue=QueuePolicy(capacity=2))
        new = RouteRunner("r", [echo_step(runtime)], [sink])
        offered(old, [b"1", b"2"])               # lanes not started: the queue is full
        waiting = offer_later(old, b"3")
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await old.hand_over(new)
        await asyncio.wait_for(waiting, 5)
        new.start()
        assert await new.drain(10)
        await new.stop()
        return sink.messages

    assert [m.payload for m in asyncio.run(main())] == [b"1", b"2", b"3"]


def test_stopping_gives_back_what_was_not_processed(runtime):
    """Queued messages a stopping route did not get to are not acknowledged: their futures
    are cancelled, which a source turns into 'deliver it again'."""

    async def main():
        step = echo_step(runtime)
        step.container.suspend()
        r = RouteRunner("r", [step], [Collect()])
        r.start()
        futs = offered(r, [b"%d" % i for i in range(5)])
        await asyncio.sleep(0.1)
        await r.stop(drain_timeout=0.2)
        late = offered(r, [b"late"])
        await asyncio.sleep(0)
        return futs + late

    futs = asyncio.run(main())
    assert all(f.cancelled() for f in futs)


def test_forwarder_sends_nothing_after_a_window_that_failed(tmp_path):
    """An uplink that refuses the first windows and takes the next ones (it came back
    meanwhile): what it takes must still be in stored order — a window sent after one that
    already failed would overtake it."""
    from iotwasm.messaging.bus import settled
    from iotwasm.pipeline.outbox import Forwarder, Outbox

    async def main():
        outbox = Outbox(tmp_path / "outbox.db")
        outbox.append("up", [("t", b"%d" % i) for i in range(12)])
        taken: list[bytes] = []
        refusals = [2]
        done = asyncio.Event()

        async def submit(items):
            if refusals[0]:
                refusals[0] -= 1
                return settled([RuntimeError("uplink away")] * len(items))
            taken.extend(p for _, p in items)
            if len(set(taken)) == 12:
                done.set()
            return settled([None] * len(items))

        fw = Forwarder(outbox, "up", submit, batch=3, windows=4, min_backoff=0.01, max_backoff=0.02)
        fw.start()
        await asyncio.wait_for(done.wait(), 10)
        await fw.stop()
        outbox.close()
        return taken

    taken = asyncio.run(main())
    first_seen = list(dict.fromkeys(taken))
    assert first_seen == [b"%d" % i for i in range(12)], taken
