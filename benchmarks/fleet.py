#!/usr/bin/env python3
"""Fleet placement and failover on one machine against one nats-server (JetStream).

    .venv/bin/python benchmarks/fleet.py               # 20 in-process nodes, 3 repeats
    .venv/bin/python benchmarks/fleet.py --nodes 50

Every node is a real Node with its FleetAgent (heartbeat 1 s) in this process; the controller
(dead-after 3 s, pass every 0.5 s) runs here too; nats-server is a private one started on a free
port. Measured:
  place   from writing a perNode fleet deployment (with a module already in the object store)
          to every node running it
  failover from a node's heartbeats stopping (agent stopped without leaving, as on SIGKILL) to
          the copy it held running on another node
Results go to benchmarks/results/fleet-<nodes>.json and a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import wasmtime  # noqa: E402

from brokers import NatsServer  # noqa: E402
from conftest import ECHO_WAT  # noqa: E402
from iotwasm.fleet import Controller, FleetAgent, FleetDeployment  # noqa: E402
from iotwasm.node import Node, NodeConfig  # noqa: E402


def fd(name: str, digest: str, placement: dict) -> FleetDeployment:
    return FleetDeployment.parse({"deployment": {"apiVersion": "iotwasm.io/v1", "kind": "Deployment",
                                                 "metadata": {"name": name},
                                                 "spec": {"module": digest, "resources": {"memory": "8Mi"}}},
                                  "placement": placement})


async def until(cond, timeout=60.0) -> float:
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)
    return time.perf_counter() - t0


async def run(url: str, root: Path, n: int, repeats: int) -> dict:
    ctl = Controller(url)
    await ctl.start()
    members = []
    for i in range(n):
        node = Node(NodeConfig(data_dir=root / f"n{i}", manifests=None, name=f"n{i}", sync_interval_s=0.5))
        task = asyncio.create_task(node.run())
        members.append((node, task))
    await until(lambda: all(nd.ready for nd, _ in members))
    agents = [FleetAgent(nd, url, labels={"rack": str(i % 4)}) for i, (nd, _) in enumerate(members)]
    for a in agents:
        a.start()
    digest = await ctl.store.put_module(wasmtime.wat2wasm(ECHO_WAT))
    place, failover = [], []
    try:
        for r in range(repeats):
            name = f"all-{r}"
            t0 = time.perf_counter()
            await ctl.store.put_deployment(fd(name, digest, {"perNode": True}), None)
            await until(lambda: all(name in nd.deployments for nd, _ in members))
            place.append(time.perf_counter() - t0)
        for r in range(repeats):
            name = f"one-{r}"
            await ctl.store.put_deployment(fd(name, digest, {"replicas": 1}), None)
            await until(lambda: any(name in nd.deployments for nd, _ in members))
            i = next(i for i, (nd, _) in enumerate(members) if name in nd.deployments)
            t0 = time.perf_counter()
            await agents[i].stop(leave=False)
            await until(lambda: any(name in nd.deployments for j, (nd, _) in enumerate(members) if j != i))
            failover.append(time.perf_counter() - t0)
    finally:
        for a in agents:
            await a.stop()
        for nd, task in members:
            nd.stop()
            await task
        await ctl.stop()
    return {"nodes": n, "place_s": place, "failover_s": failover}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        try:
            res = asyncio.run(run(server.url, Path(tmp), args.nodes, args.repeats))
        finally:
            server.stop()
    out = ROOT / "benchmarks" / "results" / f"fleet-{res['nodes']}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"| nodes | place on all, median (max) | failover, median (max) |\n|---|---|---|\n"
          f"| {res['nodes']} | {statistics.median(res['place_s']):.2f} s ({max(res['place_s']):.2f} s) | "
          f"{statistics.median(res['failover_s']):.2f} s ({max(res['failover_s']):.2f} s) |")


if __name__ == "__main__":
    main()
