"""Guest code never runs on the event loop: while modules spin until their time limit, the
node's API, its health probe, its other routes and its rules' status keep answering.

Nothing here measures time. Each check is about order: the probe's answer and the neighbour
route's output arrive while the spinning calls are provably still running (their dead letter,
their failed evaluation, do not exist yet), and the spinning calls do end, by their limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json

import httpx

from apinode import ECHO_WASM, ApiNode, wait_for
from conftest import TEST_MODULES

SPIN = TEST_MODULES / "log_then_spin.wat"
#: long enough that everything below happens many times over while the modules spin
LIMIT = "8s"

MANIFESTS = """
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: spin}}
spec:
  module: "{spin}"
  resources: {{memory: 16Mi, timeout: {limit}}}
  capabilities: {{host: [log], topics: {{publish: ["#"], subscribe: ["#"]}}}}
---
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: spin-fn}}
spec:
  module: "{spin}"
  resources: {{memory: 16Mi, timeout: {limit}}}
  capabilities: {{host: [log]}}
---
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  module: "{echo}"
  capabilities: {{topics: {{publish: ["#"], subscribe: ["#"]}}}}
---
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: slow}}
spec:
  source: {{http: {{path: /slow, topic: "slow/{{device}}"}}}}
  steps: [spin]
  sinks: [{{store: {{table: slow}}}}]
---
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: fast}}
spec:
  source: {{http: {{path: /fast, topic: "fast/{{device}}"}}}}
  steps: [echo]
  sinks: [{{store: {{table: fast}}}}]
---
apiVersion: iotwasm.io/v1
kind: Rule
metadata: {{name: spinning}}
spec:
  functions: [{{name: spin, deployment: spin-fn}}]
  sql: SELECT spin(v) AS s FROM "climate/{{d}}"
  actions: [{{store: {{table: spun}}}}]
"""


def test_health_api_neighbour_route_and_rule_status_answer_while_modules_spin(tmp_path):
    (tmp_path / "echo.wasm").write_bytes(ECHO_WASM)
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "all.yaml").write_text(MANIFESTS.format(spin=SPIN, limit=LIMIT, echo=tmp_path / "echo.wasm"))
    # an http request is answered once its route is through with it: here, after the spin
    n = ApiNode(tmp_path, manifests=mdir, node_config={"http_ack_timeout_s": 120}).start()
    slow_answer = concurrent.futures.ThreadPoolExecutor(1)
    try:
        node = n.node
        wait_for(lambda: {"slow", "fast"} <= set(node.routes) and "spinning" in node.rules.manifests,
                 what="routes and rule running")
        slow = node.routes["slow"].runner
        spinners = lambda: [ln for ln in node.guest_logs.lines() if ln.text == "spinning"]  # noqa: E731

        # a route's batch and a rule's function, both spinning until their limit
        answered = slow_answer.submit(n.ingest, "/slow", "d1", [b"spin"], timeout=120)
        asyncio.run_coroutine_threadsafe(
            node.bus.publish("climate/d1", json.dumps({"v": 1}).encode()), n.loop).result(30)
        wait_for(lambda: {ln.deployment for ln in spinners()} == {"spin", "spin-fn"},
                 what="both modules spinning")

        with httpx.Client(base_url=n.url, timeout=60) as c:
            assert c.get("/healthz").json() == {"status": "ok"}
        assert slow.stats.dead_letters == 0, "the probe answered only after the spinning batch ended"

        rule = n.admin.get("/v1/rules/spinning").json()
        assert rule["functions"]["spin"] == {"calls": 0, "errors": 0, "last_error": None}, \
            "the rule's status answered only after its spinning function call ended"

        n.ingest("/fast", "d1", [b"neighbour"])
        wait_for(lambda: node.routes["fast"].runner.stats.delivered == 1, what="the neighbour route's output")
        assert [r["payload"] for r in node.store.query("fast")] == ["neighbour"]
        assert slow.stats.dead_letters == 0, "the neighbour route went through only after the spin ended"

        # … and the spinning calls end, by their limit
        wait_for(lambda: slow.stats.dead_letters == 1, timeout=60, what="the spinning batch's dead letter")
        # counted when the route dead-letters it; stored in node.db by the writer just after
        wait_for(lambda: [d["kind"] for d in node.state.dead_letters("slow")] == ["timeout"], timeout=30,
                 what="the stored dead letter, kind timeout")
        answered.result(120)   # dead-lettered is through: the request got its 202
        wait_for(lambda: n.admin.get("/v1/rules/spinning").json()["functions"]["spin"]["errors"] == 1,
                 timeout=60, what="the spinning function's failed evaluation")
        assert "timeout 8000ms exceeded" in n.admin.get("/v1/rules/spinning").json()["functions"]["spin"]["last_error"]
    finally:
        n.stop()
        slow_answer.shutdown(wait=False)
