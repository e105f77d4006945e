"""One system through its run: a fresh broker and system, start-up and warm-up, the paced
steps, `max` and `flood`, a fresh broker and system after a step that left a backlog, and the
line printed for each step.

Split from run.py: the order of one system's steps, apart from how a system starts
(systems.py) and how a step is measured (phases.py).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import harness
from harness import BASELINE, PROCS, TITLES, WINDOW, Config
from phases import CpuMeter, Phase
from profiler import Profiler
from systems import SUT, IotwasmNode, NodeRed, PlainPython, wait_flowing


# -- one system: startup, warm-up, the load steps --------------------------------------------
def make_sut(key: str, workdir: Path, broker) -> SUT:
    if key == BASELINE:
        return IotwasmNode(key, workdir, broker, saf=harness.BASELINE_SAF, name="e2e-baseline",
                           src=harness.BASELINE_SRC)
    if key == "iotwasm":
        return IotwasmNode(key, workdir, broker, saf=False, name="e2e-direct")
    if key == "iotwasm-saf":
        return IotwasmNode(key, workdir, broker, saf=True, name="e2e-outbox")
    if key == "iotwasm-workers":
        return IotwasmNode(key, workdir, broker, saf=True, name="e2e-workers", workers=2)
    if key == "python":
        return PlainPython(workdir, broker)
    if key == "node-red":
        return NodeRed(workdir, broker)
    raise ValueError(key)


def run_system(key: str, cfg: Config, tmp: Path, profile: bool) -> dict:
    """Start the system against a fresh broker, warm it up, then run the load steps. A step
    after which not every expected message came out (lost, or still queued somewhere when the
    drain timeout ran out) is followed by a fresh broker and a fresh system, so no step
    inherits another's backlog."""
    out: dict = {"key": key, "title": TITLES[key], "status": "ok", "phases": [], "restarts": 0}
    t0 = time.monotonic()
    state: dict = {"sut": None, "broker": None, "n": 0}

    def fresh() -> tuple[SUT, object, dict]:
        if state["sut"] is not None:
            state["sut"].stop()
            state["broker"].kill()
        state["n"] += 1
        wd = tmp / key / f"run{state['n']}"
        broker = state["broker"] = PROCS.broker(wd / "broker")
        sut = state["sut"] = make_sut(key, wd, broker)
        startup = sut.start()
        startup["first_output_after_s"] = round(wait_flowing(broker, 60, sut.alive), 3)
        warm = Phase(cfg, broker, sut.pid, "warm-up", 1000, cfg.warmup_seconds).run()
        startup["warmup"] = {k: warm[k] for k in ("sent", "unique", "lost", "p50_ms", "p99_ms")}
        return sut, broker, startup

    try:
        sut, broker, out["startup"] = fresh()
        out["at_rest"] = at_rest(cfg, sut, broker)
        print(f"  at rest: {out['at_rest']['cores']:.4f} cores, "
              f"{out['at_rest']['ctx_switches_per_s']:,.1f} context switches/s", flush=True)
        steps = [(f"{r // 1000}k/s" if r % 1000 == 0 else f"{r}/s", r, cfg.rate_seconds, 0, None)
                 for r in cfg.rates]
        # as fast as the system takes it: closed loop, WINDOW passing messages on their way
        steps.append(("max", 0, cfg.max_seconds, WINDOW, None))
        # as fast as the generator can, open loop: the broker queues, then drops
        steps.append(("flood", 0, cfg.max_seconds, 0, cfg.flood_drain))
        restarted = False
        for label, rate, secs, window, drain in steps:
            if not sut.alive():
                raise RuntimeError(f"{TITLES[key]} exited (code {sut.proc.returncode}):\n{sut.log_tail()}")
            prof = None
            if profile and key.startswith("iotwasm") and label in ("1k/s", "5k/s", "max"):
                prof = Profiler(sut.pid, tmp / key / f"profile-{label.replace('/', '')}.txt", secs)
            ph = Phase(cfg, broker, sut.pid, label, rate, secs, window=window, drain_timeout=drain)
            ph.start()
            if prof:
                prof.start()
            res = ph.finish()
            if prof:
                res["profile"] = prof.finish()
            res.update(sut.notes())
            res["fresh_system"] = restarted
            out["phases"].append(res)
            print("  " + phase_line(res), flush=True)
            if res.get("profile") and res["profile"].get("text"):
                print("    " + res["profile"]["text"].replace("\n", "\n    "), flush=True)
            restarted = False
            if res["stop_reason"] != "complete" and label != "flood":
                print("    (not everything came out: fresh broker and system for the next step, so "
                      "that no step inherits a backlog)", flush=True)
                sut, broker, _ = fresh()
                out["restarts"] += 1
                restarted = True
    except Exception as e:  # noqa: BLE001 - any failure is reported, and the run goes on
        out["status"] = "failed"
        out["error"] = f"{type(e).__name__}: {e}"
        if state["sut"] is not None:
            out["log_tail"] = state["sut"].log_tail(20)
        print(f"  FAILED: {out['error']}", flush=True)
        traceback.print_exc()
    finally:
        if state["sut"] is not None:
            state["sut"].stop()
            state["broker"].kill()
        out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


def at_rest(cfg: Config, sut: SUT, broker) -> dict:
    """What the system costs with nothing to do: `rest_seconds` with no message offered,
    from `rest_settle` after the warm-up's last one (a gateway's usual state between its
    sensors' readings)."""
    time.sleep(cfg.rest_settle)
    meter = CpuMeter(sut.pid, broker.proc.pid)
    time.sleep(cfg.rest_seconds)
    m = meter.stop()
    return {"settle_s": cfg.rest_settle, "wall_s": m["wall_s"],
            "cores": round(m["sut_cpu_s"] / m["wall_s"], 4),
            "ctx_switches_per_s": round(m["sut_ctx_switches"] / m["wall_s"], 1)}


def phase_line(r: dict) -> str:
    def p(x):
        return "-" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.2f}"

    cpu = r["cpu"]
    per_msg = (f"{cpu['sut_us_per_input_msg']:.0f} µs CPU and {cpu['sut_ctx_switches_per_input_msg']:.1f} "
               f"context switches per msg, " if cpu.get("sut_us_per_input_msg") else "")
    if per_msg and cpu.get("sut_main_us_per_input_msg") is not None \
            and cpu["sut_main_us_per_input_msg"] < 0.9 * cpu["sut_us_per_input_msg"]:
        per_msg += f"of which its first process (the ingress) {cpu['sut_main_us_per_input_msg']:.0f} µs, "
    return (f"{r['label']:>6}: offered {r['offered_per_s']:>8,.0f}/s, delivered "
            f"{r['delivered_in_window_per_s']:>7,.0f}/s (overall {r['delivered_overall_per_s']:,.0f}/s), "
            f"lost {r['lost']:,} ({r['loss_pct']:.1f}%), dup {r['duplicates']}, p50 {p(r['p50_ms'])} ms, "
            f"p99 {p(r['p99_ms'])} ms; system under test {cpu['sut_cores']:.2f} cores ({per_msg}"
            f"{cpu['sut_ctx_switches']:,} context switches), other processes "
            f"{cpu['other_cores']:.2f} cores")
