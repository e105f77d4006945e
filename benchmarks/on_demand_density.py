#!/usr/bin/env python3
"""Density with instances on demand: many deployments, few instances kept hot.

    .venv/bin/python benchmarks/on_demand_density.py                 # 100,000 deployments, 1,000 hot
    .venv/bin/python benchmarks/on_demand_density.py --deployments 10000 --messages 20000

In one process: N containers of the echo module of tests/conftest.py (one page of memory; the
digest repeats, so it is compiled once and shared), each `replicas: {min: 0, max: 1}`, under a
node budget of `--hot` instances. Then `--messages` messages, one at a time, each to a
deployment drawn from a Zipf distribution (s = 1.1) — or uniformly with `--uniform` — through
`WasmContainer.process`. A message to a deployment without an instance is *cold*: it
instantiates one, evicting the least recently used idle instance elsewhere once the budget is
spent. Prints the RSS after creating the deployments and after the load, and the latency of
cold and warm messages (p50/p99), and writes benchmarks/results/on_demand_density[-uniform].json.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import itertools
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import wasmtime  # noqa: E402

from conftest import ECHO_WAT  # noqa: E402
from iotwasm.container import InstanceBudget, Scaling, WasmContainer  # noqa: E402
from iotwasm.engine import Limits, Runtime  # noqa: E402
from iotwasm.message import Message  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def quantiles(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    s = sorted(ms)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {"p50_ms": statistics.median(s), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": s[-1], "n": len(s)}


def zipf_sampler(n: int, s: float, rng: random.Random):
    weights = [1 / (k ** s) for k in range(1, n + 1)]
    cum = list(itertools.accumulate(weights))
    total = cum[-1]
    order = list(range(n))
    rng.shuffle(order)   # which deployments are popular is arbitrary
    return lambda: order[bisect.bisect_left(cum, rng.random() * total)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deployments", type=int, default=100_000)
    ap.add_argument("--hot", type=int, default=1_000)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--uniform", action="store_true")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rt = Runtime()
    wasm = bytes(wasmtime.wat2wasm(ECHO_WAT.replace('(memory (export "memory") 2)', '(memory (export "memory") 1)')))
    compiled = rt.load_bytes("echo", wasm, Limits())
    budget = InstanceBudget(max_instances=args.hot)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    containers = [WasmContainer(f"d{i}", compiled, runtime=rt, scaling=Scaling(0, 1), budget=budget).start()
                  for i in range(args.deployments)]
    create_s = time.perf_counter() - t0
    rss_created = rss_mb()
    rng = random.Random(42)
    pick = (lambda: rng.randrange(args.deployments)) if args.uniform else zipf_sampler(args.deployments, 1.1, rng)
    msg = [Message("t", b'{"value": 21.5}')]
    cold: list[float] = []
    warm: list[float] = []
    gc.collect()
    gc.disable()
    t0 = time.perf_counter()
    for _ in range(args.messages):
        c = containers[pick()]
        before = c.scaling_stats.scale_ups
        t = time.perf_counter_ns()
        r = c.process(msg)
        dt = (time.perf_counter_ns() - t) / 1e6
        assert r.outputs, r
        (cold if c.scaling_stats.scale_ups != before else warm).append(dt)
    load_s = time.perf_counter() - t0
    gc.enable()
    rss_after = rss_mb()
    evictions = budget.evictions
    res = {"started": started, "deployments": args.deployments, "hot": args.hot, "messages": args.messages,
           "load": "uniform" if args.uniform else "zipf 1.1", "create_s": create_s,
           "create_us_each": create_s / args.deployments * 1e6, "rss_start_mb": rss0,
           "rss_created_mb": rss_created, "rss_after_mb": rss_after,
           "kib_per_idle_deployment": (rss_created - rss0) * 1e6 / 1024 / args.deployments,
           "instances": budget.usage()[0], "evictions": evictions, "load_s": load_s,
           "cold": quantiles(cold), "warm": quantiles(warm)}
    print(f"{args.deployments:,} deployments (min 0, max 1), budget {args.hot:,} instances, {args.messages:,} messages "
          f"({res['load']}); {started}; {platform.machine()}, Python {platform.python_version()}")
    print(f"created in {create_s:.1f} s ({res['create_us_each']:.0f} µs each); RSS {rss0:.0f} → {rss_created:.0f} MB "
          f"({res['kib_per_idle_deployment']:.1f} KiB per idle deployment) → {rss_after:.0f} MB after the load")
    print(f"instances at the end: {res['instances']:,}; evictions: {evictions:,}; load {load_s:.1f} s")
    for k in ("cold", "warm"):
        q = res[k]
        if q["n"]:
            print(f"{k}: {q['n']:,} messages, p50 {q['p50_ms'] * 1000:.0f} µs, p90 {q['p90_ms'] * 1000:.0f} µs, "
                  f"p99 {q['p99_ms'] * 1000:.0f} µs, max {q['max_ms']:.2f} ms")
    out = ROOT / "benchmarks" / "results" / f"on_demand_density{'-uniform' if args.uniform else ''}.json"
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")
    for c in containers:
        c.stop()
    rt.close()


if __name__ == "__main__":
    main()
