"""Section 1 of benchmarks/run.py (`--only per-message`): what a message costs through an
iotwasm container and an engine guest, against plain Python, wasmtime-py's public API and
pywasm, at batch sizes 1 to 1,000; and where an engine guest's time goes, step by step.

Every implementation must give plain Python's passing set before anything is timed. A module
of its own, as each section is, so that it reads without the others' code; the hosts it
compares against on other runtimes are in baselines.py.
"""

from __future__ import annotations

import statistics

from baselines import PublicWasmtime, Pywasm
from helpers import fmt_us, interleaved, median, perf_ns, scratch, size, split, timed, where
from workload import Workload, make_messages

BATCH_SIZES = (1, 10, 100, 1000)


# -- section 1: per-message cost -------------------------------------------------------------
def bench_per_message(work: Workload, quick: bool, log) -> dict:
    from iotwasm.container import WasmContainer
    from iotwasm.engine import HostContext, Limits, Runtime, prepare

    repeats = size("repeats", quick)
    n_fast, n_public = size("fast_msgs", quick), size("public_msgs", quick)
    n_b1 = size("fast_msgs_batch1", quick)
    msgs = make_messages(n_fast)
    sizes = [len(m.payload) for m in msgs]
    expect_all, rejected = work.python(msgs)
    assert not rejected
    pass_rate = len(expect_all) / len(msgs)
    log(f"  {len(msgs):,} messages, payload {min(sizes)}-{max(sizes)} bytes "
        f"(mean {statistics.fmean(sizes):.0f}), {pass_rate:.1%} pass")

    rt = Runtime()
    tmp = scratch()
    container = WasmContainer("bench", work.module_path(tmp), runtime=rt,
                              capabilities=work.caps).start()
    compiled = rt.load(work.wasm, name="bench")
    guest = prepare(compiled, Limits(), HostContext("bench", work.caps)).new_guest()
    public = PublicWasmtime(work.wasm, work.config)

    def via_result(process):
        def run(batch):
            r = process(batch)
            if r.dead_letters:
                raise AssertionError(f"dead letter: {r.dead_letters[0].reason}")
            return [o.payload for o in r.outputs], []
        return run

    impls = {  # name: (timed callable, callable returning (passing, rejected), public?)
        "iotwasm container": (container.process, via_result(container.process), False),
        "iotwasm engine guest": (guest.process, via_result(guest.process), False),
        "plain Python": (work.python, work.python, False),
        "wasmtime-py public API": (public.run, public.run, True),
    }

    def count(bs: int, slow: bool) -> int:
        """Messages per timed repeat: fewer at batch 1 and for the public-API baseline."""
        return n_public if slow else min(n_fast, n_b1 * bs)

    # the same passing set, in the same order, from every implementation, before any timing
    for bs in BATCH_SIZES:
        for name, (_, check, slow) in impls.items():
            n = count(bs, slow)
            got = []
            for b in split(msgs[:n], bs):
                passed, rej = check(b)
                assert not rej, f"{name} rejected inputs {rej[:3]}"
                got.extend(passed)
            want = work.python(msgs[:n])[0]
            assert got == want, (
                f"{name} at batch {bs}: {len(got)} passing, plain Python {len(want)}; first "
                f"difference at {next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))}")
    log(f"  verified: all {len(impls)} implementations give the plain-Python passing set "
        f"at batch sizes {', '.join(map(str, BATCH_SIZES))}")

    def loop(fn, bl):
        def go():
            for b in bl:
                fn(b)
        return go

    rows = []
    for bs in BATCH_SIZES:
        n_of = {name: count(bs, slow) for name, (_, _, slow) in impls.items()}
        cpu: dict = {}
        ns = interleaved({name: loop(fn, split(msgs[:n_of[name]], bs))
                          for name, (fn, _, _) in impls.items()}, repeats, cpu)
        per = {name: [x / 1000 / n_of[name] for x in xs] for name, xs in ns.items()}
        per_cpu = {name: median(xs) / 1000 / n_of[name] for name, xs in cpu.items()}
        base = median(per["plain Python"])
        for name, xs in per.items():
            us = median(xs)
            rows.append({"batch": bs, "impl": name, "us_per_msg": us, "msgs_per_s": 1e6 / us,
                         "vs_python": base / us, "min_us": min(xs), "max_us": max(xs),
                         "cpu_us_per_msg": per_cpu[name],
                         "cpu_vs_python": per_cpu["plain Python"] / per_cpu[name],
                         "messages": n_of[name], "repeats": repeats})
        log(f"  batch {bs:>4}: " + ", ".join(f"{name} {fmt_us(median(per[name]))}"
                                             for name in impls))

    # the steps are those of the Python batch path (a runtime without the native batch call),
    # next to the whole call on the native path the other rows use
    with Runtime(batch_calls="python") as py_rt:
        py_guest = prepare(py_rt.load(work.wasm, name="bench"), Limits(),
                           HostContext("bench", work.caps)).new_guest()
        parts = breakdown(py_guest, guest, msgs, 1000, repeats, log)
        py_guest.close()
    pyw = bench_pywasm(work, msgs, quick, rows, log)
    container.stop()
    guest.close()
    rt.close()
    return {"workload": work.kind, "module": work.source, "messages": len(msgs),
            "payload_bytes": {"min": min(sizes), "mean": statistics.fmean(sizes),
                              "max": max(sizes)},
            "pass_rate": pass_rate, "rows": rows, "breakdown": parts, "pywasm": pyw}


NATIVE_ROW = "whole guest.process(), native batch call (framing, call and outputs in C)"


def breakdown(guest, native, msgs, bs: int, repeats: int, log) -> dict:
    """Where an engine guest's time goes per message, step by step, on the Python batch path
    (`guest`; uses engine internals), and the whole call on the native one (`native`)."""
    from iotwasm.engine.abi_v1 import OUT_HEADER as HDR
    from iotwasm.engine.abi_v1 import pack_inputs, parse_outputs

    batches = split(msgs, bs)
    for b in batches:
        guest.process(b)  # buffers at their final size
    datas = [pack_inputs(b) for b in batches]
    mem, zero = guest.mem, bytes(8)
    bodies = []

    def copy_in_and_call(keep=None):
        for d, b in zip(datas, batches):
            mem.write(guest.in_ptr, d)
            mem.write(guest.out_ptr, zero)
            guest._invoke(guest._process_fn, guest.in_ptr, len(d), len(b), guest.out_ptr,
                          guest.out_cap)
            if keep is not None:
                used, _ = HDR.unpack(mem.read(guest.out_ptr, 8))
                keep.append(mem.read(guest.out_ptr + 8, used))

    copy_in_and_call(bodies)
    def each(fn, items):
        def go():
            for x in items:
                fn(*x)
        return go

    hdr_at, body_at = guest.out_ptr, guest.out_ptr + 8
    steps = {
        "pack_inputs (framing in Python)": each(pack_inputs, [(b,) for b in batches]),
        "copy in + iot_process call (deadline, call, memory refresh)": copy_in_and_call,
        "copy out (header + records)": each(lambda n: (mem.read(hdr_at, 8), mem.read(body_at, n)),
                                            [(len(x),) for x in bodies]),
        "parse_outputs (validation + Output tuples)": each(
            parse_outputs, [(x, len(b), len(b), 0) for x, b in zip(bodies, batches)]),
        "whole guest.process()": each(guest.process, [(b,) for b in batches]),
        NATIVE_ROW: each(native.process, [(b,) for b in batches]),
    }
    for b in batches:
        native.process(b)  # buffers at their final size
    out = {name: median(ns) / 1000 / len(msgs) for name, ns in interleaved(steps, repeats).items()}
    out["rest of process() (loop, checks, BatchResult)"] = (
        out["whole guest.process()"] - sum(v for k, v in out.items()
                                           if k not in ("whole guest.process()", NATIVE_ROW)))
    log(f"  breakdown at batch {bs}: " + ", ".join(f"{k.split(' (')[0]} {v:.3f}" for k, v in out.items()))
    return {"batch": bs, "us_per_msg": out}


def bench_pywasm(work: Workload, msgs, quick: bool, rows, log) -> dict:
    n = size("pywasm_msgs", quick)
    bs = min(10, n)
    sample = msgs[:n]
    import importlib.util

    if importlib.util.find_spec("pywasm") is None:
        log("  pywasm: not installed (pip install -e '.[bench]')")
        return {"ok": False, "reason": "pywasm is not installed"}
    try:
        t0 = perf_ns()
        runner = Pywasm(work.wasm, work.config)
        load_ms = (perf_ns() - t0) / 1e6
        got = []
        for b in split(sample, bs):
            got.extend(runner.run(b)[0])
    except Exception as e:  # report why the interpreter cannot run the module
        reason = where(e)
        log(f"  pywasm cannot run {work.source}: {reason}")
        return {"ok": False, "reason": reason}
    want = work.python(sample)[0]
    assert got == want, f"pywasm: {len(got)} passing, plain Python {len(want)}"
    batches = split(sample, bs)

    def go():
        for b in batches:
            runner.run(b)

    xs = [ns / 1000 / n for ns in timed(go, size("pywasm_repeats", quick), warmup=0)]

    def py_go():
        for b in batches:
            work.python(b)

    py = [ns / 1000 / n for ns in timed(py_go, 7, warmup=1)]
    us = median(xs)
    # the ratio is against plain Python at the nearest batch size of the main table, which
    # ran on many more messages than this sample
    near = min(BATCH_SIZES, key=lambda b: abs(b - bs))
    base = next(r["us_per_msg"] for r in rows if r["impl"] == "plain Python" and r["batch"] == near)
    log(f"  pywasm: {fmt_us(us)}/msg over {n} messages in batches of {bs} (verified; "
        f"plain Python on the same sample {fmt_us(median(py))}); parse+instantiate {load_ms:.0f} ms")
    return {"ok": True, "messages": n, "batch": bs, "us_per_msg": us, "msgs_per_s": 1e6 / us,
            "python_batch": near, "python_us_per_msg": base, "vs_python": base / us,
            "python_us_per_msg_same_sample": median(py), "load_ms": load_ms, "repeats": len(xs)}
