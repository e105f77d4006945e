"""The durable path's shortcuts keep their guarantees.

* a subscription's fast path (`Subscription.fast`): a message goes to a route's lane at once
  when nothing is ahead of it, else through the queue — in order either way — and the bus
  hears what became of it through a `Settlement` (acknowledged, failed, given back);
* `RouteRunner.offer_nowait` takes a message only when it need not wait;
* a batch's QoS 1 acknowledgements gathered in one `AckWindow` (a result per message, late
  ones marked as timed out while their packets stay in flight);
* WAL checkpoints of the outbox on a thread of their own (`sqlite.Checkpointer`), never in a
  commit;
* a lane lingers for company only under load (`route._busy`), only until its batch is big
  enough (`route.LINGER_ENOUGH`) or the route is handed over, and ever less often while its
  lingering gathers nothing (`lanes.LingerBackoff`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from brokers import Mosquitto, free_port
from iotwasm.message import BatchResult, Message, Output
from iotwasm.messaging import InProcessBus, MqttBus, PublishTimeout
from iotwasm.messaging.acl import TopicACL
from iotwasm.messaging.bus import FAILED, OK, RELEASED, Settlement, Subscription
from iotwasm.pipeline.lanes import Lane, LingerBackoff
from iotwasm.pipeline.outbox import Outbox
from iotwasm.pipeline.route import LINGER_ENOUGH, BatchPolicy, QueuePolicy, RouteRunner, _busy
from iotwasm.pipeline.sources import BusSource
from iotwasm.sqlite import Checkpointer, open_db


def run(coro, timeout: float = 30.0):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


# -- the subscription's fast path ---------------------------------------------------------

def test_fast_path_takes_messages_in_order_and_reports_each_outcome():
    async def main():
        bus = InProcessBus()
        await bus.connect()
        handled: list[bytes] = []

        async def handler(msg: Message) -> None:   # the slow way in
            handled.append(msg.payload)

        sub = await bus.subscribe("t/#", handler)
        taken: list[tuple[bytes, Settlement]] = []
        sub.fast = lambda msg, s: taken.append((msg.payload, s)) is None
        outcomes: list[str] = []
        for i in range(3):
            assert sub.offer(Message("t/a", b"%d" % i), outcomes.append)
        assert [p for p, _ in taken] == [b"0", b"1", b"2"] and handled == []
        assert sub.pending == 3 and outcomes == []       # taken, not yet settled
        taken[0][1].set_result(True)
        taken[1][1].set_result(False)
        taken[2][1].cancel()
        taken[2][1].set_result(True)                     # reported once only
        assert outcomes == [OK, FAILED, RELEASED]
        assert sub.pending == 0 and sub.delivered == 3 and sub.handled == 3
        await bus.close()
    run(main())


def test_a_declined_message_is_queued_and_nothing_overtakes_it():
    async def main():
        bus = InProcessBus()
        await bus.connect()
        order: list[str] = []
        gate = asyncio.Event()

        async def handler(msg: Message) -> None:
            order.append("slow " + msg.payload.decode())
            await gate.wait()

        sub = await bus.subscribe("t/#", handler)
        room = {"open": False}

        def fast(msg: Message, s: Settlement) -> bool:
            if not room["open"]:
                return False
            order.append("fast " + msg.payload.decode())
            s.set_result(True)
            return True

        sub.fast = fast
        sub.offer(Message("t/a", b"1"))          # declined: queued for the handler
        room["open"] = True
        sub.offer(Message("t/a", b"2"))          # the queue is not empty: it goes behind
        await asyncio.sleep(0)
        assert order == ["slow 1"]               # 2 waits behind 1, not taken by the fast path
        gate.set()
        await sub.wait_idle(5)
        assert order == ["slow 1", "slow 2"]
        sub.offer(Message("t/a", b"3"))          # nothing ahead any more: taken at once
        assert order[-1] == "fast 3"
        await bus.close()
    run(main())


def test_a_fast_path_that_raises_fails_the_message_and_keeps_the_subscription():
    async def main():
        bus = InProcessBus()
        await bus.connect()

        async def handler(msg: Message) -> None:
            pass

        sub: Subscription = await bus.subscribe("t/#", handler)

        def broken(msg: Message, s: Settlement) -> bool:
            raise ValueError("bug")

        sub.fast = broken
        outcomes: list[str] = []
        assert sub.offer(Message("t/a", b"x"), outcomes.append)
        assert outcomes == [FAILED] and sub.failed == 1 and sub.pending == 0
        await bus.close()
    run(main())


class _Echo:
    name = "echo"
    acl = TopicACL(subscribe=["#"], publish=["#"])

    def process(self, msgs):
        return BatchResult([Output(i, None, m.payload) for i, m in enumerate(msgs)], [])


class _Keep:
    name = "keep"

    def __init__(self):
        self.got: list[bytes] = []

    async def deliver(self, msgs, variables):
        self.got += [m.payload for m in msgs]
        return []


def test_offer_nowait_takes_only_what_need_not_wait():
    async def main():
        runner = RouteRunner("r", [_Echo()], [_Keep()], queue=QueuePolicy(capacity=2))
        futs = [asyncio.get_running_loop().create_future() for _ in range(3)]
        assert runner.offer_nowait(Message("t", b"1"), {}, futs[0])
        assert runner.offer_nowait(Message("t", b"2"), {}, futs[1])
        assert not runner.offer_nowait(Message("t", b"3"), {}, futs[2])   # full: offer waits
        assert runner.depth() == 2 and not futs[2].done()
        dropping = RouteRunner("d", [_Echo()], [_Keep()],
                               queue=QueuePolicy(capacity=1, overflow="drop-oldest"))
        old = asyncio.get_running_loop().create_future()
        assert dropping.offer_nowait(Message("t", b"old"), {}, old)
        assert dropping.offer_nowait(Message("t", b"new"), {})
        assert old.done() and dropping.stats.dropped == 1
        await runner.stop(drain_timeout=0)
        late = asyncio.get_running_loop().create_future()
        assert runner.offer_nowait(Message("t", b"4"), {}, late) and late.cancelled()
    run(main())


def test_a_bus_source_acknowledges_through_the_fast_path_only_after_the_route(mosquitto):
    """End to end on a broker: messages a route took straight from the bus are acknowledged
    to the broker only once the route is through with them; the output keeps their order."""
    async def main():
        gate = asyncio.Event()

        class Held(_Keep):
            async def deliver(self, msgs, variables):
                await gate.wait()
                return await super().deliver(msgs, variables)

        sink = Held()
        runner = RouteRunner("r", [_Echo()], [sink], batch=BatchPolicy(max_size=10))
        runner.start()
        bus = MqttBus(mosquitto.url, client_id="fast-src")
        await bus.connect()
        source = BusSource(bus, "in/{device}", runner)
        await source.start()
        pub = MqttBus(mosquitto.url)
        await pub.connect()
        await pub.publish_many([("in/d1", b"%d" % i) for i in range(200)], qos=1)
        async with asyncio.timeout(10):   # the broker's in-flight window lets 20 come
            while bus.stats.received < 10:
                await asyncio.sleep(0.01)
        got = bus.stats.received
        assert len(bus._ack_queue) == got       # all in the route, none acknowledged yet
        assert source._sub is not None and source._sub.pending == got
        gate.set()
        async with asyncio.timeout(10):
            while bus._ack_queue or len(sink.got) < 200:
                await asyncio.sleep(0.01)
        assert sink.got == [b"%d" % i for i in range(200)]
        assert source._sub.delivered == 200 and source._sub.pending == 0
        await source.stop()
        await runner.stop()
        await bus.close()
        await pub.close()
    run(main())


# -- one acknowledgement window per batch -------------------------------------------------

def test_send_many_answers_each_message_and_times_out_only_the_unanswered(tmp_path):
    broker = Mosquitto(tmp_path / "b", port=free_port()).start()

    async def main():
        bus = MqttBus(broker.url, publish_timeout=0.5)
        await bus.connect()
        assert await bus.publish_many([("a/1", b"x"), ("a/2", b"y")], qos=1) == [None, None]
        assert bus.stats.published == 2
        broker.pause()      # no PUBACK comes while it is stopped
        try:
            results = await bus.publish_many([("a/3", b"z"), ("a/4", b"w")], qos=1)
        finally:
            broker.resume()
        assert all(isinstance(r, PublishTimeout) and "no acknowledgement" in str(r) for r in results)
        assert bus.inflight_count == 2    # still in flight: a late PUBACK is taken
        async with asyncio.timeout(10):   # the late PUBACKs arrive once the broker runs
            while bus.inflight_count:
                await asyncio.sleep(0.01)
        await bus.close()
    try:
        run(main())
    finally:
        broker.stop()


# -- checkpoints off the committing thread ------------------------------------------------

def test_checkpoints_run_on_their_own_thread_and_keep_the_log_short(tmp_path):
    ob = Outbox(tmp_path / "outbox.db")
    assert ob._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    threads: set[str] = set()
    real = Checkpointer._run

    def spy(self):
        threads.add(threading.current_thread().name)
        real(self)

    Checkpointer._run = spy
    try:
        for round_ in range(1, 6):
            for _ in range(ob.checkpoints.every):
                ob.append("s", [("t", b"x" * 200)])
            # one checkpoint is due per `every` commits; while one runs, commits go on (and the
            # next commit asks again), so each round waits for its own to finish
            with ob.checkpoints._lock:
                pass
            assert ob.checkpoints.runs == round_
        ob.checkpoints.close()
    finally:
        Checkpointer._run = real
    assert threads == {"sqlite-checkpoint"}
    # every row is there, and a reader on another connection sees them all
    reader = sqlite3.connect(tmp_path / "outbox.db")
    assert reader.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1000
    reader.close()
    ob.close()


def test_a_failing_checkpoint_is_logged_once_and_commits_go_on(tmp_path, caplog):
    db = open_db(tmp_path / "x.db", synchronous="NORMAL", schema="CREATE TABLE IF NOT EXISTS t (v)")
    ck = Checkpointer(db, every=1)
    ck.path = str(tmp_path / "missing" / "x.db")    # a file it cannot open
    for _ in range(3):
        db.execute("INSERT INTO t VALUES (1)")
        ck.committed()
        with ck._lock:       # the checkpoint that started has finished
            pass
    ck.close()
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 3
    assert sum("checkpoint of" in r.getMessage() for r in caplog.records) == 1
    db.close()


# -- lingering under load only -------------------------------------------------------------

@pytest.mark.parametrize("last, waiting, since_ms, lingers", [
    (1, 1, 50.0, False),    # a quiet route: a lone message goes at once
    (1, 1, 0.6, False),     # ~1,700 msg/s: less than two expected within 1 ms
    (1, 1, 0.2, True),      # 5,000 msg/s: batches of one would pay every hop per message
    (3, 1, 50.0, True),     # the last batch had company
    (1, 4, 50.0, True),     # this one has
])
def test_a_lane_lingers_only_under_load(last, waiting, since_ms, lingers):
    assert _busy(last, waiting, since_ms / 1000, 0.001) is lingers


class _Sizes(_Echo):
    """Echoes, and notes the size of every batch it was given."""

    def __init__(self):
        self.sizes: list[int] = []

    def process(self, msgs):
        self.sizes.append(len(msgs))
        return super().process(msgs)


async def _lingering(runner: RouteRunner, step: _Sizes) -> None:
    """Offer two messages at once (company: the lane lingers) and wait until it does."""
    for p in (b"0", b"1"):
        assert runner.offer_nowait(Message("t", p), {})
    while runner.depth() or not runner._inflight:   # taken, and held: lingering
        await asyncio.sleep(0)
    assert step.sizes == []


def test_a_lingering_lane_goes_on_as_soon_as_its_batch_is_big_enough():
    async def main():
        step, keep = _Sizes(), _Keep()
        runner = RouteRunner("r", [step], [keep], batch=BatchPolicy(max_size=100, max_linger_s=3600))
        runner.start()
        await _lingering(runner, step)
        for i in range(2, LINGER_ENOUGH - 1):
            assert runner.offer_nowait(Message("t", b"%d" % i), {})
        for _ in range(20):
            await asyncio.sleep(0)
        assert step.sizes == []               # one short of enough: still lingering
        assert runner.offer_nowait(Message("t", b"last"), {})
        while len(keep.got) < LINGER_ENOUGH:   # well before the hour's linger is out
            await asyncio.sleep(0.001)
        assert step.sizes == [LINGER_ENOUGH]
        await runner.stop()
    run(main())


def test_a_route_handed_over_while_its_lane_lingers_does_not_wait_out_the_linger():
    async def main():
        step, keep = _Sizes(), _Keep()
        batch = BatchPolicy(max_size=100, max_linger_s=3600)
        runner = RouteRunner("r", [step], [keep], batch=batch)
        runner.start()
        await _lingering(runner, step)
        successor = RouteRunner("r", [step], [keep], batch=batch)
        await runner.hand_over(successor)      # would take the hour if the linger were slept out
        assert step.sizes == [2] and keep.got == [b"0", b"1"]
        await runner.stop()
        await successor.stop()
    run(main())


def test_lingering_backs_off_while_it_gathers_nothing_and_resumes_with_company():
    b = LingerBackoff()
    lingered = []
    for batch in range(200):   # every linger gathers nothing
        if b.allows():
            lingered.append(batch)
            b.gathered(False)
    gaps = [y - x - 1 for x, y in zip(lingered, lingered[1:])]
    assert gaps == [1, 3, 7, 15, 31, 63, 63]   # batches run at once in between; capped at 63
    while not b.allows():
        pass
    b.gathered(True)          # this linger had company: lingering every time again
    for _ in range(5):
        assert b.allows()
        b.gathered(True)


def test_a_source_that_waits_for_each_answer_is_not_held_by_lingering(monkeypatch):
    """A client that sends its next message only once the last is through (one in flight)
    never gives a linger company: lingering would hold every message for the linger time.
    The lane backs off, so of 100 such messages only a few wait."""
    lingers = []
    gather = Lane.gather

    async def counted(self, want, timeout):
        lingers.append(want)
        await gather(self, want, timeout)

    monkeypatch.setattr(Lane, "gather", counted)

    async def main():
        step, keep = _Sizes(), _Keep()
        runner = RouteRunner("r", [step], [keep], batch=BatchPolicy(max_size=100, max_linger_s=0.05))
        runner.start()
        loop = asyncio.get_running_loop()
        for i in range(100):
            done = loop.create_future()
            assert runner.offer_nowait(Message("t", b"%d" % i), {}, done)
            await done
        await runner.stop()
        assert step.sizes == [1] * 100 and len(keep.got) == 100
    run(main())
    assert 1 <= len(lingers) <= 10    # without the backoff: every other message, 50


def test_a_route_stopped_while_its_lane_lingers_gives_the_batch_back_or_delivers_it():
    """Stopping does not wait out an hour's linger, and the batch the lane held is accounted
    for: each message either reached the sink (and its source heard so) or was given back
    unacknowledged (its future cancelled) — none left waiting, none both."""
    async def main():
        step, keep = _Sizes(), _Keep()
        runner = RouteRunner("r", [step], [keep], batch=BatchPolicy(max_size=100, max_linger_s=3600))
        runner.start()
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(2)]
        for i, f in enumerate(futs):
            assert runner.offer_nowait(Message("t", b"%d" % i), {}, f)
        while runner.depth() or not runner._inflight:   # taken, and held: lingering
            await asyncio.sleep(0)
        await runner.stop(drain_timeout=0.05)          # the drain gives up; the stop does not wait
        assert all(f.done() for f in futs)
        delivered = [f for f in futs if not f.cancelled()]
        assert len(keep.got) == len(delivered) and step.sizes in ([], [2])
    run(main())
