#!/usr/bin/env python3
"""What tracing costs a route: nothing when OTLP is not configured, and how much when it is.

    .venv/bin/python benchmarks/otlp.py [--baseline /path/to/other/checkout/src] [--messages N] [--repeats R]

One `RouteRunner` (the pipeline's own, with its lane thread) runs messages through three steps
(examples/modules/range_filter.wasm, or the echo module of tests/conftest.py) into a sink that
counts, with batches of 1 message (the worst case: the per-batch cost is all there is) and of
100. Each configuration runs in a child process of its own, interleaved with the others,
and the median of the repeats is compared side by side:

* ``baseline``: the same workload on another checkout's sources (``--baseline``: e.g. the
  revision before route tracing existed), the "before"
* ``off``: this checkout, OTLP not configured (`RouteRunner.trace` is None): the "after"
* ``on``: this checkout, spans of every batch (route, steps' module calls, sink) made by the
  SDK and exported over OTLP/HTTP by a batch processor to a receiver in the same process
  that answers 200 (so exporting costs its real protobuf encoding and HTTP request)

Each configuration reports throughput (wall clock) and CPU time per message (every thread of
its process). Ratios against ``off`` (and ``off`` against ``baseline``) are what to read on a
shared machine; the CPU ratio is the steadier of the two there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(mode: str, messages: int, batch: int) -> float:
    """Run the workload once in this process; return messages per second."""
    import asyncio

    sys.path.insert(0, str(ROOT / "tests"))
    from iotwasm.container import WasmContainer
    from iotwasm.engine import Capabilities, Runtime
    from iotwasm.message import Message
    from iotwasm.messaging.acl import TopicACL
    from iotwasm.pipeline.route import BatchPolicy, QueuePolicy, RouteRunner

    rf = ROOT / "examples" / "modules" / "range_filter.wasm"

    class Step:
        def __init__(self, name: str, c, trace=None):
            self.name, self.c, self.acl, self.trace = name, c, TopicACL(["#"], ["#"], principal=name), trace
            self.revision = 1

        def process(self, msgs):
            if self.trace is not None:
                return self.trace(self, msgs, self.c.process)
            return self.c.process(msgs)

    class Count:
        name = "count"

        def __init__(self):
            self.n = 0

        async def deliver(self, msgs, variables):
            self.n += len(msgs)
            return []

    rt = Runtime()
    if rf.exists():
        caps = Capabilities(host=frozenset({"config"}), config={"field": "value", "min": "-1000", "max": "1000"})
        containers = [WasmContainer(f"s{i}", rf, runtime=rt, capabilities=caps).start() for i in range(3)]
    else:
        from conftest import ECHO_WAT
        containers = [WasmContainer(f"s{i}", ECHO_WAT, runtime=rt).start() for i in range(3)]
    provider = server = None
    trace = None
    route_trace = None
    if mode == "on":
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Ok(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass
        server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        from opentelemetry.sdk.resources import Resource

        from iotwasm.api import otlp
        from iotwasm.api.tracing import RouteTracer, enable_tracing

        provider = otlp._tracer_provider(Resource.create({"service.name": "bench"}),
                                         f"http://127.0.0.1:{server.server_address[1]}/v1/traces")

        class FakeNode:   # what the tracers read of a node
            routes: dict = {}
            deployments: dict = {}
            batch_trace = route_trace = invoke_trace = None

            class config:
                name = "bench"
        node = FakeNode()
        enable_tracing(node, provider)
        trace = node.batch_trace
        route_trace = RouteTracer(node, provider.get_tracer("iotwasm"))
    steps = [Step(f"s{i}", c, trace) for i, c in enumerate(containers)]
    sink = Count()
    payloads = [Message(f"in/d{i % 10}", json.dumps({"device": f"d{i % 10}", "value": i % 50}).encode())
                for i in range(messages)]

    async def main() -> float:
        runner = RouteRunner("bench", steps, [sink], batch=BatchPolicy(batch, 0.0005),
                             queue=QueuePolicy(capacity=1000))
        if route_trace is not None:
            runner.trace = route_trace
        runner.start()
        t0, c0 = time.perf_counter(), time.process_time()
        for m in payloads:
            await runner.offer(m, {"device": "d"})
        await runner.drain(120)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert sink.n == messages, (sink.n, messages)
        await runner.stop(0)
        return messages / elapsed, cpu / messages * 1e6

    rate, cpu_us = asyncio.run(main())
    for c in containers:
        c.stop()
    rt.close()
    if provider is not None:
        provider.shutdown()
        server.shutdown()
    return rate, cpu_us


def run(src: Path, mode: str, messages: int, batch: int) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    for k in [k for k in env if k.startswith("OTEL_")]:
        env.pop(k)
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--messages", str(messages),
                          "--batch", str(batch)], capture_output=True, text=True, env=env, timeout=600, check=True)
    rate, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(rate), float(cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", type=Path, help="another checkout's src/ (the 'before')")
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child")
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    if a.child:
        print(*child(a.child, a.messages, a.batch))
        return
    here = ROOT / "src"
    modes = ([("baseline", a.baseline, "off")] if a.baseline else []) + [("off", here, "off"), ("on", here, "on")]
    for batch in (1, 100):
        rates: dict[str, list[float]] = {m[0]: [] for m in modes}
        cpus: dict[str, list[float]] = {m[0]: [] for m in modes}
        for _ in range(a.repeats):
            for label, src, mode in modes:   # interleaved: drift on a shared machine hits all alike
                rate, cpu = run(src, mode, a.messages, batch)
                rates[label].append(rate)
                cpus[label].append(cpu)
        med = {k: statistics.median(v) for k, v in rates.items()}
        cpu = {k: statistics.median(v) for k, v in cpus.items()}
        line = f"batch {batch:>3}: " + ", ".join(f"{k} {med[k]:,.0f} msg/s ({cpu[k]:.1f} µs CPU/msg)" for k in med)
        if "baseline" in med:
            line += (f"; off/baseline throughput {med['off'] / med['baseline']:.3f}, "
                     f"CPU {cpu['off'] / cpu['baseline']:.3f}")
        line += f"; on/off throughput {med['on'] / med['off']:.3f}, CPU {cpu['on'] / cpu['off']:.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
