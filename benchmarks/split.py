#!/usr/bin/env python3
"""What a traffic split costs a route step, measured side by side with the plain step.

    .venv/bin/python benchmarks/split.py [--batches N] [--repeats R] [--batch B]

One batch call into examples/modules/range_filter.wasm (two containers of it: the stable and
the canary deployment) per row, on this thread, for batches of B JSON readings:

* ``plain``: the stable container alone (a route step without a split: the baseline)
* ``weight 10%``: `SplitStep` with a seeded weight: a draw per message, two calls per batch
* ``match field``: `SplitStep` matching a JSON payload field (parses each payload)
* ``weight 0% (idle split)``: a split whose canary gets nothing (one call per batch)

Medians of interleaved repeats; µs per message and the ratio to ``plain`` are printed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from iotwasm.container import WasmContainer  # noqa: E402
from iotwasm.engine import Capabilities, Runtime  # noqa: E402
from iotwasm.message import Message  # noqa: E402
from iotwasm.pipeline.split import Match, SplitStep  # noqa: E402

RANGE_FILTER = ROOT / "examples" / "modules" / "range_filter.wasm"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=100)
    a = ap.parse_args()
    rt = Runtime()
    caps = Capabilities(host=frozenset({"config"}), config={"field": "value", "min": "10", "max": "30"})
    stable = WasmContainer("stable", RANGE_FILTER, runtime=rt, capabilities=caps).start()
    canary = WasmContainer("canary", RANGE_FILTER, runtime=rt, capabilities=caps).start()
    batch = [Message(f"devices/d{i % 20}/t", b'{"device":"d%d","fw":"%s","value":%.1f}'
                     % (i % 20, b"2.1" if i % 10 == 0 else b"2.0", 15 + i % 10)) for i in range(a.batch)]
    ways = {
        "plain": stable,
        "weight 10%": SplitStep(stable, canary, weight=10, rng=random.Random(1)),
        "match field": SplitStep(stable, canary, match=Match(field="fw", equals="2.1")),
        "weight 0% (idle split)": SplitStep(stable, canary, match=Match(topic="nothing/+")),
    }
    for step in ways.values():   # warm-up
        for _ in range(20):
            step.process(batch)
    times: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(a.repeats):
        for name, step in ways.items():
            t0 = time.perf_counter()
            for _ in range(a.batches):
                step.process(batch)
            times[name].append((time.perf_counter() - t0) / (a.batches * a.batch) * 1e6)
    base = statistics.median(times["plain"])
    print(f"batch {a.batch}, {a.batches} batches x {a.repeats} repeats, python {sys.version.split()[0]}")
    print(f"{'way':<24} {'µs/msg':>8} {'× plain':>8}")
    for name in ways:
        m = statistics.median(times[name])
        print(f"{name:<24} {m:>8.3f} {m / base:>8.2f}")
    stable.stop()
    canary.stop()
    rt.close()


if __name__ == "__main__":
    main()
