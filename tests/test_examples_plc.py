"""examples/plc runs with one command: simulated PLCs → Modbus → module → PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def three_free_ports() -> int:
    """N such that N, N+1 and N+2 are free TCP ports on 127.0.0.1 (the demo's layout)."""
    return free_port(count=3)


def test_the_plc_demo_fills_the_database(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, str(ROOT / "examples/plc/run.py"), "--seconds", "6",
                        "--base-port", str(three_free_ports()), "--data", str(tmp_path)],
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = re.search(r"summary: (\d+) rows in PostgreSQL, (\d+) overheat window\(s\), (\d+) readings checked by "
                  r"the plausibility module, (\d+) dropped as glitches", r.stdout)
    assert m, r.stdout[-2000:]
    rows, _, checked, dropped = map(int, m.groups())
    assert rows > 0 and checked >= rows
    assert re.search(r"press1: poll \d+ +-?\d+\.\d °C", r.stdout) and "press2: poll" in r.stdout
