"""What every section of benchmarks/run.py measures with: the sizes of a full and a quick
run, the timing loops, the scratch directory, and how figures and failures are written.

They live apart from run.py so that each section module can import them directly: importing
run.py from a section would load a second copy of it when it runs as a script (as __main__).
The scratch directory is module state here, one for the whole run, whoever asks for it (run.py
hands `scratch` on to micro.py). Standard library only at module level, as in run.py: the
subprocess sections import this before the first iotwasm import they time.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
import traceback
from pathlib import Path

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


def split(seq, n: int) -> list:
    return [seq[i:i + n] for i in range(0, len(seq), n)]


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
