"""Section 2 of benchmarks/run.py (`--only cold-start`): compile, load from the disk cache,
instantiate, and the first result after loading a cached module in a fresh interpreter.

`child_first_result` is what that interpreter runs (`run.py --child first-result`), kept next
to the figures it produces. run.py passes `run_child` in, as it passes helpers to micro.py:
the child re-runs run.py itself, so what starts it stays there.
"""

from __future__ import annotations

import subprocess
import sys

from helpers import median, perf_ns, scratch, size, timed
from workload import FILTER_CONFIG, Workload


# -- section 2: cold start -------------------------------------------------------------------
def bench_cold_start(work: Workload, quick: bool, log, run_child) -> dict:
    import wasmtime

    from iotwasm.engine import HostContext, Limits, Runtime, prepare

    out: dict = {}
    reps = size("compile_repeats", quick)
    tmp = scratch()
    path = work.module_path(tmp)

    def fresh_runtime(cache_dir=None):
        rt = Runtime(cache_dir)
        rt.engine(rt.settings_for(Limits()))  # engine creation is not what is measured
        return rt

    # compile, no cache: a fresh runtime each time, so nothing is cached in memory either
    xs, raw = [], []
    for _ in range(reps + 1):
        rt = fresh_runtime()
        t0 = perf_ns()
        rt.load(path, name="bench")
        xs.append(perf_ns() - t0)
        eng = rt.engine(rt.settings_for(Limits()))
        t0 = perf_ns()
        wasmtime.Module(eng, work.wasm)
        raw.append(perf_ns() - t0)
        rt.close()
    out["compile_ms"] = median(xs[1:]) / 1e6
    out["compile_raw_ms"] = median(raw[1:]) / 1e6

    # deserialize from the on-disk cache: the second Runtime(cache_dir) on the same directory
    cache_dir = tmp / "cache"
    rt = Runtime(cache_dir)
    rt.load(path, name="bench")
    rt.close()
    artifact_file = next(cache_dir.glob("*.cwasm"))
    xs, raw = [], []
    for _ in range(reps + 1):
        rt = fresh_runtime(cache_dir)
        t0 = perf_ns()
        rt.load(path, name="bench")
        xs.append(perf_ns() - t0)
        assert rt.cache.hits == 1 and rt.cache.misses == 0
        eng = rt.engine(rt.settings_for(Limits()))
        # as the cache does: wasmtime maps the entry, whose artifact comes first (format 5)
        t0 = perf_ns()
        wasmtime.Module.deserialize_file(eng, str(artifact_file))
        raw.append(perf_ns() - t0)
        rt.close()
    out["deserialize_ms"] = median(xs[1:]) / 1e6
    out["deserialize_raw_ms"] = median(raw[1:]) / 1e6
    out["artifact_bytes"] = artifact_file.stat().st_size
    out["wasm_bytes"] = len(work.wasm)

    # instantiation, from a module loaded from the cache
    rt = Runtime(cache_dir)
    compiled = rt.load(path, name="bench")
    assert rt.cache.hits == 1
    factory = prepare(compiled, Limits(), HostContext("bench", work.caps))
    engine = factory.engine
    k = size("instantiate_n", quick)

    def per_op(make):
        keep = []

        def go():
            keep.clear()
            for _ in range(k):
                keep.append(make())
        ns = timed(go, size("instantiate_repeats", quick), warmup=1)
        keep.clear()
        return median(ns) / 1000 / k

    out["store_us"] = per_op(lambda: wasmtime.Store(engine))

    def bare():
        s = wasmtime.Store(engine)
        return s, factory.pre.instantiate(s)

    out["instantiate_us"] = per_op(bare)
    out["ready_guest_us"] = per_op(factory.new_guest)
    rt.close()
    log(f"  compile {out['compile_ms']:.2f} ms (wasmtime alone {out['compile_raw_ms']:.2f} ms), "
        f"from cache {out['deserialize_ms'] * 1000:.0f} µs (deserialize alone "
        f"{out['deserialize_raw_ms'] * 1000:.0f} µs), Store {out['store_us']:.1f} µs, "
        f"instantiate {out['instantiate_us']:.1f} µs, ready guest {out['ready_guest_us']:.1f} µs")

    # first result after loading a cached module, in fresh interpreters
    spec = {"cache_dir": str(cache_dir), "module": path, "kind": work.kind}
    runs = []
    for _ in range(size("first_result_runs", quick)):
        t0 = perf_ns()
        res = run_child("first-result", spec)
        res["wall_ms"] = (perf_ns() - t0) / 1e6
        runs.append(res)
    t0 = perf_ns()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare_py_ms = (perf_ns() - t0) / 1e6
    for key in ("first_result_ms", "runtime_ms", "load_ms", "start_ms", "process_ms",
                "imports_ms", "wall_ms"):
        out[f"child_{key}"] = median([r[key] for r in runs])
    out["child_runs"] = len(runs)
    out["python_startup_ms"] = bare_py_ms
    log(f"  first result after cached load {out['child_first_result_ms']:.2f} ms "
        f"(subprocess wall {out['child_wall_ms']:.0f} ms, of which imports "
        f"{out['child_imports_ms']:.0f} ms)")
    return out


def child_first_result(spec: dict) -> dict:
    t_imp = perf_ns()
    from iotwasm.container import WasmContainer
    from iotwasm.engine import Capabilities, Runtime
    from iotwasm.message import Message

    imports_ms = (perf_ns() - t_imp) / 1e6
    caps = (Capabilities.grant("config", config=dict(FILTER_CONFIG))
            if spec["kind"] == "range_filter" else Capabilities())
    payload = b'{"device":"dev-0042","sensor":"temperature","value":23.71,"unit":"C","ts":1700000000123}'
    msg = Message("sensors/dev-0042/temperature", payload, 1_700_000_000_123)
    t0 = perf_ns()
    rt = Runtime(spec["cache_dir"])
    t1 = perf_ns()
    compiled = rt.load(spec["module"], name="bench")
    t2 = perf_ns()
    container = WasmContainer("bench", compiled, runtime=rt, capabilities=caps).start()
    t3 = perf_ns()
    result = container.process([msg])
    t4 = perf_ns()
    assert [o.payload for o in result.outputs] == [payload], result
    assert rt.cache.hits == 1 and rt.cache.misses == 0, "compile cache was not warm"
    return {"first_result_ms": (t4 - t0) / 1e6, "runtime_ms": (t1 - t0) / 1e6,
            "load_ms": (t2 - t1) / 1e6, "start_ms": (t3 - t2) / 1e6,
            "process_ms": (t4 - t3) / 1e6, "imports_ms": imports_ms}
