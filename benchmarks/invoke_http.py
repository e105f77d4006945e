#!/usr/bin/env python3
"""Invoke over HTTP on loopback: `POST /v1/deployments/{name}/invoke` of a node against a plain
FastAPI endpoint doing the same logic in Python.

    .venv/bin/python benchmarks/invoke_http.py          # 1,000 requests each after 100 to warm up
    .venv/bin/python benchmarks/invoke_http.py --quick  # 200

The node (tests/apinode.py, in this process on its own event loop thread) runs
`examples/modules/range_filter.wasm` (field=value, min=10, max=30) as deployment `filter`; every
request carries one message of 98 bytes that passes, and the answer carries it back. The
baseline is a FastAPI app on uvicorn, in this process on a thread of its own as well, taking
the same JSON body and answering the same JSON shape, with the range check written in Python
(parse the payload, compare `value`). The node's answer does more than run the module: the
bearer token is checked, the body capped, topic grants applied, and an audit row written to
disk before the answer (the baseline does none of that; the node's own `GET /healthz`, with
no token and no audit, is timed too, to show the HTTP stack alone). One keep-alive connection
per server; requests alternate between them so both see the same machine. Prints p50/p90/p99
and writes benchmarks/results/invoke_http.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from apinode import ApiNode  # noqa: E402
from brokers import free_port  # noqa: E402
from iotwasm.pipeline.http_ingest import listening_socket  # noqa: E402

PAYLOAD = '{"device":"dev-0042","sensor":"temperature","value":23.71,"unit":"C","ts":1700000000123,"seq":7}'
MODULE = ROOT / "examples" / "modules" / "range_filter.wasm"
DEPLOYMENT = """apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {name: filter}
spec:
  module: "filter:1"
  config: {field: value, min: "10", max: "30"}
  capabilities: {topics: {publish: ["#"], subscribe: ["#"]}}
"""


class Msg(BaseModel):
    topic: str | None = None
    payload: str | None = None


class Body(BaseModel):
    messages: list[Msg]


def plain_app() -> FastAPI:
    app = FastAPI()

    @app.post("/invoke")
    async def invoke(body: Body) -> dict:
        outputs, dead = [], []
        for i, m in enumerate(body.messages):
            topic = m.topic or "invoke/filter"
            try:
                v = float(json.loads(m.payload or "")["value"])
            except (ValueError, KeyError, TypeError) as e:
                dead.append({"index": i, "topic": topic, "kind": "guest_error", "error": str(e)})
                continue
            if 10 <= v <= 30:
                outputs.append({"index": i, "topic": topic, "payload": m.payload})
        return {"deployment": "filter", "revision": 1, "outputs": outputs, "dead_letters": dead}
    return app


class PlainServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(plain_app(), host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[listening_socket("127.0.0.1", self.port)]))

    def start(self) -> PlainServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def quantiles(ms: list[float]) -> dict:
    s = sorted(ms)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {"p50_ms": statistics.median(s), "p90_ms": q(0.9), "p99_ms": q(0.99), "n": len(s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, warm = (200, 50) if args.quick else (1000, 100)
    if not MODULE.exists():
        sys.exit(f"{MODULE} is not built: make examples")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    node = ApiNode(Path(tempfile.mkdtemp(prefix="invoke-http-"))).start()
    plain = PlainServer().start()
    body = {"messages": [{"topic": "sensors/dev-0042/t", "payload": PAYLOAD}]}
    try:
        admin = node.admin
        assert admin.post("/v1/modules", content=MODULE.read_bytes(),
                          params={"name": "filter", "version": "1"}).status_code == 201
        r = admin.post("/v1/apply", content=DEPLOYMENT, headers={"Content-Type": "application/yaml"})
        assert r.status_code == 200 and not r.json()["problems"], r.text
        calls = {
            "node invoke (wasm)": lambda c: c.post("/v1/deployments/filter/invoke", json=body),
            "plain FastAPI (Python)": lambda c: c.post("/invoke", json=body),
            "node GET /healthz": lambda c: c.get("/healthz"),
        }
        clients = {
            "node invoke (wasm)": httpx.Client(base_url=node.url,
                                               headers={"Authorization": f"Bearer {node.admin_token}"}),
            "plain FastAPI (Python)": httpx.Client(base_url=f"http://127.0.0.1:{plain.port}"),
            "node GET /healthz": httpx.Client(base_url=node.url),
        }
        same = {k: None for k in calls}
        for k, call in calls.items():   # both answer the same thing before anything is timed
            r = call(clients[k])
            assert r.status_code == 200, r.text
            if k != "node GET /healthz":
                out = r.json()["outputs"]
                same[k] = [(o["index"], o["payload"]) for o in out]
        assert same["node invoke (wasm)"] == same["plain FastAPI (Python)"] == [(0, PAYLOAD)], same
        samples: dict[str, list[float]] = {k: [] for k in calls}
        for i in range(warm + n):
            for k, call in calls.items():
                t0 = time.perf_counter_ns()
                r = call(clients[k])
                dt = (time.perf_counter_ns() - t0) / 1e6
                assert r.status_code == 200
                if i >= warm:
                    samples[k].append(dt)
        for c in clients.values():
            c.close()
    finally:
        plain.stop()
        node.stop()
    res = {k: quantiles(v) for k, v in samples.items()}
    base = res["plain FastAPI (Python)"]["p50_ms"]
    print(f"{n} requests each after {warm}; {started}; {platform.machine()}, Python {platform.python_version()}\n")
    print("| endpoint | p50 | p90 | p99 | p50 vs plain FastAPI |")
    print("|---|---:|---:|---:|---:|")
    for k, q in res.items():
        print(f"| {k} | {q['p50_ms']:.3f} ms | {q['p90_ms']:.3f} ms | {q['p99_ms']:.3f} ms | "
              f"{q['p50_ms'] / base:.2f}× |")
    out = ROOT / "benchmarks" / "results" / ("invoke_http-quick.json" if args.quick else "invoke_http.json")
    out.write_text(json.dumps({"started": started, "n": n, "results": res}, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
