"""MQTT 5 against MQTT 3.1.1 on iotwasm's own MqttBus, side by side through one Mosquitto.

    .venv/bin/python benchmarks/mqtt5.py [--n 20000] [--rounds 5]

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
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from brokers import Mosquitto  # noqa: E402
from iotwasm.message import Envelope  # noqa: E402
from iotwasm.messaging.mqtt_bus import MqttBus  # noqa: E402

PAYLOAD = (b'{"device":"dev-0001","sensor":"temperature","value":70.7,"unit":"F","seq":1,'
           b'"ts":1795384906395513378}')
ENVELOPE = Envelope(headers=(("trace-id", "4bf92f3577b34da6"), ("site", "plant-7"),
                             ("unit", "F")), content_type="application/json")
CASES = {"3.1.1": (4, None), "5": (5, None), "5 + headers": (5, ENVELOPE)}


async def one(url: str, version: int, envelope: Envelope | None, n: int) -> float:
    sub = MqttBus(url, version=version, max_pending=n + 1)
    pub = MqttBus(url, version=version)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
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
