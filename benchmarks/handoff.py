#!/usr/bin/env python3
"""What it costs to run a guest call off the event loop, by way of hand-off.

    .venv/bin/python benchmarks/handoff.py [--batches N] [--repeats R]

A route lane awaits each batch's call into its modules. This measures, for one lane and for
four lanes at once, the wall time and the CPU time (every thread of the process) per batch of
`WasmContainer.process` on examples/modules/range_filter.wasm (falls back to the echo module
of tests/conftest.py), for batches of 1 and 10 messages, handed over in four ways:

* ``inline``: called on the event loop itself (what small batches did before; the loop is
  blocked for the call, so a spinning module freezes the node: the reference, not an option)
* ``worker``: `iotwasm.pipeline.worker.Worker`, one long-lived thread per lane, woken through
  a SimpleQueue, answering with `call_soon_threadsafe`
* ``to_thread``: `asyncio.to_thread`, the default executor
* ``executor(1)``: `loop.run_in_executor` on a one-thread ThreadPoolExecutor per lane

Medians of interleaved repeats; the ratios between the ways, measured side by side, are what
to read on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from iotwasm.container import WasmContainer  # noqa: E402
from iotwasm.engine import Capabilities, Runtime  # noqa: E402
from iotwasm.message import Message  # noqa: E402
from iotwasm.pipeline.worker import Worker  # noqa: E402

RANGE_FILTER = ROOT / "examples" / "modules" / "range_filter.wasm"
WAYS = ("inline", "worker", "to_thread", "executor(1)")


def container(rt: Runtime, replicas: int) -> WasmContainer:
    if RANGE_FILTER.exists():
        caps = Capabilities(host=frozenset({"config"}), config={"field": "value", "min": "10", "max": "30"})
        return WasmContainer("filter", RANGE_FILTER, runtime=rt, capabilities=caps, replicas=replicas).start()
    from conftest import ECHO_WAT
    return WasmContainer("echo", ECHO_WAT, runtime=rt, replicas=replicas).start()


async def lane(way: str, c: WasmContainer, batch: list[Message], n: int) -> None:
    loop = asyncio.get_running_loop()
    if way == "inline":
        for _ in range(n):
            c.process(batch)
            await asyncio.sleep(0)  # a lane yields between batches
    elif way == "worker":
        w = Worker("bench-lane")
        try:
            for _ in range(n):
                await w.run(c.process, batch)
        finally:
            w.close()
    elif way == "to_thread":
        for _ in range(n):
            await asyncio.to_thread(c.process, batch)
    else:
        ex = concurrent.futures.ThreadPoolExecutor(1)
        try:
            for _ in range(n):
                await loop.run_in_executor(ex, c.process, batch)
        finally:
            ex.shutdown()


async def measure(way: str, c: WasmContainer, batch: list[Message], n: int, lanes: int) -> tuple[float, float]:
    await asyncio.gather(*(lane(way, c, batch, 50) for _ in range(lanes)))  # warm-up
    gc.collect()
    gc.disable()
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(lane(way, c, batch, n) for _ in range(lanes)))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    finally:
        gc.enable()
    total = n * lanes
    return wall / total * 1e6, cpu / total * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=2000, help="batches per lane per repeat")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rt = Runtime()
    rows = []
    for lanes in (1, 4):
        c = container(rt, lanes)
        for size in (1, 10):
            batch = [Message(f"devices/d{i}/t", b'{"value": %d}' % (i % 40)) for i in range(size)]
            samples: dict[str, list[tuple[float, float]]] = {w: [] for w in WAYS}
            for _ in range(args.repeats):
                for way in WAYS:  # interleaved, repeat by repeat
                    samples[way].append(asyncio.run(measure(way, c, batch, args.batches, lanes)))
            for way in WAYS:
                wall = statistics.median(s[0] for s in samples[way])
                cpu = statistics.median(s[1] for s in samples[way])
                rows.append((lanes, size, way, wall, cpu))
        c.stop()
    print(f"hand-off of one batch ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{args.repeats} repeats of {args.batches} batches per lane, medians)\n")
    print("| lanes | batch | way | wall µs/batch | CPU µs/batch | CPU vs inline |")
    print("|---:|---:|---|---:|---:|---:|")
    for lanes, size, way, wall, cpu in rows:
        base = next(r[4] for r in rows if r[0] == lanes and r[1] == size and r[2] == "inline")
        print(f"| {lanes} | {size} | {way} | {wall:.1f} | {cpu:.1f} | {cpu / base:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
