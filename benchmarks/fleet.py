#!/usr/bin/env python3
"""Fleet placement and failover on one machine against one nats-server (JetStream).

    .venv/bin/python benchmarks/fleet.py                            # 20 in-process nodes, 3 repeats
    .venv/bin/python benchmarks/fleet.py --nodes 100 --procs 4      # 100 nodes in 4 worker processes

Every node is a real Node (its own data directory and SQLite state) with its FleetAgent
(heartbeat 1 s); the controller (dead-after 3 s, liveness checked every 0.25 s) runs in this
process; nats-server is a private one started on a free port. With `--procs N` the nodes are
spread over N worker processes, as nodes are separate processes (or machines) in a real fleet:
a hundred nodes' wasmtime work and SQLite calls in one interpreter contend for one GIL and one
event loop, which measures the benchmark's co-location rather than the fleet. The node's own
manifest-sync poll is every 5 s here (the agent triggers a sync itself when it applies an
assignment). Measured:
  place   from writing a perNode fleet deployment (with a module already in the object store)
          to every node running it (in-process: the Node objects; --procs: every node's
          heartbeat, as watched by the controller, lists the deployment as running)
  failover from a node's heartbeats stopping (agent stopped without leaving, as on SIGKILL) to
          the copy it held running on another node
Results go to benchmarks/results/fleet-<nodes>[-p<procs>].json and a markdown table to stdout.
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
        node = Node(NodeConfig(data_dir=root / f"n{i}", manifests=None, name=f"n{i}", sync_interval_s=5.0))
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


# -- nodes in several processes --------------------------------------------------------------
async def serve_nodes(url: str, root: Path, ids: list[int]) -> None:
    """A worker process: run the nodes `ids` with their agents until told to exit; an agent is
    stopped without leaving (as on SIGKILL) on a message to bench.kill.<node id>."""
    import nats
    members, agents = {}, {}
    for i in ids:
        node = Node(NodeConfig(data_dir=root / f"n{i}", manifests=None, name=f"n{i}", sync_interval_s=5.0))
        members[f"n{i}"] = (node, asyncio.create_task(node.run()))
    await until(lambda: all(nd.ready for nd, _ in members.values()))
    for i in ids:
        agents[f"n{i}"] = FleetAgent(members[f"n{i}"][0], url, labels={"rack": str(i % 4)})
        agents[f"n{i}"].start()
    nc = await nats.connect(url)
    done = asyncio.Event()

    async def on_kill(msg):
        await agents[msg.subject.split(".")[-1]].stop(leave=False)
        await msg.respond(b"ok")

    async def on_exit(msg):
        done.set()

    for node_id in agents:
        await nc.subscribe(f"bench.kill.{node_id}", cb=on_kill)
    await nc.subscribe("bench.exit", cb=on_exit)
    await nc.flush()
    print("ready", flush=True)
    await done.wait()
    for a in agents.values():
        await a.stop()
    for nd, task in members.values():
        nd.stop()
        await task
    await nc.close()


async def run_procs(url: str, root: Path, n: int, repeats: int, procs: int) -> dict:
    """Nodes spread over `procs` worker processes; progress is read from the heartbeats the
    controller watches (each node reports what it runs), so nothing is shared but NATS."""
    import subprocess
    workers = []
    for p in range(procs):
        ids = ",".join(str(i) for i in range(p, n, procs))
        workers.append(subprocess.Popen([sys.executable, __file__, "--worker", url, str(root), ids],
                                        stdout=subprocess.PIPE, text=True))
    for w in workers:
        assert w.stdout.readline().strip() == "ready"
    ctl = Controller(url)
    await ctl.start()
    nodes = ctl._nodes                      # node id → latest heartbeat, kept by the watcher
    await until(lambda: len(ctl.live()) == n)
    digest = await ctl.store.put_module(wasmtime.wat2wasm(ECHO_WAT))
    place, failover = [], []
    try:
        for r in range(repeats):
            name = f"all-{r}"
            t0 = time.perf_counter()
            await ctl.store.put_deployment(fd(name, digest, {"perNode": True}), None)
            await until(lambda: sum(name in i.running for i in nodes.values()) == n)
            place.append(time.perf_counter() - t0)
        for r in range(repeats):
            name = f"one-{r}"
            await ctl.store.put_deployment(fd(name, digest, {"replicas": 1}), None)
            await until(lambda: any(name in i.running for i in nodes.values()))
            victim = next(k for k, i in nodes.items() if name in i.running)
            t0 = time.perf_counter()
            await ctl.store.nc.request(f"bench.kill.{victim}", b"", timeout=10)
            await until(lambda: any(name in i.running for k, i in nodes.items() if k != victim))
            failover.append(time.perf_counter() - t0)
    finally:
        await ctl.store.nc.publish("bench.exit", b"")
        await ctl.store.nc.flush()
        await ctl.stop()
        for w in workers:
            w.wait(60)
    return {"nodes": n, "procs": procs, "place_s": place, "failover_s": failover}


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        url, root, ids = sys.argv[2:5]
        asyncio.run(serve_nodes(url, Path(root), [int(i) for i in ids.split(",")]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--procs", type=int, default=1,
                    help="worker processes the nodes are spread over (1: all in this process)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        try:
            if args.procs > 1:
                res = asyncio.run(run_procs(server.url, Path(tmp), args.nodes, args.repeats, args.procs))
            else:
                res = asyncio.run(run(server.url, Path(tmp), args.nodes, args.repeats))
        finally:
            server.stop()
    out = ROOT / "benchmarks" / "results" / (f"fleet-{res['nodes']}" + (f"-p{args.procs}" if args.procs > 1 else "") + ".json")
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"| nodes | place on all, median (max) | failover, median (max) |\n|---|---|---|\n"
          f"| {res['nodes']} | {statistics.median(res['place_s']):.2f} s ({max(res['place_s']):.2f} s) | "
          f"{statistics.median(res['failover_s']):.2f} s ({max(res['failover_s']):.2f} s) |")


if __name__ == "__main__":
    main()
