"""One node of three loses its link to NATS while the fleet carries on: real `iotwasm up --fleet`
processes, an `iotwasm controller` process, and a TCP proxy (tests/tcpproxy.py) between the cut
node and nats-server. The cut node keeps turning MQTT messages into converted ones through its
fleet-assigned deployment; the controller rebinds its copy elsewhere; when the link returns the
node heartbeats again and runs exactly what the fleet then assigns to it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import wasmtime

from brokers import free_port, stop_processes
from conftest import ECHO_WAT
from iotwasm.fleet import FleetDeployment, FleetStore
from iotwasm.messaging import open_bus
from iotwasm.messaging.errors import MessagingError
from tcpproxy import TcpProxy
from fleets import fleet_deployment, wait_for

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "iotwasm.cli.main"]

ROUTE = """apiVersion: iotwasm.io/v1
kind: Route
metadata: {name: convert-temperatures}
spec:
  source: {mqtt: {topic: "in/{device}", qos: 1}}
  steps: [conv]
  sinks:
    - mqtt: {topic: "out/{device}", qos: 1}
"""


def test_one_node_cut_from_nats_keeps_processing_and_resyncs(nats_server, mosquitto, tmp_path):  # noqa: F811
    proxy = TcpProxy(nats_server.host, nats_server.port).start()
    mdir = tmp_path / "p3-manifests"
    mdir.mkdir()
    (mdir / "route.yaml").write_text(ROUTE)
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, *args: str) -> None:
        log = open(tmp_path / f"{name}.log", "wb")
        procs[name] = subprocess.Popen([*CLI, *args], stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "COLUMNS": "200"})

    def up(name: str, url: str, *args: str) -> None:
        start(name, "up", "--fleet", url, "--name", name, "--data", str(tmp_path / name), *args)

    async def main():
        start("controller", "controller", "--fleet", nats_server.url)
        # p3 reaches NATS only through the proxy; it runs a local route over a fleet deployment
        up("p3", f"nats://{proxy.address}", str(mdir), "--broker", mosquitto.url, "--label", "zone=z",
           "--api", f"127.0.0.1:{api_port}", "--http", f"127.0.0.1:{free_port()}")
        store = await FleetStore.connect(nats_server.url)
        bus = open_bus(mosquitto.url)
        await bus.connect(timeout=10)
        outputs: list[dict] = []

        async def on_output(msg):
            outputs.append({"topic": msg.topic, **json.loads(msg.payload)})

        await bus.subscribe("out/#", on_output, qos=1)

        async def publish(topic: str, doc: dict) -> None:
            while True:   # a device that retries until the broker acknowledges
                try:
                    await bus.publish(topic, json.dumps(doc).encode(), qos=1, timeout=2)
                    return
                except MessagingError:
                    await asyncio.sleep(0.1)

        async def running() -> dict[str, set[str]]:
            return {n: set(info.running) for n, (info, _) in (await store.nodes()).items()}

        async def converted(seqs: range) -> None:
            for i in seqs:
                await publish(f"in/d{i % 3}", {"seq": i, "value": 20 + i, "unit": "C"})
            await wait_for(lambda: {o["seq"] for o in outputs if "seq" in o} >= set(seqs), 60,
                           f"messages {seqs.start}..{seqs.stop - 1} converted")
            for o in outputs:
                if o.get("seq") in seqs:
                    assert o["unit"] == "F" and abs(o["value"] - ((20 + o["seq"]) * 9 / 5 + 32)) < 1e-6, o
                    assert o["topic"] == f"out/d{o['seq'] % 3}"

        try:
            conv = await store.put_module((ROOT / "examples" / "modules" / "unit_convert.wasm").read_bytes())
            echo = await store.put_module(wasmtime.wat2wasm(ECHO_WAT))
            await store.put_deployment(FleetDeployment.parse({
                "deployment": {"apiVersion": "iotwasm.io/v1", "kind": "Deployment", "metadata": {"name": "conv"},
                               "spec": {"module": conv, "config": {"to": "F"}, "resources": {"memory": "16Mi"},
                                        "capabilities": {"topics": {"subscribe": ["in/#"], "publish": ["in/#"]}}}},
                "placement": {"perNode": True}}), None)
            await store.put_deployment(fleet_deployment("solo", echo, {"nodeSelector": {"zone": "z"}}), None)
            await wait_for(lambda: _on(running, "p3", {"conv", "solo"}), 60, "p3 running conv and solo")
            # the others join later: solo stays where it runs (binds are sticky)
            up("p1", nats_server.url, "--no-api")
            up("p2", nats_server.url, "--no-api", "--label", "zone=z")

            async def all_placed():
                now = await running()
                return (set(now) == {"p1", "p2", "p3"} and all("conv" in v for v in now.values())
                        and now["p3"] == {"conv", "solo"} and "solo" not in now["p2"])
            await wait_for(all_placed, 90, "conv on three nodes, solo on p3")

            # the route on p3 works: probe until its subscription is in place, then a batch
            async def probed():
                await publish("in/probe", {"value": 0, "unit": "C"})
                await asyncio.sleep(0.5)
                return any(o["topic"] == "out/probe" for o in outputs)
            await wait_for(probed, 60, "the route on p3 answering")
            await converted(range(0, 10))
            token = (tmp_path / "p3" / "admin.token").read_text().strip()
            p3_api = httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            r = await p3_api.get("/v1/fleet")
            assert r.status_code == 200 and r.json()["nodes"] == 3, r.text

            # cut p3's link, and only p3's: it is dead to the fleet, its copy of solo moves to p2
            proxy.cut()

            async def p3_gone():
                now = await running()
                return "p3" not in now and "solo" in now.get("p2", set())
            await wait_for(p3_gone, 60, "p3 aged out and solo rebound to p2")
            assert (await store.assignment("p3"))[0]["deployments"] == {}   # the controller emptied it
            # p3 keeps processing while cut, with the deployments it last had
            await converted(range(10, 30))
            r = await p3_api.get("/v1/fleet")
            assert r.status_code == 503 and "the link is down" in r.json()["detail"], r.text
            local = {d["name"]: d["state"] for d in (await p3_api.get("/v1/deployments")).json()}
            assert local == {"conv": "running", "solo": "running"}
            # the others keep working and the fleet does not list p3
            listed = subprocess.run([*CLI, "nodes", "--fleet", nats_server.url, "-o", "json"],
                                    capture_output=True, text=True, timeout=60)
            assert listed.returncode == 0, listed.stderr
            rows = {r["id"]: r for r in json.loads(listed.stdout)}
            assert set(rows) == {"p1", "p2"} and "solo" in rows["p2"]["running"]

            # the link returns: p3 heartbeats again and runs exactly what the fleet assigns it now
            proxy.restore()

            async def resynced():
                rows = {r["id"]: r for r in _nodes_json(nats_server.url)}
                p3 = rows.get("p3")
                if p3 is None or p3["running"] != p3["assigned"] or not p3["assigned"]:
                    return None
                assignment, revision = await store.assignment("p3")
                if p3["assignment_revision"] == revision and sorted(assignment["deployments"]) == p3["running"]:
                    return rows
            rows = await wait_for(resynced, 90, "p3 resynced with its assignment")
            assert rows["p3"]["running"] == ["conv"]        # solo stays on p2, where it was rebound
            assert "solo" in rows["p2"]["running"] and "solo" not in rows["p1"]["running"]
            await wait_for(lambda: _ok(p3_api), 30, "p3's fleet views back")
            # the route went down with conv when the emptied assignment was applied, and came back
            # with it: it converts again
            outputs.clear()
            await wait_for(probed, 60, "the route on p3 answering after the resync")
            await converted(range(30, 40))
            await p3_api.aclose()
        finally:
            await bus.close()
            await store.close()

    try:
        asyncio.run(main())
    finally:
        proxy.close()
        stop_processes(procs.values())


async def _on(running, node: str, names: set[str]) -> bool:
    return (await running()).get(node) == names


async def _ok(client: httpx.AsyncClient) -> bool:
    return (await client.get("/v1/fleet")).status_code == 200


def _nodes_json(url: str) -> list[dict]:
    done = subprocess.run([*CLI, "nodes", "--fleet", url, "-o", "json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
