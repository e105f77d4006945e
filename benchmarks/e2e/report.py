"""The report: the machine and the code a run measured, the figures derived from its steps
(sustained throughput, the targets, the comparison with a baseline) and the Markdown tables.

Split from run.py: it reads the results and the machine only, so it changes without touching
what is measured.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import harness
from machine import machine_basics, package_version
from harness import (BASELINE, CPU_TARGET_STEPS, PASS_FRACTION, ROOT, TARGET_CPU_RATIO, TARGET_P99_MS,
                     TARGET_RATIO, TITLES, brokers)


# -- report ----------------------------------------------------------------------------------
def machine_info() -> dict:
    def cmd_ver(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return None

    return {
        **machine_basics(),
        "iotwasm": package_version("iotwasm"), "wasmtime": package_version("wasmtime"),
        "paho-mqtt": package_version("paho-mqtt"),
        "mosquitto": cmd_ver([brokers.find_binary("mosquitto", "mosquitto"), "-h"]),
        "node": cmd_ver(["node", "--version"]) if shutil.which("node") else None,
        "code": code_version(),
        "loadavg_at_start": round(os.getloadavg()[0], 2),
    }


def code_version(root: Path = ROOT) -> str:
    """The commit the node runs from, '+dirty' when src/ has uncommitted changes ('unknown'
    outside a git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if not head:
        return "unknown"
    if dirty:  # the content of the changes, so that two dirty states can be told apart
        diff = subprocess.run(["git", "diff", "HEAD", "--", "src"], cwd=root, capture_output=True,
                              timeout=10, check=False).stdout
        return f"{head}+dirty:{hashlib.sha256(diff).hexdigest()[:8]}"
    return head


def machine_line(m: dict) -> str:
    mem = f", {m['memory_bytes'] / 2**30:.0f} GiB RAM" if m.get("memory_bytes") else ""
    base = f" (baseline {m['baseline']['code']})" if m.get("baseline") else ""
    return (f"iotwasm {m.get('code')}{base}; {m['cpu']}, {m['cores']} cores{mem}, {m['os']}, {m['python']}, wasmtime-py "
            f"{m['wasmtime']}, paho-mqtt {m['paho-mqtt']}, {m['mosquitto']}, Node.js {m['node']}, "
            f"Node-RED {m.get('node-red')}, {m['date']}"
            + (f"; pinned: systems under test on CPU {m['pinned']['sut']}, everything else on CPU "
               f"{m['pinned']['rest']}" if m.get("pinned") else ""))


def kept_up(ph: dict) -> bool:
    """A paced load step the system kept up with: nothing lost, and its output was complete
    within 1 s after the input stopped."""
    return bool(ph["rate_asked"] and ph["lost"] == 0 and ph["stop_reason"] == "complete"
                and ph["drain_s"] is not None and ph["drain_s"] < 1.0)


def sustained(sysres: dict | None) -> float | None:
    """Input messages per second the system sustains: the better of its closed-loop `max`
    step and the highest load step it kept up with (its overall delivery rate there)."""
    if not sysres or not sysres.get("phases"):
        return None
    cands = [ph["delivered_in_window_per_s"] / PASS_FRACTION
             for ph in sysres["phases"] if ph["label"] == "max"]
    cands += [ph["delivered_overall_per_s"] / PASS_FRACTION for ph in sysres["phases"] if kept_up(ph)]
    return max(cands) if cands else None


def phase_of(sysres: dict | None, label: str) -> dict | None:
    if not sysres or sysres.get("status") != "ok":
        return None
    return next((ph for ph in sysres["phases"] if ph["label"] == label), None)


def summary(results: dict) -> dict:
    s = results["systems"]
    nr = sustained(s.get("node-red"))
    py = sustained(s.get("python"))
    out: dict = {"sustained_input_per_s": {k: sustained(v) for k, v in s.items()}}
    for k in ("iotwasm", "iotwasm-saf"):
        if k not in s:
            continue
        iot = sustained(s.get(k))
        ph5 = phase_of(s.get(k), "5k/s")
        out[k] = {
            "vs_node_red": iot / nr if iot and nr else None,
            "vs_python": iot / py if iot and py else None,
            "p99_at_5k_ms": ph5["p99_ms"] if ph5 else None,
            "lost_at_5k": ph5["lost"] if ph5 else None,
        }
        out[k]["throughput_target_met"] = (None if out[k]["vs_node_red"] is None
                                           else out[k]["vs_node_red"] >= TARGET_RATIO)
        out[k]["p99_target_met"] = (None if out[k]["p99_at_5k_ms"] is None
                                    else out[k]["p99_at_5k_ms"] <= TARGET_P99_MS and ph5["lost"] == 0)
        cpu = {label: _cpu_ratio(phase_of(s.get(k), label), phase_of(s.get("node-red"), label))
               for label in CPU_TARGET_STEPS}
        out[k]["cpu_vs_node_red"] = cpu
        out[k]["cpu_target_met"] = (None if None in cpu.values()
                                    else all(r <= TARGET_CPU_RATIO for r in cpu.values()))
    mine = compared()
    if BASELINE in s and mine in s:   # the same system before and after a change
        base, now = s[BASELINE], s[mine]
        cmp: dict = {"sustained": _ratio(sustained(now), sustained(base)), "steps": {}}
        for ph in now.get("phases", []):
            b = phase_of(base, ph["label"])
            if b is not None and ph["label"] != "flood":
                cmp["steps"][ph["label"]] = {
                    "cpu_per_msg": _cpu_ratio(ph, b),
                    "p50": _ratio(ph["p50_ms"], b["p50_ms"]), "p99": _ratio(ph["p99_ms"], b["p99_ms"])}
        out["vs_baseline"] = cmp
    if results.get("more_rounds"):
        out["rounds"] = round_ratios(results)
    return out


def round_ratios(results: dict) -> dict:
    """With `--rounds`: per step, each round's CPU per message of the iotwasm system compared
    with the baseline (the same system before a change) and with Node-RED, and their
    medians. One run moves by more than a small change saves; several rounds, the order
    reversed each time, show whether a ratio holds."""
    rounds = [results["systems"], *results.get("more_rounds", [])]
    mine = compared()
    out: dict = {}
    for other in (BASELINE, "node-red"):
        if not all(mine in r and other in r for r in rounds):
            continue
        steps: dict[str, list[float | None]] = {}
        for r in rounds:
            for ph in r[mine].get("phases", []):
                b = phase_of(r[other], ph["label"])
                if b is not None and ph["label"] != "flood":
                    steps.setdefault(ph["label"], []).append(_cpu_ratio(ph, b))
        out[other] = {label: {"rounds": xs, "median": _median(xs)} for label, xs in steps.items()}
    return out


def compared() -> str:
    """The iotwasm system a baseline run is compared with: the one of the same storeAndForward
    setting."""
    return "iotwasm-saf" if harness.BASELINE_SAF else "iotwasm"


def _median(xs: list[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return statistics.median(known) if known else None


#: a target's verdict: met, not met, or not measured (a system or a step missing)
VERDICT = {True: "met", False: "NOT met", None: "not measured"}


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a and b else None


def _cpu_ratio(step: dict | None, other: dict | None) -> float | None:
    """CPU per input message in `step` ÷ that in another system's same step (None: either
    is missing or has none)."""
    if step is None or other is None:
        return None
    return _ratio(step["cpu"]["sut_us_per_input_msg"], other["cpu"]["sut_us_per_input_msg"])


def fmt_ms(x) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt_x(x) -> str:
    return "–" if x is None else f"{x:.2f}×"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [(f"Machine: {machine_line(m)}; load average {m['loadavg_at_start']} at start, "
              f"{m.get('loadavg_at_end')} at end."), ""]
    lines += [("| system | load | offered msg/s | delivered out msg/s | lost | dup | p50 ms | p99 ms | "
               "max ms | SUT cores | SUT CPU µs/msg | SUT ctx sw/msg | other procs cores |"),
              "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results["systems"].values():
        if r["status"] != "ok" and not r.get("phases"):
            lines.append(f"| {r['title']} | failed | – | – | – | – | – | – | – | – | – | – | – |")
            continue
        for ph in r["phases"]:
            lost = f"{ph['lost']:,} ({ph['loss_pct']:.1f}%)" if ph["lost"] else "0"
            label = ph["label"] + (" ¹" if ph.get("fresh_system") else "")
            lines.append(
                f"| {r['title']} | {label} | {ph['offered_per_s']:,.0f} | "
                f"{ph['delivered_in_window_per_s']:,.0f} | {lost} | {ph['duplicates']} | "
                f"{fmt_ms(ph['p50_ms'])} | {fmt_ms(ph['p99_ms'])} | {fmt_ms(ph['max_ms'])} | "
                f"{ph['cpu']['sut_cores']:.2f} | {fmt_ms(ph['cpu']['sut_us_per_input_msg'])} | "
                f"{fmt_ms(ph['cpu']['sut_ctx_switches_per_input_msg'])} | {ph['cpu']['other_cores']:.2f} |")
    if any(ph.get("fresh_system") for r in results["systems"].values() for ph in r["phases"]):
        lines += ["", ("¹ on a fresh broker and system: not everything of the step before came "
                       "out (lost, or still queued when the drain timeout ran out).")]
    failed = {k: r for k, r in results["systems"].items() if r["status"] != "ok"}
    for r in failed.values():
        lines += ["", f"**{r['title']} failed**: {r['error']}"]
        if r.get("log_tail"):
            lines += ["", "```", r["log_tail"], "```"]
    rest = {k: r["at_rest"] for k, r in results["systems"].items() if r.get("at_rest")}
    if rest:
        some = next(iter(rest.values()))
        lines += ["", (f"At rest (no message offered for {some['wall_s']:.0f} s, from "
                       f"{some['settle_s']:g} s after the warm-up's last one):")]
        lines += [f"- {TITLES[k]}: {v['cores']:.4f} cores, {v['ctx_switches_per_s']:,.1f} context "
                  "switches/s" for k, v in rest.items()]
    su = results["summary"]
    lines += ["", ("Sustained throughput, input msg/s (= delivered ÷ 0.8): the better of the "
                   "closed-loop `max` step and the highest load step kept up with (nothing lost, "
                   "output complete within 1 s after the input stopped):")]
    for k, v in su["sustained_input_per_s"].items():
        lines.append(f"- {TITLES[k]}: {'–' if v is None else f'{v:,.0f} msg/s'}")
    lines.append("")
    for k in ("iotwasm", "iotwasm-saf"):
        if k not in su or k not in results["systems"]:
            continue
        t = su[k]
        r1 = "–" if t["vs_node_red"] is None else f"{t['vs_node_red']:.2f}×"
        r2 = "–" if t["vs_python"] is None else f"{t['vs_python']:.2f}×"
        met1, met2, met3 = (VERDICT[t[key]] for key in
                            ("throughput_target_met", "p99_target_met", "cpu_target_met"))
        cpu = ", ".join(f"{fmt_x(r)} at {label}" for label, r in t["cpu_vs_node_red"].items())
        goal = f"target ≤ {TARGET_CPU_RATIO:g}×: {met3}" if k == "iotwasm-saf" else "the target is the durable default's"
        lines.append(f"- {TITLES[k]}: {r1} Node-RED's sustained throughput (target ≥ {TARGET_RATIO:.0f}×: "
                     f"{met1}), {r2} plain Python's; p99 at 5k msg/s {fmt_ms(t['p99_at_5k_ms'])} ms "
                     f"(target ≤ {TARGET_P99_MS:.0f} ms: {met2}); CPU per message {cpu} of Node-RED's "
                     f"({goal})")
    vb = su.get("vs_baseline")
    if vb:
        steps = "; ".join(f"{label}: CPU/msg {fmt_x(r['cpu_per_msg'])}, p50 {fmt_x(r['p50'])}, "
                          f"p99 {fmt_x(r['p99'])}" for label, r in vb["steps"].items())
        mine = compared()
        lines += ["", (f"{TITLES[mine]} against {TITLES[BASELINE]}, same run: sustained throughput "
                       f"{fmt_x(vb['sustained'])}; {steps} (below 1× is less).")]
    if su.get("rounds"):
        mine = compared()
        n = 1 + len(results["more_rounds"])
        lines += ["", f"CPU per message of {TITLES[mine]} over {n} rounds (the order of the systems "
                      "reversed each round; the tables above are the first round):"]
        for other, steps in su["rounds"].items():
            per = "; ".join(f"{label} {', '.join(fmt_x(x) for x in v['rounds'])} (median {fmt_x(v['median'])})"
                            for label, v in steps.items())
            lines.append(f"- ÷ {TITLES[other]}: {per}")
    for hu in results.get("hot_update") or []:
        lines.append("")
        if hu.get("load"):
            ld = hu["load"]
            lines.append(
                f"Hot update under load ({hu['rate']:,} msg/s offered, {ld['sent']:,} sent, "
                f"{ld['expected']:,} expected out): lost {ld['lost']:,}, duplicates {ld['duplicates']}, "
                f"manifest written → new revision serving {hu.get('write_to_serving_ms', '–')} ms "
                f"(the node notices the file at once and reads it 50 ms later), largest gap in the output "
                f"stream near the swap {hu['largest_gap_near_swap_ms']} ms (anywhere: "
                f"{hu['largest_gap_anywhere_ms']} ms), p99 {fmt_ms(ld['p99_ms'])} ms, max "
                f"{fmt_ms(ld['max_ms'])} ms. Rate: {hu['rate_reason']}.")
        if hu["status"] != "ok":
            lines.append(f"Hot update failed: {hu.get('error')}")
    bp = results.get("bus_probe")
    if bp and bp.get("status") == "ok":
        a, b = bp["one_at_a_time"], bp["window_100"]
        lines += ["", (f"iotwasm's MqttBus alone, QoS 1 publishes to the same broker: awaited one "
                       f"at a time {a['msg_per_s']:,} msg/s ({a['wall_us_per_msg']} µs each, "
                       f"{a['cpu_us_per_msg']} µs CPU), 100 at a time {b['msg_per_s']:,} msg/s "
                       f"({b['cpu_us_per_msg']} µs CPU each).")]
    fp = results.get("floor_probe")
    if fp and fp.get("status") == "ok":
        each, gathered = fp["per_message"], fp["gathered"]
        lines += ["", (f"The floor, iotwasm's MqttBus receiving {fp['rate']:,} msg/s paced and "
                       f"acknowledging each with nothing else to do: reading each message as it "
                       f"arrives (gather_ms=0, a wake-up of the process per message) "
                       f"{each['cpu_us_per_msg']} µs CPU and {each['ctx_switches_per_msg']} context "
                       f"switches per message; with gathered reads (the default) "
                       f"{gathered['cpu_us_per_msg']} µs and {gathered['ctx_switches_per_msg']}.")]
    lines += ["", f"Wall time: {results['wall_s']:.0f} s."]
    return "\n".join(lines)
