"""Gathered reads (messaging/gather.py): a busy MQTT connection raises its socket's receive
low-water mark, so the process wakes once for several messages, and a timer lowers it again.

What is checked: the cycle of marks and phases, driven read by read with the timer in the
test's hands; the two kernel behaviours the design stands on (a raised mark keeps the socket
quiet, lowering it wakes the waiter); and, against a real mosquitto, that a burst is gathered
without losing or reordering a message, that the message after the burst is not left below
the mark, and that a connection carrying only the replies to its own publishes never gathers.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import subprocess
from collections.abc import Callable

import pytest

from brokers import Mosquitto
from buses import Inbox, States, run
from iotwasm.errors import ConfigError
from iotwasm.messaging import BusState, MqttBus, open_bus
from iotwasm.messaging.bus_interface import BusStats
from iotwasm.messaging.gather import TARGET_PACKETS, ReadGathering


class Handle:
    def __init__(self):
        self.done = False

    def cancel(self):
        self.done = True

    def cancelled(self):
        return self.done


class Timers:
    """The scheduler a `ReadGathering` sets its timer with, fired by the test."""

    def __init__(self):
        self.pending: list[tuple[float, object, Handle]] = []

    def call_later(self, delay, callback):
        handle = Handle()
        self.pending.append((delay, callback, handle))
        return handle

    def fire(self):
        live = [(d, cb, h) for d, cb, h in self.pending if not h.cancelled()]
        assert len(live) == 1, f"expected one armed timer, found {len(live)}"
        self.pending.clear()
        live[0][1]()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    listener.close()
    return sender, receiver


def mark(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def test_a_gathering_cycle_raises_the_mark_lowers_it_on_time_and_stops_when_traffic_thins():
    sender, receiver = tcp_pair()
    timers, stats, clock = Timers(), BusStats(), [0.0]
    g = ReadGathering(receiver, timers, 0.001, stats, clock=lambda: clock[0])   # type: ignore[arg-type]
    try:
        g.read(1, 100, 1, now=10.0)
        assert not g.gathering and mark(receiver) == 1            # one message: read as it comes
        g.read(1, 100, 1, now=10.0002)                             # the next within half a window
        assert g.gathering and mark(receiver) == 100 * TARGET_PACKETS
        assert [d for d, _, _ in timers.pending] == [0.001]
        g.read(5, 500, 5, now=10.0006)                             # let through by the mark
        assert mark(receiver) == 100 * TARGET_PACKETS and len(timers.pending) == 1

        clock[0] = 10.0012
        timers.fire()                                              # the window is over
        assert mark(receiver) == 1 and g.gathering
        g.read(1, 100, 1, now=10.0013)                             # what waited
        assert mark(receiver) == 1                                 # still low: the peer's answer
        g.read(4, 400, 4, now=10.0014)                             # ... comes in at once
        assert mark(receiver) == 100 * TARGET_PACKETS              # and then the next cycle
        assert (stats.gathers, stats.gathered) == (1, 10)

        clock[0] = 10.0024
        timers.fire()
        g.read(3, 300, 3, now=10.0025)
        g.read(1, 100, 1, now=10.0032)                             # later, but the cycle had 4
        assert g.gathering and mark(receiver) == 100 * TARGET_PACKETS
        assert (stats.gathers, stats.gathered) == (2, 14)

        clock[0] = 10.0045                                         # nothing came through
        timers.fire()                                              # the mark in between
        g.read(1, 100, 1, now=10.0046)
        g.read(0, 4, 1, now=10.0047)                               # a cycle of one message
        assert not g.gathering and mark(receiver) == 1
        assert (stats.gathers, stats.gathered) == (3, 15)
        assert not [h for _, _, h in timers.pending if not h.cancelled()]

        g.read(1, 100, 1, now=10.0050)                             # busy again
        assert g.gathering and g.fruitless == 1
        clock[0] = 10.0060
        timers.fire()
        g.read(1, 100, 1, now=10.0100)                             # then quiet for a window
        assert not g.gathering and mark(receiver) == 1

        g.read(1, 100, 1, now=10.0101)       # stopped by silence, not by a fruitless cycle
        assert g.gathering
        clock[0] = 10.0112
        timers.fire()
        g.read(6, 600, 6, now=10.0113)                             # what waited, several
        g.read(1, 100, 1, now=10.0130)       # the loop came back to the socket after the window
        assert not g.gathering and mark(receiver) == 1
        assert (stats.gathers, stats.gathered) == (4, 22)          # the cycle did gather

        g.read(1, 100, 1, now=10.0131)
        assert g.gathering
        g.close()                                                  # the connection is gone
        assert not [h for _, _, h in timers.pending if not h.cancelled()]
    finally:
        sender.close()
        receiver.close()


def test_a_peer_that_waits_for_each_answer_is_held_back_ever_more_rarely():
    """A client with one message in flight sends the next only after our answer: its
    messages come close together but never pile up, so a gathering cycle only delays one of
    them. The first such cycle is forgiven (a steady stream has one now and then); after
    that each doubles the chances passed up before the next try (at most 63), and a cycle
    that did gather ends the backoff."""
    sender, receiver = tcp_pair()
    timers, clock = Timers(), [0.0]
    g = ReadGathering(receiver, timers, 0.001, BusStats(), clock=lambda: clock[0])   # type: ignore[arg-type]
    now = 10.0
    tries = []

    def one(n=1):
        nonlocal now
        now += 0.0002
        clock[0] = now
        g.read(n, 100 * n, n, now=now)

    try:
        one()
        for _ in range(9):
            passed = 0
            one()
            while not g.gathering:
                passed += 1
                one()
            tries.append(passed)
            timers.fire()      # the held message is read, then the answer's reply comes alone
            one()
            one()
            assert not g.gathering
        assert tries == [0, 0, 1, 3, 7, 15, 31, 63, 63]
        # now a burst: the cycle gathers, and the next fruitless one backs off by one again
        while not g.gathering:
            one()
        timers.fire()
        one(5)
        one(3)
        assert g.gathering and g.fruitless == 0
    finally:
        sender.close()
        receiver.close()


def test_replies_alone_never_start_gathering():
    """Reads that carry no message from the peer (PUBACKs for our own publishes) come in
    close together when a caller publishes one message after the other; holding them back
    would slow that caller to one publish per window."""
    sender, receiver = tcp_pair()
    g = ReadGathering(receiver, Timers(), 0.001, BusStats())   # type: ignore[arg-type]
    try:
        for i in range(50):
            g.read(0, 4, 1, now=10.0 + i * 0.0001)
        assert not g.gathering and mark(receiver) == 1
    finally:
        sender.close()
        receiver.close()


def test_the_kernel_keeps_a_socket_below_its_mark_quiet_and_wakes_it_when_the_mark_drops():
    """The two behaviours of Linux's SO_RCVLOWAT gathering relies on: readiness waits for the
    mark, and lowering the mark wakes whoever waits (tcp_set_rcvlowat), so the timer does not
    need to read the socket itself."""
    sender, receiver = tcp_pair()

    async def main():
        receiver.setblocking(False)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1000)
        sender.sendall(b"x" * 200)
        for _ in range(50):   # the bytes are in (loopback), and still nothing is readable
            if receiver.recv(200, socket.MSG_PEEK) == b"x" * 200:
                break
            await asyncio.sleep(0.01)
        assert select.select([receiver], [], [], 0)[0] == []
        loop = asyncio.get_running_loop()
        woken = loop.create_future()
        loop.add_reader(receiver, lambda: woken.done() or woken.set_result(True))
        try:
            await asyncio.sleep(0)
            assert not woken.done()
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            await asyncio.wait_for(woken, 5)
        finally:
            loop.remove_reader(receiver)
        assert receiver.recv(1000) == b"x" * 200   # a non-blocking read takes what is there

    try:
        run(main())
    finally:
        sender.close()
        receiver.close()


async def bursts_until_gathered(pub: MqttBus, sub: MqttBus, inbox: Inbox, topic: Callable[[int], str],
                                burst: int = 3000, tries: int = 5) -> int:
    """Publish bursts of `burst` messages (payloads 0, 1, 2, …, topic `topic(i)`) until `sub`
    has gathered a read, at most `tries` of them: a loaded machine may read the first too
    slowly to gather it. Returns how many were sent, all of them in `inbox` by then."""
    n = 0
    while sub.stats.gathers == 0 and n < tries * burst:
        for start in range(n, n + burst, 100):
            await pub.publish_many([(topic(i), str(i).encode()) for i in range(start, start + 100)], qos=1)
        n += burst
        await inbox.wait_count(n)
    return n


def test_a_burst_is_gathered_in_order_and_the_message_after_it_is_not_left_waiting(mosquitto):
    async def main():
        sub = MqttBus(mosquitto.url, client_id="gatherer")
        await sub.connect()
        inbox = Inbox()
        await sub.subscribe("burst/#", inbox, qos=1)
        pub = MqttBus(mosquitto.url)
        await pub.connect()
        n = await bursts_until_gathered(pub, sub, inbox, lambda i: f"burst/{i % 4}")
        for dev in range(4):   # every message, each device's in order
            got = [int(m.payload) for m in inbox.messages if m.topic == f"burst/{dev}"]
            assert got == list(range(dev, n, 4))
        assert sub.stats.gathers > 0, "the burst was read message by message"
        assert sub.stats.gathered >= 2 * sub.stats.gathers
        assert pub.stats.gathers == 0   # it only read PUBACKs for its own publishes

        await pub.publish("burst/last", b"after", qos=1)   # alone, after the burst
        await inbox.wait_count(n + 1, timeout=5)
        assert inbox.messages[-1].payload == b"after"
        await pub.close()
        await sub.close()

    run(main())


def test_gathering_is_off_with_gather_ms_0(mosquitto):
    async def main():
        sub = open_bus(f"{mosquitto.url}?gather_ms=0")
        await sub.connect()
        inbox = Inbox()
        await sub.subscribe("burst/#", inbox, qos=1)
        pub = MqttBus(mosquitto.url)
        await pub.connect()
        await pub.publish_many([("burst/0", str(i).encode()) for i in range(500)], qos=1)
        await inbox.wait_count(500)
        assert sub.stats.gathers == 0
        await pub.close()
        await sub.close()

    run(main())


@pytest.mark.parametrize("value", [-1, 101, 1.5, True])
def test_gather_ms_outside_its_range_is_refused(value):
    with pytest.raises(ConfigError, match="gather_ms must be whole milliseconds from 0"):
        MqttBus("mqtt://127.0.0.1:1", gather_ms=value)


def test_gather_ms_in_a_url_must_be_a_number():
    with pytest.raises(ConfigError, match="gather_ms in 'mqtt://h:1\\?gather_ms=soon'"):
        open_bus("mqtt://h:1?gather_ms=soon")


def test_a_connection_lost_while_gathering_is_made_again_and_nothing_is_lost(mosquitto):
    """The broker restarts (persistence on, so it keeps the session) in the middle of a
    burst, with the subscriber's mark raised: the old connection's timer dies with it, the
    new connection starts with the mark at one byte, and every message arrives (QoS 1 from a
    persistent session: at least once, so duplicates are allowed)."""

    async def main():
        sub = MqttBus(mosquitto.url, client_id="gatherer-restarted", reconnect_max=0.5)
        pub = MqttBus(mosquitto.url, client_id="burster", reconnect_max=0.5)
        sub_states, pub_states = States(sub), States(pub)
        await sub.connect()
        inbox = Inbox()
        await sub.subscribe("burst/#", inbox, qos=1, durable="gatherer-restarted")
        await pub.connect()
        n, sent = 4000, 0
        while sub.stats.gathers == 0 and sent < n:   # until the subscriber gathers
            await pub.publish_many([("burst/0", str(i).encode()) for i in range(sent, sent + 100)], qos=1)
            sent += 100
        assert sub.stats.gathers > 0
        first = sub._conn
        await asyncio.to_thread(mosquitto.restart)
        await sub_states.until_seen(BusState.CONNECTED, 2)
        await pub_states.until_seen(BusState.CONNECTED, 2)
        assert sub._conn is not first and first.gathering is not None and first.gathering.timer is None
        while sent < n:
            await pub.publish_many([("burst/0", str(i).encode()) for i in range(sent, sent + 100)], qos=1)
            sent += 100
        await inbox.wait_until(lambda i: {int(m.payload) for m in i.messages} >= set(range(n)),
                               f"all {n} messages", timeout=20)
        assert sub.stats.reconnects >= 1
        await pub.close()
        await sub.close()

    run(main())


def test_a_tls_connection_gathers_too(tmp_path):
    """Over TLS the mark counts encrypted bytes on the socket under asyncio's TLS layer; a
    burst still arrives whole and in order, gathered, and the message after it is read."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    broker = Mosquitto(tmp_path / "broker", options={"certfile": cert, "keyfile": key})
    broker.start()
    tls = ssl.create_default_context(cafile=str(cert))
    url = f"mqtts://127.0.0.1:{broker.port}"

    async def main():
        # a wider window than the default: on a loaded machine decrypting a read can take
        # longer than half a millisecond, and then no read would follow the last within it
        sub, pub = MqttBus(url, tls=tls, gather_ms=4), MqttBus(url, tls=tls)
        await sub.connect()
        inbox = Inbox()
        await sub.subscribe("burst/#", inbox, qos=1)
        await pub.connect()
        n = await bursts_until_gathered(pub, sub, inbox, lambda i: "burst/0")
        assert [int(m.payload) for m in inbox.messages] == list(range(n))
        assert sub.stats.gathers > 0
        await pub.publish("burst/last", b"after", qos=1)
        await inbox.wait_count(n + 1, timeout=5)
        await pub.close()
        await sub.close()

    try:
        run(main())
    finally:
        broker.kill()


def test_closing_the_bus_in_the_middle_of_a_gathered_burst_keeps_what_it_had_not_taken(mosquitto):
    """A graceful close while the subscriber gathers, with messages still below the mark in
    the kernel: close cancels the timer and nothing it had not acknowledged is lost — the
    persistent session hands those over to the next connection (at least once)."""

    async def main():
        sub = MqttBus(mosquitto.url, client_id="gatherer-closed")
        await sub.connect()
        first = Inbox()
        await sub.subscribe("burst/#", first, qos=1, durable="gatherer-closed")
        pub = MqttBus(mosquitto.url)
        await pub.connect()
        n = 3000
        publishing = asyncio.create_task(
            pub.publish_many([("burst/0", str(i).encode()) for i in range(n)], qos=1))
        await first.wait_until(lambda i: len(i.messages) > 0, "the burst to begin")
        gathering = sub._conn.gathering
        assert gathering is not None
        # the mark raised as a burst raises it (when it does is the state machine's test above;
        # on a loaded machine reads can come too far apart for it, and this is about closing)
        if not gathering.gathering:
            gathering._raise()
        assert gathering.timer is not None
        await sub.close()                      # mid-burst, the mark up and its timer pending
        assert gathering.timer is None and not gathering.gathering
        await publishing
        back = MqttBus(mosquitto.url, client_id="gatherer-closed")
        again = Inbox()
        await back.subscribe("burst/#", again, qos=1, durable="gatherer-closed")
        await back.connect()
        got = lambda _: {int(m.payload) for m in first.messages + again.messages}  # noqa: E731
        await again.wait_until(lambda i: got(i) >= set(range(n)), f"all {n} messages", timeout=20)
        await pub.close()
        await back.close()

    run(main())
