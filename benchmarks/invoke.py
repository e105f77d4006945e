#!/usr/bin/env python3
"""Remote invocation over NATS on loopback: a caller → nats-server → a node's deployment → back.

    .venv/bin/python benchmarks/invoke.py            # 3,000 calls after 300 to warm up

A private nats-server on a free port; two nodes, each running the echo module of
tests/conftest.py as deployment `echo` with an InvokeServer, so every call goes through the
queue group to one of them; the caller awaits each reply before the next call (latency, not
throughput). Baseline, side by side in the same run: a plain-Python NATS responder in the
same queue-group setup that echoes the payload without any sandbox. Prints p50/p90/p99/max
and writes benchmarks/results/invoke.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import nats  # noqa: E402

from brokers import NatsServer  # noqa: E402
from conftest import ECHO_WAT  # noqa: E402
from iotwasm.fleet.invoke import InvokeServer, invoke  # noqa: E402
from iotwasm.node import Node, NodeConfig  # noqa: E402

DEPLOYMENT = """
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  module: {module}
  capabilities:
    topics: {{subscribe: ["invoke/#"], publish: ["invoke/#"]}}
"""
PAYLOAD = b'{"device":"dev-0042","sensor":"temperature","value":23.71,"unit":"C","seq":7}'


def quantiles(samples_ms: list[float]) -> dict:
    s = sorted(samples_ms)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {"n": len(s), "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": s[-1],
            "mean_ms": statistics.fmean(s)}


async def measure(call, n: int, warm: int) -> dict:
    for _ in range(warm):
        await call()
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await call()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return quantiles(out)


async def main(n: int, warm: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = NatsServer(tmp / "nats")
        server.start()
        nodes, tasks, conns, invokers = [], [], [], []
        try:
            (tmp / "echo.wat").write_text(ECHO_WAT)
            mdir = tmp / "m"
            mdir.mkdir()
            (mdir / "echo.yaml").write_text(DEPLOYMENT.format(module=tmp / "echo.wat"))
            for name in ("edge-a", "edge-b"):
                node = Node(NodeConfig(data_dir=tmp / name, manifests=mdir, name=name))
                tasks.append(asyncio.create_task(node.run()))
                while not (node.ready and "echo" in node.deployments):
                    await asyncio.sleep(0.05)
                nc = await nats.connect(server.url)
                inv = InvokeServer(node, nc)
                await inv.start()
                nodes.append(node)
                conns.append(nc)
                invokers.append(inv)
            caller = await nats.connect(server.url)
            conns.append(caller)

            # baseline: the same request/reply shape answered by plain Python, no sandbox
            plain = await nats.connect(server.url)
            conns.append(plain)

            async def echo(msg):
                await msg.respond(json.dumps({"node": "plain", "outputs": [
                    {"topic": "invoke/plain", "payload": msg.data.decode()}], "dead_letters": []}).encode())

            await plain.subscribe("iotwasm.invoke.plain", queue="iotwasm.invoke.plain", cb=echo)

            async def via_node():
                r = await invoke(caller, "echo", PAYLOAD)
                assert r.outputs[0][1] == PAYLOAD

            async def via_plain():
                r = await invoke(caller, "plain", PAYLOAD)
                assert r.outputs[0][1] == PAYLOAD

            results = {}
            for round_ in range(2):  # interleaved: each side twice
                for key, call in (("iotwasm", via_node), ("plain Python responder", via_plain)):
                    r = await measure(call, n // 2, warm if round_ == 0 else 0)
                    results.setdefault(key, []).append(r)
            merged = {k: {q: statistics.fmean(x[q] for x in v) if q != "max_ms" else max(x[q] for x in v)
                          for q in ("p50_ms", "p90_ms", "p99_ms", "max_ms")} for k, v in results.items()}
            merged["answered_by"] = {inv.node.config.name: inv.answered for inv in invokers}
            return merged
        finally:
            for inv in invokers:
                await inv.stop()
            for node in nodes:
                node.stop()
            for t in tasks:
                await asyncio.wait_for(t, 15)
            for c in conns:
                await c.close()
            server.kill()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--warm", type=int, default=300)
    args = ap.parse_args()
    started = time.time()
    res = asyncio.run(main(args.calls, args.warm))
    res["machine"] = {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                      "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))}
    print("| caller → nats-server → | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|--:|--:|--:|--:|")
    for k in ("iotwasm", "plain Python responder"):
        r = res[k]
        print(f"| {k} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['max_ms']:.2f} |")
    print(f"answered by: {res['answered_by']}; target p99 ≤ 3 ms: "
          f"{'met' if res['iotwasm']['p99_ms'] <= 3 else 'NOT met'}")
    out = ROOT / "benchmarks" / "results" / "invoke.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"results: {out.relative_to(ROOT)}")
