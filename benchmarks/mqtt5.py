"""MQTT 5 against MQTT 3.1.1 on iotwasm's own MqttBus, side by side through one Mosquitto.

    .venv/bin/python benchmarks/mqtt5.py [--n 20000] [--rounds 5]
    .venv/bin/python benchmarks/mqtt5.py --against OLD/src    # 3.1.1 here against an older tree

Each case publishes `n` QoS 1 messages in windows of 100 (how a route's MQTT sink and the
outbox forwarder send) from one bus to another through a private Mosquitto on a free port, and
times first publish to last delivery (the subscriber's PUBACKs included). Cases run
interleaved, `rounds` times, and the median of each is printed with its ratio to the 3.1.1
baseline:

* ``3.1.1``: the baseline, today's bus;
* ``5``: the same messages at protocol level 5 (an empty property block per message);
* ``5 + headers``: each message with three user properties and a content type, decoded into
  an `Envelope` on arrival.

Mosquitto announces a receive maximum of `max_inflight_messages` (20 unless configured) to
MQTT 5 clients, and the bus honours it, while a 3.1.1 client keeps its own window of 100: so
the run is made twice, with the broker's default and with ``max_inflight_messages 100``,
which separates the cost of the protocol from that of flow control.

``--against SRC`` instead measures 3.1.1 with this tree's bus against the bus of another
source tree (e.g. ``git archive <commit> src | tar -x -C /tmp/old``), each round in a fresh
process per tree, interleaved: wall-clock rate and CPU time of the process per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = os.environ.get("IOTWASM_BENCH_SRC", str(ROOT / "src"))
sys.path[:0] = [SRC, str(ROOT / "tests")]

from brokers import Mosquitto  # noqa: E402

PAYLOAD = (b'{"device":"dev-0001","sensor":"temperature","value":70.7,"unit":"F","seq":1,'
           b'"ts":1795384906395513378}')
HEADERS = {"headers": (("trace-id", "4bf92f3577b34da6"), ("site", "plant-7"), ("unit", "F")),
           "content_type": "application/json"}
CASES = {"3.1.1": (4, None), "5": (5, None), "5 + headers": (5, HEADERS)}


async def one(url: str, version: int, envelope_fields: dict | None, n: int) -> float:
    from iotwasm.messaging.mqtt_bus import MqttBus

    options = {"version": version} if version == 5 else {}
    envelope = None
    if envelope_fields:
        from iotwasm.message import Envelope

        envelope = Envelope(**envelope_fields)
    sub = MqttBus(url, max_pending=n + 1, **options)
    pub = MqttBus(url, **options)
    await sub.connect()
    await pub.connect()
    done = asyncio.Event()
    got = 0

    async def on(msg) -> None:
        nonlocal got
        got += 1
        if got == n:
            done.set()

    await sub.subscribe("bench/#", on, qos=1)
    items = [("bench/dev-0001", PAYLOAD, envelope) if envelope else ("bench/dev-0001", PAYLOAD)
             for _ in range(100)]
    t = time.perf_counter()
    for _ in range(n // 100):
        results = await pub.publish_many(items, qos=1)
        assert results == [None] * 100, results
    await asyncio.wait_for(done.wait(), 120)
    wall = time.perf_counter() - t
    await pub.close()
    await sub.close()
    return n / wall


def child(url: str, n: int) -> None:
    """One 3.1.1 run in this process (of the tree IOTWASM_BENCH_SRC names); prints JSON."""
    cpu = time.process_time()
    rate = asyncio.run(one(url, 4, None, n))
    print(json.dumps({"rate": rate, "cpu_us": (time.process_time() - cpu) / n * 1e6}))


def against(old_src: str, n: int, rounds: int) -> None:
    trees = {"this tree": str(ROOT / "src"), "baseline": str(Path(old_src).resolve())}
    broker = Mosquitto(Path(tempfile.mkdtemp(prefix="iotwasm-bench-mqtt5-")), persistence=False)
    broker.start()
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    try:
        for _ in range(rounds):
            for name, src in trees.items():
                out = subprocess.run([sys.executable, __file__, "--child", broker.url, "--n", str(n)],
                                     env={**os.environ, "IOTWASM_BENCH_SRC": src},
                                     capture_output=True, text=True, check=True, timeout=300)
                runs[name].append(json.loads(out.stdout))
    finally:
        broker.stop()
    print(f"MQTT 3.1.1, QoS 1, windows of 100, {n:,} messages, one process per run, "
          f"median of {rounds}")
    base = {k: statistics.median(r[k] for r in runs["baseline"]) for k in ("rate", "cpu_us")}
    print(f"{'tree':<12}{'msg/s':>10}{'ratio':>8}{'CPU µs/msg':>12}{'ratio':>8}")
    for name, rs in runs.items():
        rate = statistics.median(r["rate"] for r in rs)
        cpu = statistics.median(r["cpu_us"] for r in rs)
        print(f"{name:<12}{rate:>10,.0f}{rate / base['rate']:>8.2f}{cpu:>12.2f}"
              f"{cpu / base['cpu_us']:>8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--against", metavar="SRC", help="an older tree's src/ to compare 3.1.1 with")
    ap.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.n)
    if args.against:
        return against(args.against, args.n, args.rounds)
    print(f"QoS 1, windows of 100, {args.n:,} messages, median of {args.rounds} rounds")
    for label, options in (("broker's default receive maximum (20)", {}),
                           ("max_inflight_messages 100", {"max_inflight_messages": 100})):
        broker = Mosquitto(Path(tempfile.mkdtemp(prefix="iotwasm-bench-mqtt5-")),
                           persistence=False, options=options)
        broker.start()
        try:
            rates: dict[str, list[float]] = {name: [] for name in CASES}
            for _ in range(args.rounds):
                for name, (version, envelope) in CASES.items():
                    rates[name].append(asyncio.run(one(broker.url, version, envelope, args.n)))
        finally:
            broker.stop()
        base = statistics.median(rates["3.1.1"])
        print(f"\n{label}")
        print(f"{'case':<14}{'msg/s':>10}{'vs 3.1.1':>10}")
        for name, values in rates.items():
            med = statistics.median(values)
            print(f"{name:<14}{med:>10,.0f}{med / base:>10.2f}")


if __name__ == "__main__":
    main()
