"""Section 3 of benchmarks/run.py (`--only density`): how many ready guests a process holds,
the memory each costs and how long one takes to create, each case in a fresh interpreter.

`child_density` is what that interpreter runs (`run.py --child density`), kept next to the
figures it produces, as is `statm`, which reads its memory. run.py passes `run_child` in, as
it passes helpers to micro.py: the child re-runs run.py itself, so what starts it stays there.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from helpers import perf_ns, scratch, size
from workload import FILTER_CONFIG, Workload, echo_wat


def statm() -> tuple[int, int]:
    """(virtual, resident) bytes of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        vm, rss = f.read().split()[:2]
    page = os.sysconf("SC_PAGE_SIZE")
    return int(vm) * page, int(rss) * page


# -- section 3: density ----------------------------------------------------------------------
def bench_density(work: Workload, quick: bool, log, run_child) -> dict:
    import wasmtime

    n = size("density_guests", quick)
    tmp = scratch()
    cases = []
    one_page = tmp / "echo-1page.wasm"
    one_page.write_bytes(wasmtime.wat2wasm(echo_wat(pages=1)))
    cases.append(("echo, 1 page (ECHO_WAT with memory 1)", str(one_page), "echo"))
    if work.kind == "range_filter":
        cases.append((f"{Path(work.source).name}", work.module_path(tmp), "range_filter"))
    out = []
    for label, path, kind in cases:
        t0 = perf_ns()
        res = run_child("density", {"module": path, "kind": kind, "n": n})
        res["wall_s"] = (perf_ns() - t0) / 1e9
        res["module"] = label
        out.append(res)
        log(f"  {label}: {res['n']:,} guests, RSS {res['rss_before'] / 2**20:.0f} -> "
            f"{res['rss_after'] / 2**20:.0f} MiB, {res['kib_per_guest']:.1f} KiB/guest, "
            f"{res['create_us']:.1f} µs/guest, {res['alive_checked']} checked alive")
    return {"guests": n, "cases": out}


def child_density(spec: dict) -> dict:
    from iotwasm.engine import Capabilities, HostContext, Limits, Runtime, prepare
    from iotwasm.message import Message

    n = spec["n"]
    caps = (Capabilities.grant("config", config=dict(FILTER_CONFIG))
            if spec["kind"] == "range_filter" else Capabilities())
    rt = Runtime()
    limits = Limits(max_instances=20_000)
    compiled = rt.load(spec["module"], name="density", limits=limits)
    factory = prepare(compiled, limits, HostContext("density", caps))
    factory.new_guest().close()  # one-time costs (first instance of the engine) not counted
    gc.collect()
    vm0, rss0 = statm()
    guests = []
    gc.disable()
    t0 = perf_ns()
    for _ in range(n):
        guests.append(factory.new_guest())
    t1 = perf_ns()
    gc.enable()
    vm1, rss1 = statm()
    payload = b'{"device":"dev-0042","sensor":"temperature","value":23.71,"unit":"C","ts":1700000000123}'
    msg = Message("sensors/dev-0042/temperature", payload, 1_700_000_000_123)
    checked = 0
    for g in guests[::100]:
        r = g.process([msg])
        assert [o.payload for o in r.outputs] == [payload] and not r.dead_letters
        checked += 1
    vm2, rss2 = statm()
    pages = guests[0].memory_pages()
    live = sum(1 for g in guests if g.store is not None)
    rt.close()
    return {"n": n, "live": live, "rss_before": rss0, "rss_after": rss1, "rss_after_check": rss2,
            "vm_before": vm0, "vm_after": vm1, "kib_per_guest": (rss1 - rss0) / n / 1024,
            "create_us": (t1 - t0) / 1000 / n, "alive_checked": checked,
            "initial_pages": compiled.info.memory_min_pages, "pages_after_check": pages}
