"""Traces and metrics over OTLP/HTTP: a node (`iotwasm up --otlp`) and the CLI export to a
receiver started here, which decodes the protobuf export requests as a collector would
(opentelemetry-proto); the spans' names, attributes and parent links are checked, across a
fleet invocation on a real nats-server too."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import wasmtime

from apinode import wait_for
from brokers import free_port
from conftest import ECHO_WAT
from test_cli_client import CLI

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="needs iotwasm[otel]")

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: E402

MANIFESTS = """apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo-a}}
spec:
  module: "{module}"
  capabilities: {{topics: {{subscribe: ["#"], publish: ["#"]}}}}
---
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo-b}}
spec:
  module: "{module}"
  capabilities: {{topics: {{subscribe: ["#"], publish: ["#"]}}}}
---
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: ingest}}
spec:
  source: {{http: {{path: /in, topic: "in/{{device}}"}}}}
  steps: [echo-a, echo-b]
  sinks: [{{store: {{table: first}}}}, {{store: {{table: second}}}}]
  batch: {{maxSize: 10, maxLinger: 1ms}}
"""


def _value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    return getattr(v, kind) if kind else None


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


class Receiver:
    """An OTLP/HTTP receiver: POST /v1/traces and /v1/metrics, protobuf bodies (gzip or not)."""

    def __init__(self):
        self.spans: list[dict] = []
        self.points: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):   # noqa: N802 - the http.server interface
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                assert self.headers["Content-Type"] == "application/x-protobuf"
                if self.path == "/v1/traces":
                    req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    receiver._spans(req)
                    reply = trace_service_pb2.ExportTraceServiceResponse()
                elif self.path == "/v1/metrics":
                    req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    receiver._metrics(req)
                    reply = metrics_service_pb2.ExportMetricsServiceResponse()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                out = reply.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _spans(self, req) -> None:
        with self.lock:
            for rs in req.resource_spans:
                resource = _attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append({"name": s.name, "trace": s.trace_id.hex(), "id": s.span_id.hex(),
                                           "parent": s.parent_span_id.hex(), "kind": s.kind,
                                           "attrs": _attrs(s.attributes), "resource": resource,
                                           "status": s.status.code})

    def _metrics(self, req) -> None:
        with self.lock:
            for rm in req.resource_metrics:
                resource = _attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        data = getattr(m, m.WhichOneof("data"))
                        for p in data.data_points:
                            value = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                            self.points.append({"name": m.name, "attrs": _attrs(p.attributes), "value": value,
                                                "resource": resource})

    def find(self, **want) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if all(s["attrs"].get(k) == v if k not in ("name", "parent", "trace")
                                                 else s[k] == v for k, v in want.items())]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver():
    r = Receiver()
    yield r
    r.close()


def _env(tmp_path, **extra) -> dict:
    env = {**os.environ, "IOTWASM_CONFIG": str(tmp_path / "config.yaml"),
           # send soon (the defaults batch spans for 5 s and metrics for 60 s)
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "300", **extra}
    for k in [k for k in env if k.startswith("OTEL_EXPORTER_OTLP")]:
        if k not in extra:
            env.pop(k)
    return env


def test_a_node_exports_a_trace_per_batch_and_metrics_and_an_invocation_joins_the_callers_trace(
        tmp_path, receiver, nats_server):
    (tmp_path / "echo.wasm").write_bytes(wasmtime.wat2wasm(ECHO_WAT))
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "app.yaml").write_text(MANIFESTS.format(module=tmp_path / "echo.wasm"))
    port = free_port()
    log = open(tmp_path / "node.log", "wb")
    node = subprocess.Popen([*CLI, "up", str(mdir), "--data", str(tmp_path / "d"), "--no-api", "--name", "edge-7",
                             "--http", f"127.0.0.1:{port}", "--fleet", nats_server.url, "--otlp", receiver.url],
                            stdout=log, stderr=subprocess.STDOUT, env=_env(tmp_path))
    try:
        def post(body: bytes) -> bool:
            try:
                return httpx.post(f"http://127.0.0.1:{port}/in?device=d1", content=body, timeout=5).status_code == 202
            except httpx.HTTPError:
                return node.poll() is not None
        wait_for(lambda: post(b"hello"), 60, "the node taking messages")
        assert node.poll() is None, (tmp_path / "node.log").read_text()

        # a batch: the route's span, both steps and both sinks under it
        route = wait_for(lambda: receiver.find(name="iotwasm.route", **{"iotwasm.route": "ingest",
                                                                        "iotwasm.delivered": 1}),
                         30, "the route's span")[0]
        assert route["parent"] == "" and route["attrs"]["iotwasm.messages"] == 1
        assert route["attrs"]["iotwasm.dead_letters"] == 0 and route["attrs"]["iotwasm.namespace"] == "default"
        assert route["resource"]["service.name"] == "iotwasm" and route["resource"]["service.instance.id"] == "edge-7"
        children = wait_for(lambda: (c := receiver.find(parent=route["id"])) and len(c) == 4 and c, 30,
                            "the batch's four child spans")
        assert all(c["trace"] == route["trace"] for c in children)
        steps = sorted((c["attrs"]["iotwasm.deployment"], c["attrs"]["iotwasm.messages"], c["attrs"]["iotwasm.outputs"])
                       for c in children if c["name"] == "iotwasm.batch")
        assert steps == [("echo-a", 1, 1), ("echo-b", 1, 1)]
        sinks = [c for c in children if c["name"] == "iotwasm.sink"]
        assert len({s["attrs"]["iotwasm.sink"] for s in sinks}) == 2
        assert all(s["attrs"]["iotwasm.messages"] == 1 and s["attrs"]["iotwasm.failures"] == 0 for s in sinks)

        # a message the first step traps on: a dead letter, no second step, no sinks
        assert post(b"!boom")
        bad = wait_for(lambda: receiver.find(name="iotwasm.route", **{"iotwasm.dead_letters": 1}), 30,
                       "the failed batch's span")[0]
        assert bad["attrs"]["iotwasm.delivered"] == 0
        under = wait_for(lambda: receiver.find(parent=bad["id"]), 30, "its step's span")
        assert [(c["name"], c["attrs"]["iotwasm.deployment"], c["attrs"]["iotwasm.dead_letters"],
                 c["attrs"]["iotwasm.error_kinds"]) for c in under] == [("iotwasm.batch", "echo-a", 1, ("trap",))]

        # a fleet invocation from the CLI: its client span is the parent of the node's
        def invoked():
            r = subprocess.run([*CLI, "fleet", "invoke", "echo-b", "--fleet", nats_server.url, "-d", "ping"],
                               capture_output=True, timeout=60,
                               env=_env(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url))
            return r.returncode == 0 and r.stdout == b"invoke/echo-b\tping\n"
        wait_for(invoked, 60, "an invocation answered")
        client = wait_for(lambda: receiver.find(name="iotwasm.fleet.invoke"), 30, "the CLI's span")[0]
        assert client["resource"]["service.name"] == "iotwasm-cli" and client["attrs"]["iotwasm.node"] == "edge-7"
        served = wait_for(lambda: receiver.find(name="iotwasm.invoke", parent=client["id"]), 30,
                          "the node's span under the CLI's")[0]
        assert served["trace"] == client["trace"] and served["resource"]["service.instance.id"] == "edge-7"
        assert served["attrs"]["iotwasm.deployment"] == "echo-b" and served["attrs"]["iotwasm.outputs"] == 1
        call = wait_for(lambda: receiver.find(name="iotwasm.batch", parent=served["id"]), 30,
                        "the module call under the invocation")[0]
        assert call["trace"] == client["trace"] and call["attrs"]["iotwasm.deployment"] == "echo-b"

        # metrics: observed from the node's counters
        def delivered():
            with receiver.lock:
                return [p for p in receiver.points if p["name"] == "iotwasm.route.delivered"
                        and p["attrs"] == {"route": "ingest", "namespace": "default"} and p["value"] >= 1]
        point = wait_for(delivered, 30, "iotwasm.route.delivered")[0]
        assert point["resource"]["service.instance.id"] == "edge-7"
        with receiver.lock:
            names = {p["name"] for p in receiver.points}
        assert {"iotwasm.route.received", "iotwasm.route.dead_letters", "iotwasm.route.queued",
                "iotwasm.deployment.messages", "iotwasm.outbox.backlog"} <= names

        def one_dead():
            with receiver.lock:
                return [p for p in receiver.points if p["name"] == "iotwasm.route.dead_letters"
                        and p["attrs"]["route"] == "ingest" and p["value"] == 1]
        wait_for(one_dead, 30, "the dead letter counted")
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()


def test_otlp_over_grpc_is_refused_in_one_line(tmp_path, receiver):
    mdir = tmp_path / "m"
    mdir.mkdir()
    r = subprocess.run([*CLI, "up", str(mdir), "--data", str(tmp_path / "d"), "--no-api", "--seconds", "1",
                        "--http", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60,
                       env=_env(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"))
    assert r.returncode == 1
    assert r.stderr.strip() == "error: OTEL_EXPORTER_OTLP_PROTOCOL=grpc: this node exports OTLP over http/protobuf only"
    # and nothing configured: the node runs, nothing is sent
    r = subprocess.run([*CLI, "up", str(mdir), "--data", str(tmp_path / "d"), "--no-api", "--seconds", "1",
                        "--http", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60,
                       env=_env(tmp_path))
    assert r.returncode == 0 and "OTLP" not in r.stdout + r.stderr
    assert receiver.spans == [] and receiver.points == []
