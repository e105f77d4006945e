"""What benchmarks/run.py reports besides its figures: the machine it ran on, the load on it
(from /proc/stat), and the markdown summary of a results dict, printed after a run.

The summary reads only the results dict, the same one written to benchmarks/results/*.json,
and formats the micro, languages and components sections through their own modules; it
stands apart from the sections so that they are not tied to how it lays their tables out.
"""

from __future__ import annotations

import os

from helpers import fmt_rate, fmt_ratio, fmt_us
from machine import machine_basics, package_version


def cpu_times() -> list[int]:
    """Aggregate /proc/stat cpu line: user nice system idle iowait irq softirq steal ..."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return []


def machine_info() -> dict:
    return {**machine_basics(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "wasmtime": package_version("wasmtime"), "pywasm": package_version("pywasm"),
            "iotwasm": package_version("iotwasm"),
            "loadavg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def machine_line(m: dict) -> str:
    mem = f", {m['memory_bytes'] / 2**30:.0f} GiB RAM" if m.get("memory_bytes") else ""
    return (f"{m['cpu']}, {m['cores']} cores{mem}, {m['os']}, {m['python']}, wasmtime-py "
            f"{m['wasmtime']}, pywasm {m['pywasm']}, {m['date']}")


# -- report ----------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# iotwasm benchmarks{' (--quick)' if res['quick'] else ''}", "",
             f"Machine: {machine_line(m)}", "",
             f"Workload: {res['workload_title']} — `{res['module']}`", ""]
    pm = res.get("per_message")
    if pm:
        pb = pm["payload_bytes"]
        lines += ["## Per-message cost", "",
                  f"{pm['messages']:,} JSON messages of {pb['min']}–{pb['max']} bytes (mean "
                  f"{pb['mean']:.0f}), {pm['pass_rate']:.0%} pass; median of "
                  f"{pm['rows'][0]['repeats']} interleaved repeats. \"vs Python\" = plain-Python "
                  f"time / this time (above 1 = faster than plain Python). \"best\" = fastest "
                  f"repeat. \"CPU\" = median CPU time of the benchmark thread (wasm runs on it): when "
                  f"it is well below the wall time, the run was waiting for a CPU.", "",
                  "| batch | implementation | µs/msg (median) | best | msgs/s | vs Python | "
                  "CPU µs/msg | msgs/repeat |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in pm["rows"]:
            lines.append(f"| {r['batch']} | {r['impl']} | {r['us_per_msg']:.3f} | "
                         f"{r['min_us']:.3f} | {fmt_rate(r['msgs_per_s'])} | "
                         f"{fmt_ratio(r['vs_python'])} | {r['cpu_us_per_msg']:.3f} | "
                         f"{r['messages']:,} |")
        bd = pm.get("breakdown")
        if bd:
            lines += ["", f"Where an engine guest's time goes at batch {bd['batch']} on the "
                          "Python batch path (each step timed on its own), and the whole call on "
                          "the native one:", "", "| step | µs/msg |", "|---|---:|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in bd["us_per_msg"].items()]
        p = pm["pywasm"]
        lines.append("")
        if p.get("ok"):
            lines.append(f"pywasm (pure-Python interpreter): {p['messages']} messages in batches "
                         f"of {p['batch']}, extrapolated: {fmt_us(p['us_per_msg'])}/msg, "
                         f"{fmt_rate(p['msgs_per_s'])}; vs plain Python at batch "
                         f"{p['python_batch']}: {fmt_ratio(p['vs_python'])}.")
        else:
            lines.append(f"pywasm: no figure — {p['reason']}")
        lines += ["", "Targets (iotwasm container, batch ≥ 100):", ""]
        for r in pm["rows"]:
            if r["impl"] == "iotwasm container" and r["batch"] >= 100:
                lines.append(f"- batch {r['batch']}: ≤ 1 µs/msg: "
                             f"{'met' if r['us_per_msg'] <= 1 else 'NOT met'} "
                             f"({r['us_per_msg']:.3f}); throughput ≥ plain Python: "
                             f"{'met' if r['vs_python'] >= 1 else 'NOT met'} "
                             f"({fmt_ratio(r['vs_python'])})")
        lines.append("")
    cs = res.get("cold_start")
    if cs:
        lines += ["## Cold start", "", "| step | median | target |", "|---|---:|---|",
                  f"| compile, no cache (`Runtime().load`) | {cs['compile_ms']:.2f} ms | |",
                  f"| `wasmtime.Module(engine, wasm)` alone | {cs['compile_raw_ms']:.2f} ms | |",
                  f"| load from the disk cache (second `Runtime(cache_dir).load`) | "
                  f"{fmt_us(cs['deserialize_ms'] * 1000)} | |",
                  f"| `wasmtime.Module.deserialize` alone (same artifact) | "
                  f"{fmt_us(cs['deserialize_raw_ms'] * 1000)} | |",
                  f"| `wasmtime.Store(engine)` alone | {fmt_us(cs['store_us'])} | |",
                  f"| bare instantiate (`Store` + `pre.instantiate`) | {fmt_us(cs['instantiate_us'])} "
                  f"| ≤ 50 µs: {'met' if cs['instantiate_us'] <= 50 else 'NOT met'} |",
                  f"| ready guest (`factory.new_guest()`: + exports bound, `iot_init` run) | "
                  f"{fmt_us(cs['ready_guest_us'])} | |",
                  f"| first result after loading a cached module (fresh process) | "
                  f"{cs['child_first_result_ms']:.2f} ms | ≤ 10 ms: "
                  f"{'met' if cs['child_first_result_ms'] <= 10 else 'NOT met'} |",
                  f"| … `Runtime(cache_dir)` | {cs['child_runtime_ms']:.2f} ms | |",
                  f"| … `load` (cache hit) | {cs['child_load_ms']:.2f} ms | |",
                  f"| … `WasmContainer(...).start()` | {cs['child_start_ms']:.2f} ms | |",
                  f"| … first `process()` | {cs['child_process_ms']:.2f} ms | |",
                  f"| subprocess wall time, total | {cs['child_wall_ms']:.0f} ms | |",
                  f"| … of which `import iotwasm` (wasmtime included) | {cs['child_imports_ms']:.0f} ms | |",
                  f"| … bare `python -c pass`, for reference | {cs['python_startup_ms']:.0f} ms | |",
                  "", f"Module {cs['wasm_bytes']:,} bytes; cached artifact "
                  f"{cs['artifact_bytes']:,} bytes; first-result figures are medians of "
                  f"{cs['child_runs']} subprocesses.", ""]
    if res.get("micro"):
        from micro import markdown as micro_markdown

        lines += micro_markdown(res["micro"])
    de = res.get("density")
    if de:
        lines += ["## Density", "",
                  "| module | guests | RSS before | RSS after | KiB/guest | create µs/guest | "
                  "alive check | RSS after check | target |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---|"]
        for c in de["cases"]:
            target = (f"< 300 MB: {'met' if c['rss_after'] < 300e6 else 'NOT met'}"
                      if c["module"].startswith("echo, 1 page") and c["n"] >= 10_000 else "")
            lines.append(f"| {c['module']} | {c['n']:,} | {c['rss_before'] / 1e6:.0f} MB | "
                         f"{c['rss_after'] / 1e6:.0f} MB | {c['kib_per_guest']:.1f} | "
                         f"{c['create_us']:.1f} | {c['alive_checked']} of {c['n']:,} ran a "
                         f"message | {c['rss_after_check'] / 1e6:.0f} MB | {target} |")
        lines += ["", "RSS from /proc/self/statm of the subprocess holding the guests (MB = "
                  "10^6 bytes); virtual size after: " + ", ".join(
                      f"{c['vm_after'] / 2**30:,.0f} GiB" for c in de["cases"]) +
                  " (address space reserved for linear memories, not memory in use)."]
    if res.get("languages"):
        from languages import markdown as languages_markdown

        lines += [""] + languages_markdown(res["languages"])
    la = (m.get("loadavg_at_start"), m.get("loadavg_at_end"))
    load = f"1-minute load average {la[0]:.2f} at start, {la[1]:.2f} at end" if None not in la else ""
    if m.get("steal_pct") is not None:
        load += (f"; CPUs {m['busy_pct']:.0f}% busy during the run, {m['own_pct']:.0f}% by the "
                 f"benchmark itself, {m['steal_pct']:.1f}% stolen by the hypervisor")
    load = f" ({load})" if load else ""
    lines += ["", f"Total wall time: {res['wall_s']:.1f} s{load}"]
    if res.get("components"):
        from components import markdown as components_markdown

        lines += components_markdown(res["components"])
    return "\n".join(lines)
