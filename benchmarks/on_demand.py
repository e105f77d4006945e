#!/usr/bin/env python3
"""The first message after idling: from zero instances, with a pre-warmed spare, and warm.

    .venv/bin/python benchmarks/on_demand.py            # 300 repeats of each case, interleaved
    .venv/bin/python benchmarks/on_demand.py --quick    # 50

One container of `examples/modules/range_filter.wasm` (the echo module of tests/conftest.py
when it is not built), compiled once and cached, as a node runs it with `replicas: {min: 0,
max: 2}`. Each repeat times one message of 98 bytes through `WasmContainer.process`, from the
call until its result is back (the time a route's lane or an invocation waits on it), in
three states, taken in turn so they see the same machine:

- **from zero**: the container holds no instance (closed after its cool-down); the message
  instantiates one (scale from zero).
- **prewarmed**: `prewarm: 1` made a spare that has never run a batch; the message takes it.
- **warm** (the baseline): an instance that has just served a message.

It also times the same three through the node's synchronous invoke (`Node.invocations`: the
hand-off to the deployment's invocation thread and back to the event loop, topic grants
checked), since that is what `POST /v1/deployments/{name}/invoke` adds before HTTP. Prints
p50/p90/p99 and the ratio of each median to warm's; writes benchmarks/results/on_demand.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import ECHO_WAT  # noqa: E402
from iotwasm.container import Scaling, WasmContainer  # noqa: E402
from iotwasm.engine import Capabilities, Runtime  # noqa: E402
from iotwasm.message import Message  # noqa: E402

PAYLOAD = b'{"device":"dev-0042","sensor":"temperature","value":23.71,"unit":"C","ts":1700000000123,"seq":7}'
RANGE = ROOT / "examples" / "modules" / "range_filter.wasm"
CASES = ("from zero", "prewarmed", "warm")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def module() -> tuple[object, Capabilities, str]:
    if RANGE.exists():
        caps = Capabilities.grant("config", config={"field": "value", "min": "10", "max": "30"})
        return RANGE, caps, "range_filter.wasm"
    return ECHO_WAT, Capabilities(), "echo (tests/conftest.py; range_filter.wasm not built)"


def prepare(c: WasmContainer, clock: Clock, case: str) -> None:
    """Bring the container into the state the case measures (untimed; the collector is off
    inside the timed call, so what closing instances leaves for it is collected out here)."""
    if case == "warm":
        c.set_scaling(Scaling(0, 2, prewarm=0, cooldown_s=1))
        c.process([Message("t", PAYLOAD)])
        return
    c.set_scaling(Scaling(0, 2, prewarm=0, cooldown_s=1))
    clock.now += 10
    c.maintain()                       # idle past its cool-down: no instance left
    assert c.instances == 0
    if case == "prewarmed":
        c.set_scaling(Scaling(0, 2, prewarm=1, cooldown_s=1))
        c.maintain()                   # what the node's upkeep does once per sync interval
        assert c.instances == 1


def quantiles(ms: list[float]) -> dict:
    s = sorted(ms)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {"p50_ms": statistics.median(s), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": s[-1], "n": len(s)}


def bench_container(rt: Runtime, repeats: int) -> dict:
    src, caps, name = module()
    clock = Clock()
    c = WasmContainer("bench", src, runtime=rt, capabilities=caps, scaling=Scaling(0, 2, cooldown_s=1),
                      clock=clock).start()
    msg = [Message("sensors/dev-0042/t", PAYLOAD)]
    samples: dict[str, list[float]] = {k: [] for k in CASES}
    for _ in range(20):                # warm-up: caches, allocator, code paths
        for case in CASES:
            prepare(c, clock, case)
            c.process(msg)
    made = c.scaling_stats.scale_ups
    for _ in range(repeats):
        for case in CASES:
            prepare(c, clock, case)
            before = c.scaling_stats.scale_ups
            gc.disable()
            t0 = time.perf_counter_ns()
            r = c.process(msg)
            dt = (time.perf_counter_ns() - t0) / 1e6
            gc.enable()
            assert not r.dead_letters, r.dead_letters
            instantiated = c.scaling_stats.scale_ups - before
            assert instantiated == (1 if case == "from zero" else 0), (case, instantiated)
            samples[case].append(dt)
    c.stop()
    return {"module": name, "instantiated_from_zero": c.scaling_stats.scale_ups - made,
            **{k: quantiles(v) for k, v in samples.items()}}


async def bench_invoke(repeats: int) -> dict:
    """The same three states through the node's invoke path (thread hand-off included)."""
    from iotwasm.node import Node, NodeConfig

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src, _, _ = module()
        path = d / "m.wasm"
        if isinstance(src, Path):
            path.write_bytes(src.read_bytes())
        else:
            import wasmtime
            path.write_bytes(bytes(wasmtime.wat2wasm(src)))
        man = d / "manifests"
        man.mkdir()
        (man / "d.yaml").write_text(f"""apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: bench}}
spec:
  module: {path}
  replicas: {{min: 0, max: 2, cooldown: 1s}}
  config: {{field: value, min: "10", max: "30"}}
  capabilities: {{topics: {{publish: ["#"], subscribe: ["#"]}}}}
""")
        node = Node(NodeConfig(data_dir=d / "data", manifests=man, clock=clock, sync_interval_s=3600))
        await node.start()
        try:
            c = node.deployments["bench"].handle.current
            msg = [Message("sensors/dev-0042/t", PAYLOAD)]
            samples: dict[str, list[float]] = {k: [] for k in CASES}
            for i in range(20 + repeats):
                for case in CASES:
                    await asyncio.to_thread(prepare, c, clock, case)
                    gc.disable()
                    t0 = time.perf_counter_ns()
                    inv = await node.invocations.invoke("bench", msg)
                    dt = (time.perf_counter_ns() - t0) / 1e6
                    gc.enable()
                    assert not inv.dead_letters, inv.dead_letters
                    if i >= 20:
                        samples[case].append(dt)
        finally:
            node.stop()
            await node.shutdown()
    return {k: quantiles(v) for k, v in samples.items()}


def table(title: str, res: dict) -> str:
    warm = res["warm"]["p50_ms"]
    rows = [f"{title}", "", "| state | p50 | p90 | p99 | max | p50 vs warm |", "|---|---:|---:|---:|---:|---:|"]
    for case in CASES:
        q = res[case]
        rows.append(f"| {case} | {q['p50_ms'] * 1000:.1f} µs | {q['p90_ms'] * 1000:.1f} µs | "
                    f"{q['p99_ms'] * 1000:.1f} µs | {q['max_ms'] * 1000:.1f} µs | {q['p50_ms'] / warm:.2f}× |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeats = 50 if args.quick else 300
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rt = Runtime()
    try:
        container = bench_container(rt, repeats)
    finally:
        rt.close()
    invoked = asyncio.run(bench_invoke(repeats))
    print(f"module: {container['module']}; {repeats} repeats per state; {started}; "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}\n")
    print(table("container.process (one message, call to result)", container))
    print()
    print(table("node invoke (Node.invocations: hand-off to the invocation thread and back)", invoked))
    out = ROOT / "benchmarks" / "results" / ("on_demand-quick.json" if args.quick else "on_demand.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"started": started, "repeats": repeats, "container": container,
                               "invoke": invoked}, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
