"""Circuit breakers: the state machine on a stepped clock, and in front of a real webhook
(a local HTTP server started here) with and without the outbox."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from iotwasm.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitOpen
from iotwasm.message import Message
from iotwasm.pipeline.outbox import Outbox
from iotwasm.pipeline.sinks import WebhookSink


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_opens_after_n_consecutive_failures_probes_and_closes():
    clock = Clock()
    b = CircuitBreaker("up", failures=3, open_for=2.0, max_open_for=5.0, clock=clock)
    b.failure("e1")
    b.success()            # a success in between resets the count
    for i in range(2):
        assert b.allow()
        b.failure(f"e{i}")
    assert b.state == CLOSED
    b.failure("boom")
    assert b.state == OPEN and b.opened == 1
    assert not b.allow() and not b.allow() and b.rejected == 2
    assert isinstance(b.refusal(), CircuitOpen)
    assert "after 3 failure(s) (last: boom); next probe in 2.0s" in str(b.refusal())
    clock.t += 2.0
    assert b.allow() and b.state == HALF_OPEN      # one probe ...
    assert not b.allow()                           # ... and only one
    b.failure("still down")
    assert b.state == OPEN and b.wait_s() == 4.0   # open again, twice as long
    clock.t += 4.0
    assert b.allow()
    b.failure("down")
    assert b.wait_s() == 5.0                       # capped
    clock.t += 5.0
    assert b.allow()
    b.success()
    assert b.state == CLOSED and b.consecutive == 0
    b.failure("x"), b.failure("x"), b.failure("x")
    assert b.wait_s() == 2.0                       # closing reset the open period
    assert b.describe()["state"] == "open" and b.describe()["opened"] == 4


def test_opens_on_a_failure_rate_over_the_window():
    b = CircuitBreaker("up", failures=100, failure_rate=0.5, window=10, clock=Clock())
    for i in range(10):                            # alternating: never 2 in a row
        if i % 2:
            b.failure("e")
        else:
            b.success()
    assert b.state == OPEN and b.consecutive == 1


class Webhook:
    """A local webhook answering 503 while `down`, recording what it was sent."""

    def __init__(self):
        self.down = True
        self.hits: list[tuple[int, bytes]] = []   # (status answered, body)
        #: bodies containing this are answered 422 (refused for good), when set
        self.refuse: bytes | None = None
        hook = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 503 if hook.down else 422 if hook.refuse and hook.refuse in body else 200
                hook.hits.append((status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def webhook():
    w = Webhook()
    yield w
    w.close()


async def until(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_breaker_opens_against_a_dead_webhook_and_closes_after_it_recovers_losing_nothing(tmp_path, webhook):
    async def main():
        outbox = Outbox(tmp_path / "outbox.db")
        br = CircuitBreaker("webhook", failures=3, open_for=0.05, max_open_for=0.2)
        sink = WebhookSink("r/0:webhook", webhook.url, outbox=outbox, breaker=br, timeout_s=5)
        await sink.start()
        msgs = [Message("t", b'{"n": %d}' % i) for i in range(30)]
        assert await sink.deliver(msgs, [{}] * 30) == []
        await until(lambda: br.opened >= 3)     # opened, probed, opened again ...
        assert br.state in (OPEN, HALF_OPEN)
        assert outbox.backlog("r/0:webhook") == 30
        webhook.down = False   # answers 200 from now on; what came before is counted below
        opened, down_hits = br.opened, [b for s, b in webhook.hits if s == 503]
        # 3 failures opened it; after that one probe per opening (one may be on its way), and
        # each probe is a single message, the oldest: never a window, never the rest
        assert len(down_hits) <= 3 + opened
        assert set(down_hits) == {b'{"topic": "t", "payload": {"n": 0}}'}
        await until(lambda: outbox.backlog("r/0:webhook") == 0)
        assert br.state == CLOSED and br.successes >= 1
        delivered = [b for s, b in webhook.hits if s == 200]
        assert [b'{"topic": "t", "payload": {"n": %d}}' % i for i in range(30)] == delivered
        await sink.stop()
        outbox.close()

    asyncio.run(main())


def test_without_an_outbox_an_open_breaker_fails_fast_and_retries_use_backoff(webhook):
    async def main():
        br = CircuitBreaker("webhook", failures=4, open_for=60, max_open_for=60)
        from iotwasm.backoff import Backoff
        sink = WebhookSink("r/0:webhook", webhook.url, breaker=br, retries=1,
                           retry_backoff=Backoff(0.001, 0.002, jitter=0))
        failures = await sink.deliver([Message("t", b"%d" % i) for i in range(5)], [{}] * 5)
        # two messages x two attempts opened it; the other three were refused without a request
        assert len(webhook.hits) == 4
        assert [i for i, _ in failures] == [0, 1, 2, 3, 4]
        assert "answered 503" in str(failures[1][1])
        assert all(isinstance(e, CircuitOpen) for _, e in failures[2:])
        assert br.rejected == 3 and br.state == OPEN

    asyncio.run(main())


def test_a_bus_sink_without_an_outbox_fails_fast_while_its_broker_is_away(mosquitto):
    from iotwasm.messaging import open_bus
    from iotwasm.pipeline.sinks import BusSink

    async def main():
        bus = open_bus(mosquitto.url)
        await bus.connect(timeout=5)
        clock = Clock()
        br = CircuitBreaker("r/0:mqtt", failures=2, open_for=3, max_open_for=3, clock=clock)
        sink = BusSink("r/0:mqtt", bus, "up/{topic}", qos=1, breaker=br)
        msgs = [Message("t", b"1"), Message("t", b"2")]
        try:
            assert await sink.deliver(msgs, [{}, {}]) == [] and br.state == CLOSED
            await asyncio.to_thread(mosquitto.stop)
            await until(lambda: not bus.connected)
            for _ in range(2):   # the broker is away: each batch fails, then the breaker opens
                failures = await sink.deliver(msgs, [{}, {}])
                assert [i for i, _ in failures] == [0, 1] and not isinstance(failures[0][1], CircuitOpen)
            assert br.state == OPEN
            published = bus.stats.published
            failures = await sink.deliver(msgs, [{}, {}])
            assert all(isinstance(e, CircuitOpen) for _, e in failures) and len(failures) == 2
            assert bus.stats.published == published          # refused without touching the bus
            await asyncio.to_thread(mosquitto.start)
            await until(lambda: bus.connected)
            clock.t += 3                                     # half-open: the probe batch goes out
            assert await sink.deliver(msgs, [{}, {}]) == [] and br.state == CLOSED
            assert sink.sent == 4
        finally:
            await bus.close()

    asyncio.run(main())


def test_a_message_the_webhook_refuses_for_good_is_handed_on_and_the_rest_go(tmp_path, webhook):
    """422 is an answer about the message itself: it is rejected (a dead letter, on a node)
    instead of holding the outbox, and the messages behind it are delivered in order; a 503
    before it was retried as usual."""
    async def main():
        outbox = Outbox(tmp_path / "outbox.db")
        rejected: list[tuple[str, bytes, str]] = []

        async def reject(topic, payload, why):
            rejected.append((topic, payload, str(why)))

        sink = WebhookSink("r/0:webhook", webhook.url, outbox=outbox, timeout_s=5)
        sink.reject = reject
        await sink.start()
        webhook.refuse = b'"n": 3}'
        msgs = [Message("t", b'{"n": %d}' % i) for i in range(8)]
        assert await sink.deliver(msgs, [{}] * 8) == []
        await until(lambda: any(s == 503 for s, _ in webhook.hits))   # down first: retried
        webhook.down = False
        await until(lambda: outbox.backlog("r/0:webhook") == 0)
        assert [(t, p) for t, p, _ in rejected] == [("t", b'{"n": 3}')]
        assert "refused the message on 't': 422" in rejected[0][2]
        delivered = [b for s, b in webhook.hits if s == 200]
        assert delivered == [b'{"topic": "t", "payload": {"n": %d}}' % i for i in range(8) if i != 3]
        assert sink.forwarder is not None and sink.forwarder.rejected == 1
        await sink.stop()
        outbox.close()

    asyncio.run(main())


def test_without_an_outbox_a_refused_message_is_not_retried_nor_a_breaker_failure(webhook):
    async def main():
        webhook.down = False
        webhook.refuse = b'"n": 1}'
        br = CircuitBreaker("webhook", failures=1, open_for=5)
        sink = WebhookSink("r/0:webhook", webhook.url, breaker=br, retries=3, timeout_s=5)
        msgs = [Message("t", b'{"n": %d}' % i) for i in range(3)]
        failures = await sink.deliver(msgs, [{}] * 3)
        assert [(i, type(e).__name__) for i, e in failures] == [(1, "SinkRejected")]
        assert br.state == CLOSED
        assert [s for s, _ in webhook.hits] == [200, 422, 200]   # asked once, not retried

    asyncio.run(main())
