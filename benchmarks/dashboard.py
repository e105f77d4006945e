"""What the dashboard's samples cost a node: the greenhouse example running (8 deployments, 4
routes, 2 rules, ~200 frames/s), its sampler's ring filled to 600 samples, then

* the time one sample takes on the event loop (median and max of the last 100),
* the memory the full ring holds (tracemalloc, ring and latest sample),
* the size of what a page opened now receives first (the ``history`` event).

    .venv/bin/python benchmarks/dashboard.py

The samples are taken back to back with a made-up clock 1 s apart (the rates are nonsense
then; their cost is not), so the run takes seconds, not ten minutes."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from iotwasm.api.live import History
from iotwasm.node import Node, NodeConfig


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        node = Node(NodeConfig(data_dir=Path(d), manifests=ROOT / "examples" / "greenhouse", name="bench"))
        task = asyncio.create_task(node.run())
        while not node.ready:
            await asyncio.sleep(0.05)
        await asyncio.sleep(3)   # traffic flowing, latency windows filled
        now = [0.0]
        h = History(node, keep=600, clock=lambda: now[0], wall=lambda: now[0])
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        took = []
        for _ in range(600):
            now[0] += 1.0
            t0 = time.perf_counter()
            h.sample()
            took.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0)   # the node's work goes on in between
        after = tracemalloc.take_snapshot()
        held = sum(s.size_diff for s in after.compare_to(before, "filename") if "live.py" in str(s.traceback))
        tracemalloc.stop()
        first = json.dumps({"samples": h.history(lambda ns: True)}, separators=(",", ":"))
        objects = len(node.routes) + len(node.deployments)
        print(f"objects sampled: {len(node.routes)} routes, {len(node.deployments)} deployments, "
              f"{len(node.rules.manifests) if node.rules else 0} rules")
        last = took[-100:]
        print(f"one sample: median {statistics.median(last):.2f} ms, max {max(last):.2f} ms")
        print(f"ring of {len(h.ring)} samples: {held / 1024:.0f} KiB held "
              f"({held / len(h.ring) / objects:.0f} bytes per object and sample)")
        print(f"history event for a new page: {len(first) / 1024:.0f} KiB of JSON")
        node.stop()
        await task


if __name__ == "__main__":
    asyncio.run(main())
