"""The e2e benchmark's report (benchmarks/e2e/report.py) on made-up results: with `--rounds`,
each round's CPU per message of the iotwasm system against the baseline and Node-RED, and the
medians; and the verdict on goal 1, CPU per message against half of Node-RED's. Run in a
child process: the benchmark's modules (`report`, `harness`) would shadow others of the same
name in this one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: what every child runs first: the benchmark's modules importable as it imports them
PREAMBLE = """
import json, sys
sys.path.insert(0, sys.argv[1] + "/benchmarks/e2e")
sys.path.append(sys.argv[1] + "/benchmarks")
"""


def in_child(code: str):
    """What `code` prints as JSON, run in a child process with the benchmark's modules."""
    proc = subprocess.run([sys.executable, "-c", PREAMBLE + code, str(ROOT)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


ROUNDS = """
import harness, report
harness.BASELINE_SAF = True

def system(cpu5, cpu10):
    return {"status": "ok", "phases": [
        {"label": "5k/s", "cpu": {"sut_us_per_input_msg": cpu5}},
        {"label": "10k/s", "cpu": {"sut_us_per_input_msg": cpu10}},
        {"label": "flood", "cpu": {"sut_us_per_input_msg": None}}]}

rounds = [{"iotwasm-baseline": system(80, 60), "iotwasm-saf": system(40, 60), "node-red": system(100, 50)},
          {"node-red": system(90, 60), "iotwasm-saf": system(45, 30), "iotwasm-baseline": system(90, 60)},
          {"iotwasm-baseline": system(50, 50), "iotwasm-saf": system(50, 25), "node-red": system(50, 100)}]
results = {"systems": rounds[0], "more_rounds": rounds[1:]}
print(json.dumps(report.round_ratios(results)))
"""


def test_rounds_give_each_rounds_ratio_and_the_median():
    got = in_child(ROUNDS)
    assert got["iotwasm-baseline"]["5k/s"] == {"rounds": [0.5, 0.5, 1.0], "median": 0.5}
    assert got["iotwasm-baseline"]["10k/s"] == {"rounds": [1.0, 0.5, 0.5], "median": 0.5}
    assert got["node-red"]["5k/s"] == {"rounds": [0.4, 0.5, 1.0], "median": 0.5}
    assert got["node-red"]["10k/s"] == {"rounds": [1.2, 0.5, 0.25], "median": 0.5}
    assert "flood" not in got["node-red"]   # no CPU per message in a step that overflows


VERDICT = """
import report

def step(label, cpu, p99=3.0):
    return {"label": label, "cpu": {"sut_us_per_input_msg": cpu}, "p99_ms": p99, "lost": 0,
            "rate_asked": 5000, "stop_reason": "complete", "drain_s": 0.1,
            "delivered_overall_per_s": 4000, "delivered_in_window_per_s": 4000}

def system(cpu5, cpu10):
    return {"status": "ok", "phases": [step("5k/s", cpu5), step("10k/s", cpu10)]}

out = {}
for name, saf in (("half", system(40, 30)), ("over", system(40, 31)), ("no 10k", {"status": "ok",
        "phases": [step("5k/s", 40)]})):
    s = report.summary({"systems": {"iotwasm-saf": saf, "node-red": system(80, 60)}})["iotwasm-saf"]
    out[name] = [s["cpu_vs_node_red"], s["cpu_target_met"]]
print(json.dumps(out))
"""


def test_the_summary_judges_cpu_per_message_against_half_of_node_reds():
    got = in_child(VERDICT)
    assert got["half"] == [{"5k/s": 0.5, "10k/s": 0.5}, True]
    assert got["over"] == [{"5k/s": 0.5, "10k/s": 0.517}, False]   # both steps must be within it
    assert got["no 10k"] == [{"5k/s": 0.5, "10k/s": None}, None]   # not measured: no verdict
