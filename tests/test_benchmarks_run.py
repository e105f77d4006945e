"""`make bench` stays runnable: each section of benchmarks/run.py, in its quick mode, runs to
the end and writes its figures.

The benchmarks read the engine's internals (the compile cache's entry layout, the pool, the
batch call), so a change there can break them without any test noticing; the cold-start
section once cut the artifact out of an entry of an older layout and failed on every run. These
runs check that each section finishes and reports what the docs quote, not how fast anything
is: no figure is compared with a number.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: section → the key of its results and figures it must report
SECTIONS = {
    "cold-start": ("cold_start", ("compile_ms", "deserialize_ms", "deserialize_raw_ms", "instantiate_us")),
    "micro": ("micro", ("on_demand", "pooled", "batch_of_one", "one_at_a_time")),
    "density": ("density", ("guests", "cases")),
    "per-message": ("per_message", ("rows", "breakdown")),
}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_a_benchmark_section_runs_to_the_end_and_reports_its_figures(section, tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", section,
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    key, figures = SECTIONS[section]
    results = json.loads(out.read_text())[key]
    missing = [f for f in figures if f not in results]
    assert not missing, f"{section}: no {missing} in {sorted(results)}"


def test_the_replay_of_the_e2e_route_runs_to_the_end_and_reports_its_figures(tmp_path):
    """benchmarks/e2e/replay.py stands a node's broker connection in for the broker: a change
    to the MQTT session or the route could leave it waiting forever or counting wrong."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "e2e" / "replay.py"), "--child",
                           "--work", str(tmp_path), "--messages", "1000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["outputs"] == 2400   # 80 % of the 2,000 warm-up and 1,000 measured messages
    assert {"cpu_us_per_msg", "batch", "threads"} <= set(res)
