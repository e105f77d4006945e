#!/usr/bin/env python3
"""Load generator and collector of the end-to-end benchmark (standard library only).

Both speak just enough MQTT 3.1.1 over a raw socket (CONNECT, PUBLISH/PUBACK at QoS 1,
SUBSCRIBE, DISCONNECT), so that as little CPU as possible goes to measuring: on a 2-core
machine every cycle the generator or the collector burns is taken from the system under test.

    loadgen.py gen --port P --rate 5000 --seconds 10 --seq-start 0      # prints a JSON line
    loadgen.py collect --port P                                         # prints "ready", then
        reads one JSON command line on stdin ({"first_seq":..,"last_seq":..,...}), waits for
        the expected messages (or silence), prints a JSON result line and exits

Closed loop (``gen --rate 0 --window W --progress FILE``, with ``collect --progress FILE``):
the collector keeps its count of received messages in FILE (8 bytes, memory-mapped) and the
generator sends as fast as it can while fewer than W passing messages are on their way, so the
system under test always has work queued but no backlog builds up anywhere.

Messages, about 100 bytes, on ``in/dev-NNNN``::

    {"device":"dev-0007","sensor":"temperature","value":21.4,"unit":"C","seq":1207,"ts":1732...}

``ts`` is time.time_ns() when the message was written to the socket. The reading in °C is a
function of ``seq``: every fifth message (seq % 5 == 4) lies outside 40–104 °F and must be
dropped by the system under test, the others must arrive on ``out/dev-NNNN`` in °F.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import mmap
import os
import socket
import struct
import sys
import threading
import time

PASS_FRACTION = 0.8
PAYLOAD = '{"device":"dev-%04d","sensor":"temperature","value":%s,"unit":"C","seq":%d,"ts":%d}'
DEVICES = 100


# -- the workload ----------------------------------------------------------------------------
def passes(seq: int) -> bool:
    return seq % 5 != 4


def celsius(seq: int) -> float:
    """The reading of message `seq`: 80 % within 4.5–39.9 °C (40.1–103.8 °F), 20 % outside."""
    if passes(seq):
        return 4.5 + (seq * 7 % 355) / 10
    if seq % 10 == 4:
        return -10.0 - (seq % 50) / 10      # ≤ 14 °F
    return 45.0 + (seq % 100) / 10          # ≥ 113 °F


def fahrenheit(c: float) -> float:
    return c * 9 / 5 + 32


def expected_passing(first: int, last: int) -> int:
    """How many seqs in [first, last] pass the filter."""
    if last < first:
        return 0
    n = last - first + 1
    full = n // 5
    return full * 4 + sum(1 for s in range(first + full * 5, last + 1) if passes(s))


def seq_of(payload: bytes) -> int:
    """The seq of a message, read without parsing the JSON (-1 when there is none)."""
    i = payload.find(b'"seq":')
    if i < 0:
        return -1
    j = i + 6
    k = j
    while k < len(payload) and payload[k] in b"-0123456789":
        k += 1
    try:
        return int(payload[j:k])
    except ValueError:
        return -1


# -- MQTT 3.1.1 framing ----------------------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


def connect(host: str, port: int, client_id: str, timeout: float = 5.0) -> socket.socket:
    """Open a clean MQTT session with keep-alive off (no PINGREQ needed)."""
    sock = socket.create_connection((host, port), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    body = mqtt_str(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + mqtt_str(client_id.encode())
    sock.sendall(b"\x10" + varint(len(body)) + body)
    ack = recv_exact(sock, 4)
    if ack[0] != 0x20 or ack[3] != 0:
        raise ConnectionError(f"CONNACK refused: {ack.hex()}")
    sock.settimeout(None)
    return sock


def disconnect(sock: socket.socket) -> None:
    try:
        sock.sendall(b"\xe0\x00")
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# -- generator -------------------------------------------------------------------------------
def generate(args) -> dict:
    sock = connect(args.host, args.port, f"e2e-gen-{os.getpid()}")
    sock.setblocking(False)
    topics = [mqtt_str(f"{args.prefix}/dev-{d:04d}".encode()) for d in range(args.devices)]
    rate, seconds, devices = args.rate, args.seconds, args.devices
    seq = args.seq_start
    acked_bytes = 0
    time_ns, perf = time.time_ns, time.perf_counter
    burst_max = 64 if rate == 0 else max(1, min(256, int(rate / 500)))

    def drain() -> None:
        nonlocal acked_bytes
        while True:
            try:
                data = sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                raise ConnectionError("broker closed the connection")
            acked_bytes += len(data)  # only PUBACKs (4 bytes each) come back

    def send(buf: bytes) -> None:
        view = memoryview(buf)
        while view:
            try:
                n = sock.send(view)
                view = view[n:]
            except (BlockingIOError, InterruptedError):
                drain()
                time.sleep(0.0002)  # the broker's socket is full: that is backpressure

    window, progress = args.window, None
    if window:
        with open(args.progress, "r+b") as f:
            progress = mmap.mmap(f.fileno(), 8, access=mmap.ACCESS_READ)
        received0 = struct.unpack_from("<q", progress, 0)[0]
    passing_sent = 0
    start_ns = time_ns()
    start = perf()
    sent = 0
    sleeps = 0
    while True:
        elapsed = perf() - start
        if elapsed >= seconds:
            break
        n = burst_max if rate == 0 else min(burst_max, int(elapsed * rate) + 1 - sent)
        if window:
            outstanding = passing_sent - (struct.unpack_from("<q", progress, 0)[0] - received0)
            n = min(n, int((window - outstanding) / PASS_FRACTION))
            if n <= 0:
                sleeps += 1
                time.sleep(0.0002)
                drain()
                continue
        elif n <= 0:
            sleeps += 1
            time.sleep(min(0.0005, (sent + 1) / rate - elapsed))
            drain()
            continue
        parts = []
        for _ in range(n):
            passing_sent += passes(seq)
            c = celsius(seq)
            d = seq % devices
            payload = (PAYLOAD % (d, repr(c), seq, time_ns())).encode()
            topic = topics[d]
            parts.append(b"\x32" + varint(len(topic) + 2 + len(payload)) + topic
                         + struct.pack("!H", seq % 65535 + 1) + payload)
            seq += 1
        send(b"".join(parts))
        sent += n
        drain()
    end = perf()
    end_ns = time_ns()
    deadline = perf() + 15
    while acked_bytes < sent * 4 and perf() < deadline:
        drain()
        time.sleep(0.001)
    sock.setblocking(True)
    disconnect(sock)
    return {"first_seq": args.seq_start, "last_seq": seq - 1, "sent": sent,
            "acked_by_broker": acked_bytes // 4, "start_ns": start_ns, "end_ns": end_ns,
            "seconds": end - start, "offered_per_s": sent / (end - start), "rate_asked": rate,
            "window": window, "idle_sleeps": sleeps}


# -- collector -------------------------------------------------------------------------------
class Collector:
    def __init__(self, host: str, port: int, topic_filter: str, progress: str | None = None):
        self.progress = None
        if progress:
            with open(progress, "w+b") as f:
                f.write(b"\0" * 8)
                f.flush()
                self.progress = mmap.mmap(f.fileno(), 8)
        self.sock = connect(host, port, f"e2e-collect-{os.getpid()}")
        self.received: list[tuple[int, bytes, bytes]] = []  # (recv ns, topic, payload)
        self.last_recv = time.monotonic()
        self.subscribed = threading.Event()
        self.closed = False
        body = struct.pack("!H", 1) + mqtt_str(topic_filter.encode()) + b"\x01"
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.sock.sendall(b"\x82" + varint(len(body)) + body)
        if not self.subscribed.wait(5):
            raise ConnectionError("no SUBACK")

    def _read(self) -> None:
        buf = bytearray()
        sock, received = self.sock, self.received
        append = received.append
        while True:
            try:
                data = sock.recv(1 << 18)
            except OSError:
                return
            if not data:
                return
            now = time.time_ns()
            buf += data
            acks = []
            i, n = 0, len(buf)
            while i + 2 <= n:
                first = buf[i]
                mult, rl, p = 1, 0, i + 1
                while p < n:
                    b = buf[p]
                    rl += (b & 0x7F) * mult
                    mult *= 128
                    p += 1
                    if not b & 0x80:
                        break
                else:
                    break  # length incomplete
                end = p + rl
                if end > n:
                    break
                kind = first >> 4
                if kind == 3:
                    tl = (buf[p] << 8) | buf[p + 1]
                    topic = bytes(buf[p + 2:p + 2 + tl])
                    q = p + 2 + tl
                    if (first >> 1) & 3:
                        acks.append(b"\x40\x02" + bytes(buf[q:q + 2]))
                        q += 2
                    append((now, topic, bytes(buf[q:end])))
                elif kind == 9:
                    self.subscribed.set()
                i = end
            del buf[:i]
            if self.progress is not None:
                struct.pack_into("<q", self.progress, 0, len(received))
            if acks:
                self.last_recv = time.monotonic()
                try:
                    sock.sendall(b"".join(acks))
                except OSError:
                    return

    def wait(self, first: int, last: int, expected: int, quiet: float, timeout: float) -> str:
        """Until every expected message of seqs first..last arrived, nothing arrived for
        `quiet` seconds, or `timeout`. Messages of earlier steps do not count."""
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        done = 0
        while True:
            received = self.received
            n = len(received)
            for k in range(done, n):
                seq = seq_of(received[k][2])
                if first <= seq <= last and passes(seq):
                    seen.add(seq)
            done = n
            now = time.monotonic()
            if len(seen) >= expected:
                return "complete"
            if now - self.last_recv > quiet:
                return "quiet"
            if now > deadline:
                return "timeout"
            time.sleep(0.02)

    def close(self) -> None:
        disconnect(self.sock)
        self.thread.join(2)


def pct(sorted_xs: list, q: float) -> float | None:
    if not sorted_xs:
        return None
    k = (len(sorted_xs) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def analyse(received, cmd: dict, stop_reason: str) -> dict:
    first, last = cmd["first_seq"], cmd["last_seq"]
    gen_start, gen_end = cmd["gen_start_ns"], cmd["gen_end_ns"]
    seen: set[int] = set()
    dup = stale = leaked = wrong = bad = 0
    lat_ms: list[float] = []
    recv_ns: list[int] = []
    for t, topic, payload in received:
        try:
            d = json.loads(payload)
            seq, ts = d["seq"], d["ts"]
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if not first <= seq <= last:
            stale += 1
            continue
        if seq in seen:
            dup += 1
            continue
        seen.add(seq)
        if not passes(seq):
            leaked += 1
        elif (d.get("unit") != "F" or abs(d.get("value", 1e9) - fahrenheit(celsius(seq))) > 1e-3
              or topic != f"out/{d.get('device')}".encode()):
            wrong += 1
        lat_ms.append((t - ts) / 1e6)
        recv_ns.append(t)
    expected = expected_passing(first, last)
    lat_ms.sort()
    recv_ns.sort()
    # sustained delivery rate: what arrived while the load was on, after a 0.5 s ramp
    w0 = gen_start + 500_000_000
    in_window = sum(1 for t in recv_ns if w0 <= t <= gen_end)
    window_s = max(1e-9, (gen_end - w0) / 1e9)
    gaps = []
    for a, b in itertools.pairwise(recv_ns):
        if b - a > 50_000_000:
            gaps.append({"after_ns": a, "gap_ms": round((b - a) / 1e6, 1)})
    gaps.sort(key=lambda g: -g["gap_ms"])
    unique = len(seen)
    return {
        "expected": expected, "received": len(received), "unique": unique,
        "lost": expected - (unique - leaked), "duplicates": dup, "stale": stale,
        "leaked_through_filter": leaked, "wrong_output": wrong, "unparseable": bad,
        "loss_pct": 100.0 * (expected - (unique - leaked)) / expected if expected else 0.0,
        "p50_ms": pct(lat_ms, 0.50), "p90_ms": pct(lat_ms, 0.90), "p99_ms": pct(lat_ms, 0.99),
        "max_ms": lat_ms[-1] if lat_ms else None,
        "first_recv_ns": recv_ns[0] if recv_ns else None,
        "last_recv_ns": recv_ns[-1] if recv_ns else None,
        "delivered_in_window_per_s": in_window / window_s,
        "delivered_overall_per_s": (unique / ((recv_ns[-1] - gen_start) / 1e9)
                                    if recv_ns and recv_ns[-1] > gen_start else 0.0),
        "drain_s": (recv_ns[-1] - gen_end) / 1e9 if recv_ns else None,
        "largest_gaps": gaps[:20], "stop_reason": stop_reason,
    }


def collect(args) -> None:
    c = Collector(args.host, args.port, args.topic, args.progress)
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line:
        c.close()
        return
    cmd = json.loads(line)
    expected = expected_passing(cmd["first_seq"], cmd["last_seq"])
    reason = c.wait(cmd["first_seq"], cmd["last_seq"], expected, cmd.get("quiet_s", 1.0),
                    cmd.get("timeout_s", 20.0))
    c.close()
    received = list(c.received)
    print(json.dumps(analyse(received, cmd, reason)), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--rate", type=float, default=1000, help="messages/s; 0 = as fast as possible")
    g.add_argument("--seconds", type=float, default=10)
    g.add_argument("--seq-start", type=int, default=0)
    g.add_argument("--devices", type=int, default=DEVICES)
    g.add_argument("--prefix", default="in")
    g.add_argument("--window", type=int, default=0,
                   help="closed loop: at most this many passing messages on their way")
    g.add_argument("--progress", help="the collector's progress file (with --window)")
    c = sub.add_parser("collect")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--topic", default="out/#")
    c.add_argument("--progress", help="keep the count of received messages in this file")
    args = ap.parse_args()
    if args.cmd == "gen":
        print(json.dumps(generate(args)), flush=True)
    else:
        collect(args)


if __name__ == "__main__":
    main()
