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

Only the standard library is imported at module level: the subprocess sections re-run this
file and measure themselves from the first iotwasm import on.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
RANGE_FILTER = ROOT / "examples" / "modules" / "range_filter.wasm"
FILTER_CONFIG = {"field": "value", "min": "10", "max": "30"}
SECTIONS = ("per-message", "cold-start", "micro", "density", "languages", "components")
BATCH_SIZES = (1, 10, 100, 1000)

#: (full, quick) sizes
SIZES = {
    "repeats": (15, 5),                # interleaved repeats per batch size; medians reported
    "fast_msgs": (20_000, 4_000),      # messages per repeat: iotwasm and plain Python ...
    "fast_msgs_batch1": (5_000, 1_000),  # ... times the batch size, up to fast_msgs
    "public_msgs": (1_000, 300),       # wasmtime-py public API, one call per message
    "pywasm_msgs": (40, 8),            # pure-Python interpreter
    "pywasm_repeats": (3, 1),
    "instantiate_n": (1_000, 300),     # instantiations per timed repeat
    "instantiate_repeats": (7, 3),
    "compile_repeats": (7, 3),
    "first_result_runs": (7, 3),
    "density_guests": (10_000, 10_000),
}

perf_ns = time.perf_counter_ns
IN_RECORD = struct.Struct("<qII")
OUT_RECORD = struct.Struct("<IIII")
OUT_HEADER = struct.Struct("<II")


# -- helpers ---------------------------------------------------------------------------------
_scratch: tempfile.TemporaryDirectory | None = None


def scratch() -> Path:
    """A temporary directory for module files and the compile cache, removed at exit."""
    global _scratch
    if _scratch is None:
        _scratch = tempfile.TemporaryDirectory(prefix="iotwasm-bench-")
    return Path(_scratch.name)


def size(name: str, quick: bool) -> int:
    return SIZES[name][1 if quick else 0]


def median(xs):
    return statistics.median(xs)


def timed(fn, repeats: int, *, warmup: int = 1) -> list[int]:
    """Run fn() `warmup` times untimed, then `repeats` times with gc off; nanoseconds each."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            t0 = perf_ns()
            fn()
            out.append(perf_ns() - t0)
        finally:
            gc.enable()
    return out


def interleaved(fns: dict, repeats: int, cpu: dict | None = None) -> dict[str, list[int]]:
    """Time every fn once per round, round after round, so drift hits all of them alike.

    Returns wall-clock nanoseconds per run; when `cpu` is given, it receives the CPU time of
    this thread per run as well (wasm runs on the calling thread), which other processes on
    a busy machine inflate far less than wall time."""
    for fn in fns.values():
        fn()  # warm-up
    out: dict[str, list[int]] = {name: [] for name in fns}
    if cpu is not None:
        cpu.update({name: [] for name in fns})
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            gc.disable()
            try:
                c0, t0 = time.thread_time_ns(), perf_ns()
                fn()
                t1, c1 = perf_ns(), time.thread_time_ns()
            finally:
                gc.enable()
            out[name].append(t1 - t0)
            if cpu is not None:
                cpu[name].append(c1 - c0)
    return out


def cpu_times() -> list[int]:
    """Aggregate /proc/stat cpu line: user nice system idle iowait irq softirq steal ..."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return []


def split(seq, n: int) -> list:
    return [seq[i:i + n] for i in range(0, len(seq), n)]


def statm() -> tuple[int, int]:
    """(virtual, resident) bytes of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        vm, rss = f.read().split()[:2]
    page = os.sysconf("SC_PAGE_SIZE")
    return int(vm) * page, int(rss) * page


def fmt_us(us: float) -> str:
    if us >= 1000:
        return f"{us / 1000:,.2f} ms"
    if us >= 100:
        return f"{us:,.0f} µs"
    if us >= 10:
        return f"{us:.1f} µs"
    return f"{us:.2f} µs"


def fmt_rate(per_s: float) -> str:
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f} M/s"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f} k/s"
    return f"{per_s:.1f} /s"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}×" if x >= 0.1 else f"{x:.4f}×"


def where(e: BaseException) -> str:
    """The exception and the source line it came from (pywasm fails with bare asserts)."""
    tb = traceback.extract_tb(e.__traceback__)
    frame = tb[-1] if tb else None
    loc = ""
    if frame is not None:
        fn = frame.filename
        for marker in ("site-packages/", "benchmarks/"):
            if marker in fn:
                fn = fn.split(marker, 1)[1]
        loc = f" at {fn}:{frame.lineno} in {frame.name}: `{(frame.line or '').strip()}`"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}{': ' + text if text else ''}{loc}"


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_total = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": mem_total,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "wasmtime": ver("wasmtime"),
        "pywasm": ver("pywasm"),
        "iotwasm": ver("iotwasm"),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def machine_line(m: dict) -> str:
    mem = f", {m['memory_bytes'] / 2**30:.0f} GiB RAM" if m.get("memory_bytes") else ""
    return (f"{m['cpu']}, {m['cores']} cores{mem}, {m['os']}, {m['python']}, wasmtime-py "
            f"{m['wasmtime']}, pywasm {m['pywasm']}, {m['date']}")


# -- workload --------------------------------------------------------------------------------
class Workload:
    """The module under test, its grant, and the same logic written as plain Python."""

    def __init__(self, kind: str, path: Path = RANGE_FILTER):
        from iotwasm.engine import Capabilities

        self.kind = kind
        if kind == "range_filter":
            path = path.resolve()
            self.wasm = path.read_bytes()
            self.source = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
            self.module_arg = str(path)
            self.config = dict(FILTER_CONFIG)
            self.caps = Capabilities.grant("config", config=dict(FILTER_CONFIG))
            self.title = "range filter"
            self.python = python_range_filter(self.config["field"], float(self.config["min"]),
                                              float(self.config["max"]))
        elif kind == "echo":
            import wasmtime

            self.wasm = wasmtime.wat2wasm(echo_wat())
            self.source = "ECHO_WAT of tests/conftest.py (hand-written WAT, passes every message)"
            self.module_arg = None  # written to a temporary file when a path is needed
            self.config = {}
            self.caps = Capabilities()
            self.title = "echo (pass-through)"
            self.python = python_echo
        else:
            raise SystemExit(f"unknown workload {kind!r}")

    def module_path(self, tmp: Path) -> str:
        if self.module_arg:
            return self.module_arg
        p = tmp / f"{self.kind}.wasm"
        p.write_bytes(self.wasm)
        return str(p)


def echo_wat(pages: int | None = None) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from conftest import ECHO_WAT
    finally:
        sys.path.pop(0)
    if pages is None:
        return ECHO_WAT
    old = '(memory (export "memory") 2)'
    assert old in ECHO_WAT, "ECHO_WAT changed: cannot make a one-page variant"
    return ECHO_WAT.replace(old, f'(memory (export "memory") {pages})')


def python_range_filter(field: str, lo: float, hi: float):
    """The range filter without a sandbox: parse, look the field up, range-check, collect."""
    loads = json.loads

    def run(batch):
        passed, rejected = [], []
        add = passed.append
        for i, m in enumerate(batch):
            doc = loads(m.payload)
            try:
                v = doc[field]
            except (KeyError, TypeError):
                rejected.append(i)
                continue
            if lo <= v <= hi:
                add(m.payload)
        return passed, rejected

    return run


def python_echo(batch):
    return [m.payload for m in batch], []


def make_messages(n: int, seed: int = 20240601):
    """~100-byte JSON readings; values spread over [-1, 41] so ~half pass [10, 30]."""
    from iotwasm.message import Message

    rng = random.Random(seed)
    sensors = (("temperature", "C"), ("humidity", "%"), ("pressure", "kPa"), ("soil_moisture", "%"))
    out = []
    for i in range(n):
        dev = f"dev-{rng.randrange(10_000):04d}"
        sensor, unit = rng.choice(sensors)
        while True:
            digits = rng.choice((0, 1, 2, 2))
            text = f"{rng.uniform(-1.0, 41.0):.{digits}f}"
            if float(text) not in (10.0, 30.0) and not text.startswith("-0"):
                break  # boundaries and negative zero left out: their semantics are not measured
        ts = 1_700_000_000_000 + i * 137 + rng.randrange(100)
        payload = (f'{{"device":"{dev}","sensor":"{sensor}","value":{text},"unit":"{unit}",'
                   f'"ts":{ts},"seq":{i}}}').encode()
        out.append(Message(f"sensors/{dev}/{sensor}", payload, ts))
    return out


# -- baselines on other runtimes -------------------------------------------------------------
class PublicWasmtime:
    """The same module through wasmtime-py's public API, one iot_process call per message."""

    def __init__(self, wasm: bytes, config: dict[str, str]):
        import wasmtime

        engine = wasmtime.Engine()  # defaults: no fuel, no epoch checks (favours this baseline)
        module = wasmtime.Module(engine, wasm)
        store = wasmtime.Store(engine)
        linker = wasmtime.Linker(engine)
        i32 = wasmtime.ValType.i32()
        for imp in module.imports:
            if (imp.module, imp.name) == ("iot", "config_get"):
                linker.define_func("iot", "config_get", wasmtime.FuncType([i32] * 4, [i32]),
                                   self._config_get, access_caller=True)
            else:
                raise RuntimeError(f"baseline provides no import {imp.module}.{imp.name}")
        self.config = config
        instance = linker.instantiate(store, module)
        ex = instance.exports(store)
        self.store = store
        self.mem = ex["memory"]
        self.process_fn = ex["iot_process"]
        for hook in ("_initialize", "iot_init"):
            if hook in ex:
                ex[hook](store)
        assert ex["iot_abi_version"](store) == 1
        self.cap = 64 * 1024
        self.in_ptr = ex["iot_alloc"](store, self.cap)
        self.out_ptr = ex["iot_alloc"](store, self.cap)
        assert self.in_ptr and self.out_ptr

    def _config_get(self, caller, kp, kn, vp, vcap):
        mem = caller["memory"]
        value = self.config.get(bytes(mem.read(caller, kp, kp + kn)).decode())
        if value is None:
            return -1
        data = value.encode()
        if len(data) <= vcap:
            mem.write(caller, data, vp)
        return len(data)

    def run(self, batch):
        store, mem, call = self.store, self.mem, self.process_fn
        in_ptr, out_ptr, cap = self.in_ptr, self.out_ptr, self.cap
        zero = bytes(8)
        pack, unpack, unpack_rec = IN_RECORD.pack, OUT_HEADER.unpack, OUT_RECORD.unpack_from
        passed, rejected = [], []
        for i, m in enumerate(batch):
            topic = m.topic.encode()
            record = pack(m.timestamp_ms, len(topic), len(m.payload)) + topic + m.payload
            mem.write(store, record, in_ptr)
            mem.write(store, zero, out_ptr)
            rc = call(store, in_ptr, len(record), 1, out_ptr, cap)
            used, done = unpack(mem.read(store, out_ptr, out_ptr + 8))
            if rc != 0 or done != 1:
                raise RuntimeError(f"iot_process returned {rc}, inputs_done {done}")
            if used:
                body = mem.read(store, out_ptr + 8, out_ptr + 8 + used)
                _, kind, tl, pl = unpack_rec(body, 0)
                if kind == 0:
                    passed.append(bytes(body[16 + tl:16 + tl + pl]))
                else:
                    rejected.append(i)
        return passed, rejected


class Pywasm:
    """The same module on pywasm (a WebAssembly interpreter written in Python), batch ABI."""

    def __init__(self, wasm: bytes, config: dict[str, str]):
        import io

        import pywasm

        self.config = config
        core = pywasm.core
        rt = core.Runtime()
        desc = core.ModuleDesc.from_reader(io.BytesIO(wasm))
        i32 = core.ValType.i32()
        for imp in desc.imps:
            if (imp.module, imp.name) == ("iot", "config_get"):
                rt.imports.setdefault("iot", {})["config_get"] = rt.allocate_func_host(
                    core.FuncType([i32] * 4, [i32]), self._config_get)
            else:
                raise RuntimeError(f"baseline provides no import {imp.module}.{imp.name}")
        self.rt = rt
        self.inst = rt.instance(desc)
        self.mem = rt.exported_memory(self.inst, "memory")
        names = {e.name for e in self.inst.exps}
        for hook in ("_initialize", "iot_init"):
            if hook in names:
                rt.invocate(self.inst, hook, [])
        assert rt.invocate(self.inst, "iot_abi_version", []) == [1]
        self.cap = 256 * 1024
        self.in_ptr = rt.invocate(self.inst, "iot_alloc", [self.cap])[0]
        self.out_ptr = rt.invocate(self.inst, "iot_alloc", [self.cap])[0]
        assert self.in_ptr > 0 and self.out_ptr > 0

    def _config_get(self, machine, args):
        kp, kn, vp, vcap = (a & 0xFFFFFFFF for a in args)
        mem = machine.store.mems[machine.stack.frame[-1].module.mems[0]]
        value = self.config.get(bytes(mem.data[kp:kp + kn]).decode())
        if value is None:
            return [-1]
        data = value.encode()
        if len(data) <= vcap:
            mem.data[vp:vp + len(data)] = data
        return [len(data)]

    def run(self, batch):
        from iotwasm.engine.abi_v1 import pack_inputs, parse_outputs

        data = pack_inputs(batch)
        assert len(data) <= self.cap
        mem = self.mem
        mem.data[self.in_ptr:self.in_ptr + len(data)] = data
        mem.data[self.out_ptr:self.out_ptr + 8] = bytes(8)
        rc = self.rt.invocate(self.inst, "iot_process",
                              [self.in_ptr, len(data), len(batch), self.out_ptr, self.cap])[0]
        used, done = OUT_HEADER.unpack(bytes(mem.data[self.out_ptr:self.out_ptr + 8]))
        if rc != 0 or done != len(batch):
            raise RuntimeError(f"iot_process returned {rc}, inputs_done {done} of {len(batch)}")
        body = bytes(mem.data[self.out_ptr + 8:self.out_ptr + 8 + used])
        outs, errs = parse_outputs(body, len(batch), done, 0)
        return [o.payload for o in outs], [i for i, _ in errs]


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


# -- section 2: cold start -------------------------------------------------------------------
def bench_cold_start(work: Workload, quick: bool, log) -> dict:
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
        entry = artifact_file.read_bytes()  # magic, CRC-32, description length, description
        blob = entry[24 + struct.unpack_from("<I", entry, 20)[0]:]
        t0 = perf_ns()
        wasmtime.Module.deserialize(eng, blob)
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


# -- section 3: density ----------------------------------------------------------------------
def bench_density(work: Workload, quick: bool, log) -> dict:
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


def run_child(kind: str, spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} subprocess failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
            res["cold_start"] = bench_cold_start(work, args.quick, log)
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
            res["density"] = bench_density(work, args.quick, log)
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
