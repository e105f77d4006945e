"""The `languages` section of benchmarks/run.py: the range filter written in each guest
language, side by side with plain Python, and the build time of each template.

Per-message cost: examples/modules/range_filter.wasm (C), rust/range_filter.wasm and
assemblyscript/range_filter.wasm, each in a WasmContainer with the same config, at batch 1,
100 and 1,000, interleaved repeat by repeat with plain Python in one process. Before timing,
each must give plain Python's passing set. Ratios are to C (the target: Rust and
AssemblyScript within 1.5x of C at batch >= 100) and to plain Python.

Build time: `iotwasm new` + `iotwasm build` of every template in every ready language, in a
fresh temporary directory with an empty cache (a cold build: for Rust, cargo compiles the SDK
crate too); then `iotwasm build` again of the unchanged project ("rebuild": Python and
JavaScript components come from the build cache, keyed by the sources' digest).

A language is one line of MODULES; templates come from the toolchain registry.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run as bench

EXAMPLES = bench.ROOT / "examples" / "modules"
#: implementation name -> module (the C one first: ratios are to it)
MODULES = {
    "C": EXAMPLES / "range_filter.wasm",
    "Rust": EXAMPLES / "rust" / "range_filter.wasm",
    "AssemblyScript": EXAMPLES / "assemblyscript" / "range_filter.wasm",
}
BATCHES = (1, 100, 1000)
TARGET = 1.5


def bench_languages(quick: bool, log) -> dict:
    from iotwasm.container import WasmContainer
    from iotwasm.engine import Capabilities, Runtime

    missing = [str(p.relative_to(bench.ROOT)) for p in MODULES.values() if not p.exists()]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not built: run `make examples`")
    repeats = bench.size("repeats", quick)
    n_fast, n_b1 = bench.size("fast_msgs", quick), bench.size("fast_msgs_batch1", quick)
    msgs = bench.make_messages(n_fast)
    cfg = bench.FILTER_CONFIG
    python = bench.python_range_filter(cfg["field"], float(cfg["min"]), float(cfg["max"]))
    rt = Runtime()
    caps = Capabilities.grant("config", config=dict(cfg))
    containers = {name: WasmContainer(f"bench-{name}", path, runtime=rt, capabilities=caps).start()
                  for name, path in MODULES.items()}

    def passing(process):
        def go(batch):
            r = process(batch)
            assert not r.dead_letters, r.dead_letters[0].reason
            return [o.payload for o in r.outputs]
        return go

    impls = {name: c.process for name, c in containers.items()}
    impls["plain Python"] = python
    for bs in BATCHES:  # the same passing set everywhere before anything is timed
        n = min(n_fast, n_b1 * bs)
        want = python(msgs[:n])[0]
        for name, c in containers.items():
            got = [p for b in bench.split(msgs[:n], bs) for p in passing(c.process)(b)]
            assert got == want, f"{name} at batch {bs}: {len(got)} passing, plain Python {len(want)}"
    log(f"  verified: {', '.join(impls)} give the same passing set at batch sizes "
        f"{', '.join(map(str, BATCHES))}")

    rows = []
    for bs in BATCHES:
        n = min(n_fast, n_b1 * bs)
        batches = bench.split(msgs[:n], bs)

        def loop(fn):
            def go():
                for b in batches:
                    fn(b)
            return go

        cpu: dict = {}
        ns = bench.interleaved({name: loop(fn) for name, fn in impls.items()}, repeats, cpu)
        per = {name: [x / 1000 / n for x in xs] for name, xs in ns.items()}
        c_us, py_us = statistics.median(per["C"]), statistics.median(per["plain Python"])
        cpu_us = {name: statistics.median(xs) / 1000 / n for name, xs in cpu.items()}
        for name, xs in per.items():
            us = statistics.median(xs)
            rows.append({"batch": bs, "impl": name, "us_per_msg": us, "min_us": min(xs),
                         "vs_c": us / c_us, "vs_python": py_us / us,
                         "cpu_us_per_msg": cpu_us[name], "cpu_vs_c": cpu_us[name] / cpu_us["C"],
                         "messages": n, "repeats": repeats})
        log(f"  batch {bs:>4}: " + ", ".join(f"{name} {bench.fmt_us(statistics.median(per[name]))}"
                                             for name in impls))
    for c in containers.values():
        c.stop()
    rt.close()
    sizes = {name: p.stat().st_size for name, p in MODULES.items()}
    return {"rows": rows, "module_bytes": sizes, "builds": build_times(log)}


def build_times(log) -> list[dict]:
    """`iotwasm new` then `iotwasm build` of each template, timed per build, cold."""
    from iotwasm.toolchain import LANGUAGES, TEMPLATES

    out = []
    with tempfile.TemporaryDirectory(prefix="iotwasm-bench-build-") as tmp:
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}   # cold: no cached builds
        for lang in (lg for lg in LANGUAGES.values() if lg.available):
            for template in TEMPLATES:
                name = f"b-{template}"
                parent = Path(tmp) / lang.name
                cli = [sys.executable, "-m", "iotwasm.cli.main"]
                subprocess.run([*cli, "new", name, "--lang", lang.name, "--template", template, "--dir",
                                str(parent)], check=True, capture_output=True, env=env)
                times = []
                for _ in range(2):   # cold, then the unchanged project again
                    t0 = time.perf_counter()
                    r = subprocess.run([*cli, "build", str(parent / name)], capture_output=True, text=True,
                                       env=env, check=False)
                    times.append(time.perf_counter() - t0)
                    if r.returncode != 0:
                        raise SystemExit(f"building the {template} template in {lang.name} failed: {r.stderr}")
                size = (parent / name / f"{name}.wasm").stat().st_size
                out.append({"language": lang.title, "template": template, "seconds": times[0],
                            "rebuild_seconds": times[1], "bytes": size})
                log(f"  build {lang.name} {template}: {times[0]:.1f} s (again: {times[1]:.1f} s), {size:,} bytes")
    return out


def markdown(res: dict) -> list[str]:
    lines = ["## Languages: the range filter in C, Rust and AssemblyScript", "",
             "Same module logic, config and messages as above, each in a WasmContainer; median of "
             f"{res['rows'][0]['repeats']} interleaved repeats. \"vs C\" = this time / C's time "
             f"(target for Rust and AssemblyScript at batch ≥ 100: ≤ {TARGET}×); \"vs Python\" = plain "
             "Python's time / this time; \"CPU\" = CPU time of the benchmark thread, which other "
             "work on the machine inflates far less than wall time.", "",
             "| batch | implementation | µs/msg (median) | best | vs C | vs Python | CPU µs/msg | CPU vs C |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['batch']} | {r['impl']} | {r['us_per_msg']:.3f} | {r['min_us']:.3f} | "
                     f"{r['vs_c']:.2f}× | {bench.fmt_ratio(r['vs_python'])} | {r['cpu_us_per_msg']:.3f} | "
                     f"{r['cpu_vs_c']:.2f}× |")
    lines += ["", "Targets (batch ≥ 100):", ""]
    for r in res["rows"]:
        if r["batch"] >= 100 and r["impl"] in ("Rust", "AssemblyScript"):
            lines.append(f"- {r['impl']}, batch {r['batch']}: within {TARGET}× of C: "
                         f"{'met' if r['vs_c'] <= TARGET else 'NOT met'} ({r['vs_c']:.2f}× wall, "
                         f"{r['cpu_vs_c']:.2f}× CPU)")
    lines += ["", "Module sizes: " + ", ".join(f"{k} {v:,} bytes" for k, v in res["module_bytes"].items()),
              "", ("Build time of each template (`iotwasm build` after `iotwasm new`, cold, wall clock; "
                   "again: the unchanged project built a second time):"), "",
              "| language | template | build | again | module |", "|---|---|---:|---:|---:|"]
    lines += [f"| {b['language']} | {b['template']} | {b['seconds']:.1f} s | "
              f"{b.get('rebuild_seconds', float('nan')):.1f} s | {b['bytes']:,} bytes |" for b in res["builds"]]
    return lines + [""]
