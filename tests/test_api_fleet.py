"""The fleet views of the management API against a real nats-server: a node in a fleet serves
its fleet's nodes and deployments to operator tokens, a node without a fleet answers 404, and a
fleet link that is down or hung answers 503 instead of hanging."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import httpx
import pytest
import wasmtime

from apinode import ECHO_WASM, ApiNode, wait_for

from conftest import ECHO_WAT
from iotwasm.fleet import Controller, FleetAgent, FleetDeployment
from iotwasm.node import Node, NodeConfig
from fleets import fleet_deployment

CLI = [sys.executable, "-m", "iotwasm.cli.main"]
VIEWS = ("/v1/fleet", "/v1/fleet/nodes", "/v1/fleet/deployments", "/v1/fleet/rollouts")


class LoopThread:
    """An event loop in a thread for the fleet parts that run beside the API node."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_the_rest():
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in left:
                t.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_fleet_views_show_the_fleet_to_operators_and_answer_503_when_the_link_is_down(nats_server, tmp_path):  # noqa: F811
    bg = LoopThread()
    api = ApiNode(tmp_path / "api", fleet={"url": nats_server.url, "labels": {"site": "a"}, "heartbeat_s": 0.3},
                  name="api-node").start()
    node = Node(NodeConfig(data_dir=tmp_path / "n2", manifests=None, name="n2", sync_interval_s=0.2))
    agent = FleetAgent(node, nats_server.url, labels={"site": "b"}, heartbeat_s=0.3)
    ctl = Controller(nats_server.url, dead_after_s=1.5, interval_s=0.2)

    async def start():
        await ctl.start()
        task = asyncio.create_task(node.run())
        while not node.ready:
            await asyncio.sleep(0.05)
        agent.start()
        return task

    node_task = bg.run(start())
    try:
        digest = bg.run(ctl.store.put_module(ECHO_WASM))
        for name, placement in (("everywhere", {"perNode": True}), ("b-only", {"nodeSelector": {"site": "b"}}),
                                ("mars", {"nodeSelector": {"site": "mars"}})):
            bg.run(ctl.store.put_deployment(fleet_deployment(name, digest, placement), None))
        viewer_token = api.token("viewer", name="fleet-viewer")
        viewer = api.client(viewer_token)

        def settled():
            r = viewer.get("/v1/fleet/nodes")
            rows = {n["id"]: n for n in r.json()} if r.status_code == 200 else {}
            if set(rows) == {"api-node", "n2"} and rows["api-node"]["running"] == ["everywhere"] \
                    and rows["n2"]["running"] == ["b-only", "everywhere"]:
                return rows
        rows = wait_for(settled, 40, "both nodes running their fleet deployments")
        assert rows["n2"]["labels"] == {"site": "b"} and rows["api-node"]["assigned"] == ["everywhere"]
        assert rows["n2"]["assigned"] == ["b-only", "everywhere"] and rows["n2"]["problems"] == []
        assert rows["n2"]["health"] == "ok" and rows["n2"]["deployments"]["b-only"]["state"] == "running"
        assert rows["n2"]["deployments"]["b-only"]["digest"] == digest

        summary = viewer.get("/v1/fleet").json()
        assert summary["url"] == nats_server.url and summary["connected"] is True
        assert summary["node"] == "api-node" and summary["nodes"] == 2 and summary["deployments"] == 3
        assert summary["copies"] == {"wanted": 4, "assigned": 3, "running": 3}
        why = ("0 of 1 copies assigned (node api-node: nodeSelector wants site=mars, node has site=a; "
               "node n2: nodeSelector wants site=mars, node has site=b)")
        assert summary["problems"] == [f"deployment mars: {why}"]

        deps = {d["name"]: d for d in viewer.get("/v1/fleet/deployments").json()}
        assert set(deps) == {"everywhere", "b-only", "mars"}
        assert deps["b-only"]["assigned"] == ["n2"] and deps["b-only"]["running"] == ["n2"]
        assert deps["b-only"]["placement"]["nodeSelector"] == {"site": "b"} and deps["b-only"]["revision"] > 0
        assert deps["everywhere"]["placement"]["perNode"] is True and deps["everywhere"]["wanted"] == 2
        assert deps["everywhere"]["running"] == ["api-node", "n2"] and deps["everywhere"]["module"] == digest
        assert deps["mars"]["assigned"] == [] and deps["mars"]["problems"] == [why]

        # the same token and role rules as every other route; the fleet is not a tenant's to see
        api.admin.put("/v1/tenants/acme", json={"topic_prefix": "acme/"})
        tenant = api.client(api.token("admin", tenant="acme", name="acme-admin"))
        for path in VIEWS:
            r = httpx.get(api.url + path, timeout=10)
            assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
            r = tenant.get(path)
            assert r.status_code == 403 and "tokens without tenant" in r.json()["detail"], r.text

        # the CLI asks the node of its context
        env = {**os.environ, "IOTWASM_URL": api.url, "IOTWASM_TOKEN": viewer_token, "COLUMNS": "200",
               "IOTWASM_CONFIG": str(tmp_path / "none.yaml")}
        listed = subprocess.run([*CLI, "nodes", "-o", "json"], capture_output=True, text=True, env=env, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert {r["id"] for r in json.loads(listed.stdout)} == {"api-node", "n2"}
        status = subprocess.run([*CLI, "fleet", "status"], capture_output=True, text=True, env=env, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "2 live node(s)" in status.stdout and "b-only" in status.stdout
        assert f"mars: {why}" in status.stderr
        status = subprocess.run([*CLI, "fleet", "status", "-o", "json"], capture_output=True, text=True, env=env,
                                timeout=60)
        doc = json.loads(status.stdout)
        assert doc["summary"]["nodes"] == 2 and [d["name"] for d in doc["deployments"]] == ["b-only", "everywhere", "mars"]

        # rollouts: a new version of "everywhere" with a long gate waits at its canary; operators steer it
        other = bytes(wasmtime.wat2wasm(ECHO_WAT.replace("(i32.const 1024)", "(i32.const 4096)", 1)))
        other_digest = bg.run(ctl.store.put_module(other))
        _, rev = bg.run(ctl.store.deployment("everywhere"))
        doc = json.loads(fleet_deployment("everywhere", other_digest, {"perNode": True}).to_json())
        doc["rollout"] = {"canary": 1, "gate": {"observe": "10m"}, "stageTimeout": "10m"}
        bg.run(ctl.store.put_deployment(FleetDeployment.parse(doc), rev))

        def canary():
            r = viewer.get("/v1/fleet/rollouts")
            return next((x for x in r.json() if x["deployment"] == "everywhere" and x["updated"]), None) \
                if r.status_code == 200 else None
        rec = wait_for(canary, 40, "the canary of everywhere")
        assert rec["state"] == "progressing" and len(rec["updated"]) == 1 and rec["target"]["spec"]["module"] == other_digest
        row = {d["name"]: d for d in viewer.get("/v1/fleet/deployments").json()}["everywhere"]
        assert row["rollout"]["state"] == "progressing" and row["rollout"]["stage"] == "canary"
        assert viewer.get("/v1/fleet").json()["rollouts"] == {"progressing": 1, "paused": 0}
        assert viewer.post("/v1/fleet/rollouts/everywhere/pause").status_code == 403   # operators steer
        op = api.client(api.token("operator", name="fleet-operator"))
        r = op.post("/v1/fleet/rollouts/everywhere/pause")
        assert r.status_code == 200 and r.json()["state"] == "paused", r.text
        r = op.post("/v1/fleet/rollouts/everywhere/pause")
        assert r.status_code == 409 and "only a progressing one can be paused" in r.json()["detail"]
        assert op.post("/v1/fleet/rollouts/nothing/abort").status_code == 404
        assert op.post("/v1/fleet/rollouts/everywhere/explode").status_code == 422
        r = op.post("/v1/fleet/rollouts/everywhere/abort")
        assert r.status_code == 200 and r.json()["state"] == "aborted" and "fleet-operator" in r.json()["reason"]
        assert [e["action"] for e in api.admin.get("/v1/audit", params={"action": "fleet.rollout.abort"}).json()] \
            == ["fleet.rollout.abort"]
        # every node is back on (or still on) the old module
        wait_for(lambda: all(n.deployments["everywhere"].handle.current.stats().digest == digest
                             for n in (api.node, node)), 30, "the old version everywhere")

        # a hung server (connections open, nothing answered): 503 after the API's bound
        nats_server.pause()
        try:
            for path in VIEWS:
                r = viewer.get(path, timeout=20)
                assert r.status_code == 503, r.text
                assert r.headers["content-type"] == "application/problem+json"
                assert "no answer within" in r.json()["detail"] and r.json()["node"] == "api-node"
        finally:
            nats_server.resume()
        wait_for(lambda: viewer.get("/v1/fleet").status_code == 200, 30, "fleet views back")

        # the link is down: 503 at once, saying so; the node keeps its work
        nats_server.stop()
        wait_for(lambda: not api.agent.connected, 30, "link down")
        for path in VIEWS:
            r = viewer.get(path, timeout=20)
            assert r.status_code == 503, r.text
            body = r.json()
            assert "the link is down" in body["detail"] and body["connected"] is False
            assert body["url"] == nats_server.url
        assert "everywhere" in api.node.deployments
        down = subprocess.run([*CLI, "fleet", "status"], capture_output=True, text=True, env=env, timeout=60)
        assert down.returncode == 1 and "503" in down.stderr and "link is down" in down.stderr
    finally:
        async def stop():
            await asyncio.wait_for(agent.stop(), 10)
            node.stop()
            await asyncio.wait_for(node_task, 20)
            await asyncio.wait_for(ctl.stop(), 10)
        try:
            bg.run(stop())
        finally:
            bg.close()
            api.stop()


@pytest.fixture()
def lone(tmp_path):
    n = ApiNode(tmp_path).start()
    yield n
    n.stop()


def test_fleet_views_on_a_node_without_a_fleet_are_404(lone):
    viewer = lone.client(lone.token("viewer"))
    for path in VIEWS:
        r = viewer.get(path)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        assert "this node is not in a fleet" in r.json()["detail"]
