#!/usr/bin/env python3
"""iotwasm benchmarks: per-message cost, cold start and density, measured in one run.

    .venv/bin/python benchmarks/run.py                 # everything (also: make bench)
    .venv/bin/python benchmarks/run.py --quick         # smaller N: a smoke run
    .venv/bin/python benchmarks/run.py --only density  # one section (or languages, ...)

Every figure is the median of several timed repeats, taken with time.perf_counter_ns after
warm-up runs, with the garbage collector off inside timed loops. Baselines run in the same
process and are interleaved with iotwasm repeat by repeat, so ratios compare like with like.
Before anything is timed, every implementation must produce exactly the passing set of the
plain Python one. Results: benchmarks/results/*.json; a markdown summary goes to stdout.

Only the standard library is imported at module level, here and in the modules below (which
import only it and each other): the subprocess sections re-run this file and measure
themselves from the first iotwasm import on.

This file is the command line and the order of the run. Each section is a module next to it:
per_message.py (its baselines on other runtimes in baselines.py), cold_start.py, micro.py,
density.py, languages.py and components.py. They share workload.py (the module under test,
the same logic as plain Python, the messages) and helpers.py (sizes, timing loops, the scratch
directory, formats); report.py describes the machine and its load and writes the markdown
summary. Each section returns its part of the results; main() gathers them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from cold_start import bench_cold_start, child_first_result
from density import bench_density, child_density
from helpers import interleaved, median, perf_ns, scratch
from per_message import bench_per_message
from report import cpu_times, machine_info, machine_line, markdown
from workload import RANGE_FILTER, ROOT, Workload, make_messages

# re-exported: languages.py and instructions.py import these from run
from helpers import fmt_ratio, fmt_us, size, split  # noqa: F401
from workload import FILTER_CONFIG, python_range_filter  # noqa: F401

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("per-message", "cold-start", "micro", "density", "languages", "components")


def run_child(kind: str, spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} subprocess failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller N, for a smoke run")
    ap.add_argument("--only", choices=SECTIONS, help="run one section")
    ap.add_argument("--workload", choices=("auto", "range_filter", "echo"), default="auto",
                    help="auto: examples/modules/range_filter.wasm when built, else echo")
    ap.add_argument("--module", type=Path, default=RANGE_FILTER,
                    help="the range-filter module (default: %(default)s)")
    ap.add_argument("--output", help="results file (default: benchmarks/results/latest.json "
                                     "for a full run, quick.json / only-NAME.json otherwise)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        fn = {"first-result": child_first_result, "density": child_density}[args.child]
        print(json.dumps(fn(json.loads(args.spec))))
        return

    started = perf_ns()
    cpu0 = cpu_times()
    kind = args.workload
    if kind == "auto":
        kind = "range_filter" if args.module.exists() else "echo"
    if kind == "range_filter" and not args.module.exists():
        raise SystemExit(f"{args.module} is not built: run `make examples`")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if kind == "echo" and args.workload == "auto":
        log(f"NOTE: {args.module} not found; measuring the echo module instead "
            "(run `make examples` for the range filter figures)")
    work = Workload(kind, args.module)
    res = {"machine": machine_info(), "quick": args.quick, "workload": kind,
           "workload_title": work.title, "module": work.source}
    log(f"machine: {machine_line(res['machine'])}")
    sections = [args.only] if args.only else list(SECTIONS)
    for name in sections:
        log(f"[{name}]")
        t0 = perf_ns()
        if name == "per-message":
            res["per_message"] = bench_per_message(work, args.quick, log)
        elif name == "cold-start":
            res["cold_start"] = bench_cold_start(work, args.quick, log, run_child)
        elif name == "micro":  # benchmarks/micro.py
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from micro import bench_micro

            res["micro"] = bench_micro(work, args.quick, log, scratch, make_messages, interleaved)
        elif name == "components":  # benchmarks/components.py
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from components import bench_components

            res["components"] = bench_components(args.quick, log, interleaved, make_messages,
                                                 median)
        elif name == "languages":
            from languages import bench_languages

            res["languages"] = bench_languages(args.quick, log)
        else:
            res["density"] = bench_density(work, args.quick, log, run_child)
        log(f"  ({(perf_ns() - t0) / 1e9:.1f} s)")
    res["wall_s"] = (perf_ns() - started) / 1e9
    cpu1 = cpu_times()
    if cpu0 and cpu1:
        d = [b - a for a, b in zip(cpu0, cpu1)]
        total = sum(d[:8]) or 1
        res["machine"]["steal_pct"] = 100 * d[7] / total
        res["machine"]["busy_pct"] = 100 * (total - d[3] - d[4]) / total
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        res["machine"]["own_pct"] = 100 * own / (res["wall_s"] * (os.cpu_count() or 1))
    res["machine"]["loadavg_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    out = Path(args.output) if args.output else RESULTS / (
        "quick.json" if args.quick else f"only-{args.only}.json" if args.only else "latest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(res))
    log(f"results written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
