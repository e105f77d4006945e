"""Start-up and fixed-cost figures against their targets, in one run (`run.py --only micro`).

    ready guest            factory.new_guest(): instance + exports bound + init's state  ≤ 50 µs
                           (the factory's first guest ran iot_init; later ones get its
                           snapshot when the module allows: docs/engine.md)
    bare instantiate       Store + InstancePre.instantiate                              ≤ 15 µs
    load from disk cache   Runtime(cache_dir).load() of a module compiled before        ≤ 100 µs
                           (in a quiet process, and again with another thread of the
                           process running on another core: wasmtime's mapping of the
                           code then interrupts it, as in a busy node)
    batch of one           container.process([m]) / plain Python on the same message    ≤ 1.0×
    one at a time          a route fed by a client that waits for each message to be
                           through: default linger / no linger, messages a second       ≥ 0.9×

Each start-up figure is taken with the default (on-demand) allocator and with
`Runtime(pool_slots=...)`, the pooling allocator, side by side. Every figure is reported as
wall time and as CPU time of the measuring thread: on a machine busy with other work the CPU
time is the steadier of the two; the target ratio uses the CPU figure. Ratio = figure /
target, so at most 1 means the target is met.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

TARGETS_US = {"ready_guest": 50.0, "instantiate": 15.0, "cached_load": 100.0,
              "cached_load_busy": 100.0}
SIZES = {"ops": (1_000, 300), "repeats": (9, 5), "loads": (60, 20), "b1_msgs": (3_000, 1_000),
         "b1_repeats": (15, 7), "closed_msgs": (3_000, 500), "closed_repeats": (5, 3)}
#: a route's default lingering may cost a one-at-a-time client at most this share of its rate
CLOSED_LOOP_TARGET = 0.9


def _size(name: str, quick: bool) -> int:
    return SIZES[name][1 if quick else 0]


def _per_op(make, k: int, repeats: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per call of make(), medians of `repeats` runs of k calls; what it
    returns is kept alive until the run ends, so freeing is not timed."""
    wall, cpu = [], []
    for r in range(repeats + 1):
        keep = []
        gc.collect()
        gc.disable()
        try:
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            for _ in range(k):
                keep.append(make())
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
        finally:
            gc.enable()
        keep.clear()
        if r:  # the first run warms up
            wall.append((t1 - t0) / 1000 / k)
            cpu.append((c1 - c0) / 1000 / k)
    return statistics.median(wall), statistics.median(cpu)


def _cached_loads(path: str, cache_dir: Path, pool_slots: int, quick: bool) -> tuple[float, float]:
    """(wall µs, CPU µs) of a load from the disk cache, each in a fresh runtime (its engine
    made beforehand), medians."""
    from iotwasm.engine import Limits, Runtime

    wall, cpu = [], []
    for _ in range(_size("loads", quick) + 1):
        rt = Runtime(cache_dir, pool_slots=pool_slots)
        rt.engine(rt.settings_for(Limits()))
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        rt.load(path, name="bench")
        t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
        assert rt.cache is not None and rt.cache.hits == 1 and rt.cache.misses == 0, "not a cache hit"
        rt.close()
        wall.append((t1 - t0) / 1000)
        cpu.append((c1 - c0) / 1000)
    return statistics.median(wall[1:]), statistics.median(cpu[1:])


@contextlib.contextmanager
def _busy_thread() -> Iterator[None]:
    """Another thread of this process hashing without the GIL, as a node's lane threads,
    outbox thread and ticker run beside a load: making the loaded code executable then has
    to interrupt it (a TLB shootdown), which a quiet process does not pay."""
    stop = threading.Event()
    data = bytes(1 << 22)

    def spin() -> None:
        while not stop.is_set():
            hashlib.sha256(data)   # releases the GIL for the whole hash

    thread = threading.Thread(target=spin, name="bench-busy", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _startup(work, path: str, cache_dir: Path, pool_slots: int, quick: bool) -> dict:
    import wasmtime

    from iotwasm.engine import HostContext, Limits, Runtime, prepare

    k, reps = _size("ops", quick), _size("repeats", quick)
    out: dict = {"cached_load": _cached_loads(path, cache_dir, pool_slots, quick)}
    with _busy_thread():
        out["cached_load_busy"] = _cached_loads(path, cache_dir, pool_slots, quick)

    rt = Runtime(cache_dir, pool_slots=pool_slots)
    factory = prepare(rt.load(path, name="bench"), Limits(), HostContext("bench", work.caps))
    engine = factory.engine

    def bare():
        s = wasmtime.Store(engine)
        return s, factory.pre.instantiate(s)

    out["instantiate"] = _per_op(bare, k, reps)
    out["ready_guest"] = _per_op(factory.new_guest, k, reps)
    rt.close()
    return out


def _batch_of_one(work, path: str, quick: bool, make_messages, interleaved) -> dict:
    from iotwasm.container import WasmContainer
    from iotwasm.engine import HostContext, Limits, Runtime, prepare

    msgs = make_messages(_size("b1_msgs", quick))
    batches = [[m] for m in msgs]
    rt = Runtime()
    container = WasmContainer("bench", path, runtime=rt, capabilities=work.caps).start()
    guest = prepare(rt.load(path, name="bench"), Limits(),
                    HostContext("bench", work.caps)).new_guest()
    want = [work.python(b)[0] for b in batches]
    for name, process in (("container", container.process), ("guest", guest.process)):
        got = [[o.payload for o in process(b).outputs] for b in batches]
        assert got == want, f"{name}: outputs differ from plain Python's"

    def loop(fn):
        def go():
            for b in batches:
                fn(b)
        return go

    cpu: dict = {}
    wall = interleaved({"plain Python": loop(work.python), "engine guest": loop(guest.process),
                        "container": loop(container.process)}, _size("b1_repeats", quick), cpu)
    container.stop()
    rt.close()
    n = len(batches)
    return {name: (statistics.median(wall[name]) / 1000 / n, statistics.median(cpu[name]) / 1000 / n)
            for name in wall}


def _one_at_a_time(quick: bool) -> dict:
    """Messages a second through a route (a no-op step, a sink that keeps nothing) from a
    client that offers the next message only once the last is through, with the default
    `BatchPolicy` and with lingering off, alternated: such a client can never give a linger
    company, so the lane must not make it wait (`pipeline.lanes.LingerBackoff`)."""
    import asyncio

    from iotwasm.message import BatchResult, Message, Output
    from iotwasm.messaging.acl import TopicACL
    from iotwasm.pipeline.route import BatchPolicy, RouteRunner

    class Step:
        name = "noop"
        acl = TopicACL(subscribe=["#"], publish=["#"])

        def process(self, msgs):
            return BatchResult([Output(i, None, m.payload) for i, m in enumerate(msgs)], [])

    class Sink:
        name = "none"

        async def deliver(self, msgs, variables):
            return []

    n = _size("closed_msgs", quick)

    async def rate(batch: BatchPolicy) -> float:
        runner = RouteRunner("bench", [Step()], [Sink()], batch=batch)
        runner.start()
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        for _ in range(n):
            done = loop.create_future()
            await runner.offer(Message("t", b"x"), {}, done)
            await done
        dt = time.perf_counter() - t0
        await runner.stop()
        return n / dt

    policies = {"default linger": BatchPolicy(), "no linger": BatchPolicy(max_linger_s=0.0)}
    rates: dict[str, list[float]] = {k: [] for k in policies}
    for _ in range(_size("closed_repeats", quick)):
        for name, batch in policies.items():
            rates[name].append(asyncio.run(rate(batch)))
    return {name: statistics.median(r) for name, r in rates.items()}


def bench_micro(work, quick: bool, log, scratch, make_messages, interleaved) -> dict:
    from iotwasm.engine import Runtime

    tmp = scratch()
    path = work.module_path(tmp)
    cache_dir = tmp / "micro-cache"
    slots = _size("ops", quick) + 16
    for pool in (0, slots):  # fills the cache (the allocator is part of the engine's key)
        with Runtime(cache_dir, pool_slots=pool) as rt:
            rt.load(path, name="bench")
    res = {"on_demand": _startup(work, path, cache_dir, 0, quick),
           "pooled": _startup(work, path, cache_dir, slots, quick),
           "pool_slots": slots,
           "batch_of_one": _batch_of_one(work, path, quick, make_messages, interleaved),
           "one_at_a_time": _one_at_a_time(quick)}
    for mode in ("on_demand", "pooled"):
        r = res[mode]
        log(f"  {mode}: " + ", ".join(f"{k} {r[k][1]:.1f} µs CPU ({r[k][0]:.1f} wall)"
                                      for k in TARGETS_US))
    b1 = res["batch_of_one"]
    log("  batch of one: " + ", ".join(f"{k} {v[1]:.2f} µs CPU ({v[0]:.2f} wall)"
                                       for k, v in b1.items()))
    one = res["one_at_a_time"]
    log("  one at a time through a route: " + ", ".join(f"{k} {v:,.0f} msg/s" for k, v in one.items()))
    return res


def markdown(res: dict) -> list[str]:
    lines = ["## Start-up and fixed costs against their targets", "",
             "Median CPU time of the measuring thread (wall time in brackets); ratio = CPU "
             "figure / target, at most 1 = met. Pooled: `Runtime(pool_slots="
             f"{res['pool_slots']})`.", "",
             "| figure | target | on demand | ratio | pooled | ratio |",
             "|---|---:|---:|---:|---:|---:|"]
    names = {"ready_guest": "ready guest (`new_guest()`, init's state in place)",
             "instantiate": "bare instantiate (`Store` + `pre.instantiate`)",
             "cached_load": "load from the disk cache (fresh `Runtime`)",
             "cached_load_busy": "the same, another thread of the process busy"}
    for key, target in TARGETS_US.items():
        od, po = res["on_demand"][key], res["pooled"][key]
        lines.append(f"| {names[key]} | ≤ {target:g} µs | {od[1]:.1f} µs ({od[0]:.1f}) | "
                     f"{od[1] / target:.2f} | {po[1]:.1f} µs ({po[0]:.1f}) | "
                     f"{po[1] / target:.2f} |")
    b1 = res["batch_of_one"]
    py = b1["plain Python"]
    lines += ["", "Batch of one (one message per call, same messages, interleaved repeats; "
              "target: container ≤ 1.0× plain Python):", "",
              "| path | µs/msg CPU | wall | × plain Python (CPU) |", "|---|---:|---:|---:|"]
    for name, (wall, cpu) in b1.items():
        lines.append(f"| {name} | {cpu:.2f} | {wall:.2f} | {cpu / py[1]:.2f} |")
    one = res["one_at_a_time"]
    ratio = one["default linger"] / one["no linger"]
    lines += ["", "One at a time (a client that sends its next message once the last is through a "
              f"route; target: the default linger ≥ {CLOSED_LOOP_TARGET}× no linger):", "",
              "| route batching | msg/s | × no linger |", "|---|---:|---:|"]
    for name, r in one.items():
        lines.append(f"| {name} | {r:,.0f} | {r / one['no linger']:.2f} |")
    lines.append(f"\nratio {ratio:.2f}: target {'met' if ratio >= CLOSED_LOOP_TARGET else 'not met'}")
    return lines + [""]
