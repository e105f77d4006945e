"""The management API against a real node: manifests, deployments, modules, problems, events,
logs, metrics and health, over real HTTP."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from apinode import ECHO_WASM, ApiNode, apply, deployment, http_route, wait_for


@pytest.fixture()
def api(tmp_path):
    n = ApiNode(tmp_path).start()
    yield n
    n.stop()


def push(client: httpx.Client, wasm: bytes = ECHO_WASM, **params) -> dict:
    r = client.post("/v1/modules", content=wasm, params=params,
                    headers={"Content-Type": "application/wasm"})
    assert r.status_code == 201, r.text
    return r.json()


def test_admin_token_created_on_first_start_and_stored_hashed(api):
    assert api.server.admin_token_file.stat().st_mode & 0o777 == 0o600
    r = api.admin.get("/v1/node")
    assert r.status_code == 200 and r.json()["you"]["role"] == "admin"
    db = (api.data / "api.db").read_bytes()
    assert api.admin_token.encode() not in db


def test_deployment_lifecycle_through_the_api(api):
    c = api.admin
    mod = push(c, name="echo", version="1.0.0")
    assert mod["digest"].startswith("sha256:") and mod["tags"] == ["echo:1.0.0"]
    r = apply(c, deployment("echo", "echo:1.0.0") + "---\n" +
              http_route("r", "echo", "/in", "in/{device}", "out"))
    assert r.status_code == 200, r.text
    assert {(a["kind"], a["action"]) for a in r.json()["applied"]} == {("Deployment", "created"),
                                                                       ("Route", "created")}
    assert r.json()["problems"] == []
    d = c.get("/v1/deployments/echo").json()
    assert d["state"] == "running" and d["revision"] == 1 and d["source"] == "api"
    # its instances after the first get the first one's start-up copied (engine/snapshot.py)
    assert d["ready_guests"] == {"snapshot": True, "why_not": None, "bytes": 0}, d["ready_guests"]
    api.ingest("/in", "d1", [b"a", b"b", b"c"])
    wait_for(lambda: api.node.store.count("out") == 3, what="3 rows")

    r = c.post("/v1/deployments/echo/scale", json={"replicas": 3})
    assert r.status_code == 200 and r.json()["replicas"] == 3
    assert api.node.deployments["echo"].handle.current.replicas == 3

    r = c.post("/v1/deployments/echo/suspend")
    assert r.status_code == 200 and r.json()["state"] == "suspended"
    r = c.post("/v1/deployments/echo/suspend")
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert c.post("/v1/deployments/echo/resume").json()["state"] == "running"

    # a new revision (different memory limit), then roll back to the first one
    assert apply(c, deployment("echo", "echo:1.0.0", replicas=3, memory="32Mi")).status_code == 200
    wait_for(lambda: api.node.deployments["echo"].handle.revision == 2, what="revision 2")
    api.ingest("/in", "d1", [b"d"])  # passes the one-message health gate
    wait_for(lambda: [h["status"] for h in c.get("/v1/deployments/echo/history").json()] ==
             ["replaced", "serving"], what="revision 2 serving")
    r = c.post("/v1/deployments/echo/rollback", json={})
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == 3
    m = c.get("/v1/deployments/echo").json()["manifest"]
    assert m["spec"]["resources"]["memory"] == "16Mi"

    # the module is in use: refused; the deployment is a step: refused
    assert c.delete(f"/v1/modules/{mod['digest']}").status_code == 409
    assert c.delete("/v1/deployments/echo").status_code == 409
    assert c.delete("/v1/routes/r").status_code == 200
    assert c.delete("/v1/deployments/echo").status_code == 200
    assert c.get("/v1/deployments").json() == []
    assert c.delete(f"/v1/modules/{mod['digest']}").status_code == 200
    assert c.get("/v1/modules").json() == []


def test_api_manifests_survive_a_restart(tmp_path):
    n = ApiNode(tmp_path).start()
    try:
        push(n.admin, name="echo", version="1")
        assert apply(n.admin, deployment("echo", "echo:1")).status_code == 200
    finally:
        n.stop()
    n = ApiNode(tmp_path).start()
    try:
        assert n.server.admin_token_file is None  # not created twice
        assert "echo" in n.node.deployments
    finally:
        n.stop()


def test_problems_are_one_format_with_a_clear_detail(api):
    c = api.admin
    r = apply(c, "apiVersion: iotwasm.io/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 0}\n")
    assert r.status_code == 422
    p = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert set(p) >= {"type", "title", "status", "detail"} and p["status"] == 422
    assert "spec.module: Field required" in p["detail"]
    r = apply(c, deployment("x", "./x.wasm"))
    assert r.status_code == 422 and "is a file path" in r.json()["detail"]
    # a name that happens to be a file where the node looks is refused too, never read
    wasm = Path.cwd() / "api-test-module"
    wasm.write_bytes(ECHO_WASM)
    try:
        r = apply(c, deployment("x", "api-test-module"))
        assert r.status_code == 422 and "is a file path" in r.json()["detail"]
        r = apply(c, deployment("x", str(wasm)))
        assert r.status_code == 422 and "is a file path" in r.json()["detail"]
    finally:
        wasm.unlink()
    assert api.node.registry.list() == []
    r = apply(c, deployment("x", "nothere:1"))
    assert r.status_code == 422 and "nothere" in r.json()["detail"]
    r = c.get("/v1/deployments/nope")
    assert r.status_code == 404 and r.json()["detail"] == "no deployment 'nope'"
    r = c.post("/v1/deployments/nope/scale", json={"replicas": "many"})
    assert r.status_code == 422 and "replicas" in r.json()["detail"]
    r = c.post("/v1/modules", content=b"\x00asm\x01\x00\x00\x00\xff")
    assert r.status_code == 422 and "invalid wasm" in r.json()["detail"]
    r = c.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["status"] == 404


def test_file_manifests_cannot_be_changed_through_the_api(tmp_path):
    mdir = tmp_path / "m"
    mdir.mkdir()
    (tmp_path / "echo.wat").write_text(__import__("conftest").ECHO_WAT)
    (mdir / "a.yaml").write_text(deployment("filed", str(tmp_path / "echo.wat")))
    n = ApiNode(tmp_path, manifests=mdir).start()
    try:
        c = n.admin
        assert c.get("/v1/deployments/filed").json()["source"] == "file"
        push(c, name="echo", version="1")
        r = apply(c, deployment("filed", "echo:1"))
        assert r.status_code == 403 and "manifest files" in r.json()["detail"]
        assert c.post("/v1/deployments/filed/scale", json={"replicas": 2}).status_code == 403
        # but API and file manifests live side by side
        assert apply(c, deployment("other", "echo:1")).status_code == 200
        assert set(n.node.deployments) == {"filed", "other"}
        # broken files hold back every reconcile; an API apply says so instead of pretending
        (mdir / "a.yaml").write_text("kind: Nonsense\n")
        r = apply(c, deployment("third", "echo:1"))
        assert r.status_code == 200 and "not reconciled" in r.json()["problems"][0]
        assert "third" not in n.node.deployments
    finally:
        n.stop()


def test_events_stream_and_guest_logs(api):
    c = api.admin
    push(c, name="echo", version="1")
    got: list[dict] = []
    opened = threading.Event()

    def follow():
        with api.client(api.admin_token) as cc, cc.stream("GET", "/v1/events/stream") as r:
            opened.set()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    got.append(json.loads(line[6:]))
                    if any(e["kind"] == "created" for e in got):
                        return
    t = threading.Thread(target=follow, daemon=True)
    t.start()
    opened.wait(10)
    wait_for(lambda: len(api.node.state.listeners) >= 2, what="stream subscribed")
    assert apply(c, deployment("echo", "echo:1")).status_code == 200
    t.join(10)
    assert any(e["kind"] == "created" and e["object"] == "echo" for e in got)
    assert any(e["kind"] == "created" for e in c.get("/v1/events", params={"object": "echo"}).json())

    # guest logs: captured per deployment, rate limited, queryable
    for i in range(5):
        api.node.guest_logs.add("echo", 1, f"line {i}")
    lines = c.get("/v1/deployments/echo/logs").json()
    assert [ln["text"] for ln in lines] == [f"line {i}" for i in range(5)]
    since = lines[2]["seq"]
    assert [ln["text"] for ln in c.get("/v1/deployments/echo/logs", params={"since": since}).json()] == \
        ["line 3", "line 4"]


def test_metrics_move_when_messages_flow_and_readiness_means_something(api):
    c = api.admin
    push(c, name="echo", version="1")
    apply(c, deployment("echo", "echo:1") + "---\n" + http_route("r", "echo", "/in", "in/{device}", "out"))

    def value(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = c.get("/metrics").text
    assert value(before, "iotwasm_deployment_messages_total") == 0
    api.ingest("/in", "d1", [b"x"] * 7 + [b"!boom"])
    wait_for(lambda: api.node.store.count("out") == 7, what="7 rows")
    wait_for(lambda: value(c.get("/metrics").text, "iotwasm_route_dead_letters_total") == 1, what="dead letter")
    # a batch counts as delivered once every sink confirmed it, just after the rows are stored
    wait_for(lambda: value(c.get("/metrics").text, "iotwasm_route_delivered_total") == 7, what="7 delivered")
    after = c.get("/metrics").text
    assert value(after, "iotwasm_deployment_messages_total") == 8
    assert value(after, "iotwasm_deployment_outputs_total") == 7
    assert value(after, "iotwasm_route_delivered_total") == 7
    assert 'iotwasm_deployment_errors_total{deployment="echo",kind="trap",namespace="default"} 1.0' in after
    assert value(after, "iotwasm_deployment_instances") == 1
    # message latency histogram: every delivered message counted once, across scrapes
    assert value(after, "iotwasm_route_latency_ms_count") == 7
    assert 'iotwasm_route_latency_ms_bucket{le="+Inf",namespace="default",route="r"} 7.0' in after
    api.ingest("/in", "d2", [b"y"] * 3)
    wait_for(lambda: api.node.store.count("out") == 10, what="10 rows")
    wait_for(lambda: value(c.get("/metrics").text, "iotwasm_route_delivered_total") == 10, what="10 delivered")
    assert value(c.get("/metrics").text, "iotwasm_route_latency_ms_count") == 10
    # each message was posted after the one before was through: a batch each
    d = c.get("/v1/routes/r").json()
    assert (d["batches"], d["messages_per_batch"]) == (11, 1.0)

    assert httpx.get(api.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(api.url + "/readyz").status_code == 200
    # a route that cannot start (unknown step) makes the node not ready, with the reason for a
    # token that may see it, and a generic one for an anonymous probe
    apply(c, http_route("broken", "ghost", "/b", "b/{device}", "b"))
    r = httpx.get(api.url + "/readyz")
    assert r.status_code == 503 and r.json() == {"ready": False, "reasons": ["manifest problems"]}
    r = c.get("/readyz")
    assert r.status_code == 503 and "ghost" in r.json()["reasons"][0]


def test_alert_rule_fires_once_per_cooldown_to_a_topic_and_a_webhook(api):
    import http.server

    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        c = api.admin
        push(c, name="echo", version="1")
        # the alert topic is itself routed into the local store, so the test sees what was published
        apply(c, deployment("echo", "echo:1") + "---\n" + http_route("r", "echo", "/in", "in/{device}", "out")
              + "---\n" + """apiVersion: iotwasm.io/v1
kind: Route
metadata: {name: alerts}
spec:
  source: {bus: {topic: "alerts/#"}}
  sinks: [{store: {table: alerts}}]
""")
        r = c.put("/v1/alerts/errors", json={"metric": "route_error_rate", "target": "r", "above": 0.2,
                                             "cooldown_s": 3600, "topic": "alerts/errors",
                                             "webhook": f"http://127.0.0.1:{hook.server_port}/alert"})
        assert r.status_code == 200, r.text
        assert c.put("/v1/alerts/bad", json={"metric": "route_error_rate", "above": 1, "topic": "a"}).status_code == 422
        api.ingest("/in", "d1", [b"ok"] * 5)
        wait_for(lambda: api.node.store.count("out") == 5, what="healthy traffic")
        assert c.get("/v1/alerts").json()[0]["fired"] == 0  # 0 % errors: below the threshold
        api.ingest("/in", "d1", [b"!a", b"!b", b"ok"])
        wait_for(lambda: api.node.store.count("alerts") == 1, what="alert published")
        wait_for(lambda: len(received) == 1, what="webhook called")
        assert received[0]["alert"] == "errors" and received[0]["value"] > 0.2
        # still failing, but inside the cooldown: no second alert
        api.ingest("/in", "d1", [b"!c", b"!d"])
        wait_for(lambda: api.node.routes["r"].runner.stats.dead_letters == 4, what="more dead letters")
        n = api.server.ctx.alerts
        wait_for(lambda: n._prev.get(("errors", "dead")) == 4, what="an evaluation after them")
        assert api.node.store.count("alerts") == 1 and len(received) == 1
        assert c.get("/v1/alerts").json()[0]["fired"] == 1
        assert any(e["kind"] == "alert" for e in c.get("/v1/events").json())
        assert c.get("/v1/audit", params={"action": "alert.fired"}).json()
        assert c.delete("/v1/alerts/errors").status_code == 200
    finally:
        hook.shutdown()


def test_tracing_is_off_by_default_and_gives_one_span_per_batch_when_on(api):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from iotwasm.api.tracing import enable_tracing

    c = api.admin
    push(c, name="echo", version="1")
    apply(c, deployment("echo", "echo:1") + "---\n" + http_route("r", "echo", "/in", "in/{device}", "out"))
    assert api.node.deployments["echo"].handle.trace is None
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    enable_tracing(api.node, provider)
    api.ingest("/in", "d1", [b"a", b"!trap"])
    wait_for(lambda: api.node.routes["r"].runner.stats.dead_letters == 1 and api.node.store.count("out") == 1,
             what="both messages handled")
    spans = [s for s in exporter.get_finished_spans() if s.name == "iotwasm.batch"]
    assert spans and all(s.attributes["iotwasm.deployment"] == "echo" for s in spans)
    assert sum(s.attributes["iotwasm.messages"] for s in spans) == 2
    assert sum(s.attributes["iotwasm.dead_letters"] for s in spans) == 1
    assert any(s.attributes.get("iotwasm.error_kinds") == ("trap",) for s in spans)


def test_latency_histogram_folds_in_only_new_messages_and_counts_what_it_missed():
    from collections import deque

    from iotwasm.api.metrics import LatencyHistograms

    h = LatencyHistograms()
    window = deque([0.05, 3.0, 20.0], maxlen=3)
    h.update("r", 3, window)
    h.update("r", 3, window)  # nothing new: nothing added
    window.extend([0.2, 7000.0, 20000.0, 1.0])  # 4 new, the window keeps only the last 3
    h.update("r", 7, window)
    fam = h.family({"r": "default"})
    samples = {(s.name, s.labels.get("le")): s.value for s in fam.samples}
    assert samples[("iotwasm_route_latency_ms_count", None)] == 6
    assert samples[("iotwasm_route_latency_ms_bucket", "0.1")] == 1
    assert samples[("iotwasm_route_latency_ms_bucket", "1")] == 2
    assert samples[("iotwasm_route_latency_ms_bucket", "10000")] == 5
    assert samples[("iotwasm_route_latency_ms_bucket", "+Inf")] == 6
    assert h.missed["r"] == 1


def test_wasi_stderr_lands_in_the_guest_logs(api):
    from conftest import EXAMPLES

    c = api.admin
    push(c, (EXAMPLES / "wasi_csv.wasm").read_bytes(), name="csv", version="1")
    r = apply(c, deployment("csv", "csv:1", host="wasi") + "---\n" + http_route("r", "csv", "/in", "in/{device}", "out"))
    assert r.json()["problems"] == [], r.text
    api.ingest("/in", "d1", [b"dev-1,temperature,21.5", b"not,a"])
    wait_for(lambda: api.node.store.count("out") == 1, what="the good line")
    lines = wait_for(lambda: c.get("/v1/deployments/csv/logs").json(), what="a log line")
    assert lines[0]["text"] == "line 1: expected 3 fields device,sensor,value"
    assert lines[0]["level"] == "warning"


def test_describe_route_says_why_it_is_not_running(api):
    """A route that cannot start is listed as pending, and describing it says why."""
    c = api.admin
    r = apply(c, http_route("r", "ghost", "/in", "in/{device}", "out"))
    assert r.status_code == 200, r.text
    [problem] = r.json()["problems"]
    assert "ghost" in problem
    d = c.get("/v1/routes/r").json()
    assert d["state"] == "pending" and "step 'ghost' is not a deployment" in d["problem"]
