"""Components section of benchmarks/run.py: the range filter as a Python and a JavaScript
component next to the C module and the same handler as plain host Python, in one run.

    .venv/bin/python benchmarks/run.py --only components

Per message, at batch 1, 100 and 1,000: wall time and CPU time of the calling thread (wasm
runs on it; other processes on a busy machine inflate CPU time far less than wall time).
"Host Python" is the example's own handler (examples/modules/python/range_filter/main.py)
called on the host for each message, with the SDK on sys.path: the same logic, no sandbox.
Also: the cost of a one-message call, where its time goes, and how long a cached compiled
component takes to load.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 100, 1000)
CONFIG = {"field": "value", "min": "10", "max": "30"}


def _host_handler():
    sys.path.insert(0, str(ROOT / "sdk" / "python"))
    from iotwasm_sdk import _batch

    path = ROOT / "examples" / "modules" / "python" / "range_filter" / "main.py"
    spec = importlib.util.spec_from_file_location("range_filter_host", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # setup() reads config through the host interface; give it the same values directly
    mod.FIELD, mod.LO, mod.HI = CONFIG["field"], float(CONFIG["min"]), float(CONFIG["max"])
    handle, Message, Reject = mod.handle, _batch.Message, _batch.Reject

    def run(batch):
        passed = []
        for m in batch:
            msg = Message(m.topic, m.payload.decode())
            try:
                if handle(msg) is not None:
                    passed.append(m.payload)
            except Reject:
                pass
        return passed

    return run


def bench_components(quick: bool, log, interleaved, make_messages, median) -> dict:
    from iotwasm.container import RestartPolicy, WasmContainer
    from iotwasm.engine import Capabilities, Limits, Runtime
    from iotwasm.toolchain.componentize import build

    cache = ROOT / ".iotwasm"
    limits = Limits.parse(memory="64Mi", timeout="10s")
    caps = Capabilities.grant("config", config=CONFIG)
    modules = {"C": ROOT / "examples" / "modules" / "range_filter.wasm"}
    for lang in ("python", "js"):
        log(f"  building the {lang} range filter (cached by source digest)")
        modules[lang] = build(lang, ROOT / "examples" / "modules" / lang / "range_filter",
                              out=cache / "bench" / f"range_filter-{lang}.wasm",
                              cache_dir=cache / "build-cache")
    rt = Runtime(cache_dir=cache / "compile-cache")
    containers = {name: WasmContainer(f"rf-{name}", path, runtime=rt, limits=limits,
                                      capabilities=caps, restart=RestartPolicy(mode="never")).start()
                  for name, path in modules.items()}
    host = _host_handler()
    msgs = make_messages(2000 if quick else 20000)
    want = host(msgs[:1000])
    for name, c in containers.items():
        got = [o.payload for o in c.process(msgs[:1000]).outputs]
        if got != want:
            raise SystemExit(f"range filter in {name} passes other messages than host Python")
    res: dict = {"batches": {}, "config": CONFIG}
    repeats = 3 if quick else 7
    for bs in BATCHES:
        n = min(len(msgs), max(bs, (200 if quick else 2000) * (1 if bs == 1 else 5)))
        chunks = [msgs[i:i + bs] for i in range(0, n, bs)]
        fns = {name: (lambda c=c: [c.process(ch) for ch in chunks]) for name, c in containers.items()}
        fns["host Python"] = lambda: [host(ch) for ch in chunks]
        cpu: dict = {}
        wall = interleaved(fns, repeats, cpu)
        row = {name: {"wall_us": median(wall[name]) / 1e3 / n, "cpu_us": median(cpu[name]) / 1e3 / n}
               for name in fns}
        res["batches"][str(bs)] = row
        log(f"  batch {bs:>5}: " + ", ".join(f"{k} {v['cpu_us']:.2f}" for k, v in row.items())
            + " µs/msg (CPU)")
    # where a one-message call goes
    g = containers["python"]._slots[0].guest
    from iotwasm.engine.component_batch import decode_outputs, encode_batch

    one = msgs[:1]
    data = encode_batch(one)
    reps = 300 if quick else 3000
    parts = {}
    t0 = time.thread_time_ns()
    for _ in range(reps):
        encode_batch(one)
    parts["encode"] = (time.thread_time_ns() - t0) / reps / 1e3
    t0 = time.thread_time_ns()
    for _ in range(reps):
        ok, out = g._invoke(g._process, data)
    parts["call (guest + C API)"] = (time.thread_time_ns() - t0) / reps / 1e3
    t0 = time.thread_time_ns()
    for _ in range(reps):
        decode_outputs(out, one, 0)
    parts["decode"] = (time.thread_time_ns() - t0) / reps / 1e3
    res["one_message_python_us"] = parts
    for c in containers.values():
        c.stop()
    # load time of a cached compiled component (a fresh runtime each time: disk cache only)
    loads = {}
    for lang in ("python", "js"):
        times = []
        for _ in range(3 if quick else 7):
            fresh = Runtime(cache_dir=cache / "compile-cache")
            t0 = time.perf_counter_ns()
            fresh.load(modules[lang], limits=limits)
            times.append(time.perf_counter_ns() - t0)
            assert fresh.cache.hits == 1
            fresh.close()
        loads[lang] = median(times) / 1e6
    res["cached_load_ms"] = loads
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Runtime(cache_dir=tmp)
        t0 = time.perf_counter_ns()
        fresh.load(modules["python"], limits=limits)
        res["python_compile_s"] = (time.perf_counter_ns() - t0) / 1e9
        fresh.close()
    res["sizes_mb"] = {name: p.stat().st_size / 1e6 for name, p in modules.items()}
    rt.close()
    return res


def markdown(res: dict) -> list[str]:
    lines = ["", "### Components: the range filter in C, Python and JavaScript",
             "", "CPU µs per message (wall in parentheses); ratio = Python or JS component "
             "over the same handler as plain host Python.", "",
             "| batch | C (v1) | Python component | JS component | host Python | Python / host | JS / host |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for bs, row in res["batches"].items():
        def cell(name):
            return f"{row[name]['cpu_us']:.2f} ({row[name]['wall_us']:.2f})"
        hp = row["host Python"]["cpu_us"]
        lines.append(f"| {bs} | {cell('C')} | {cell('python')} | {cell('js')} | "
                     f"{cell('host Python')} | {row['python']['cpu_us'] / hp:.2f}× | "
                     f"{row['js']['cpu_us'] / hp:.2f}× |")
    parts = res["one_message_python_us"]
    lines += ["", "One-message call into the Python component, CPU µs: " + ", ".join(
        f"{k} {v:.1f}" for k, v in parts.items()) + ".",
        "Cached compiled component load: " + ", ".join(
            f"{k} {v:.0f} ms" for k, v in res["cached_load_ms"].items())
        + f"; compiling the Python component: {res['python_compile_s']:.1f} s; sizes: "
        + ", ".join(f"{k} {v:.1f} MB" for k, v in res["sizes_mb"].items()) + "."]
    return lines
