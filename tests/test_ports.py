"""The test suite's port reservations (tests/ports.py) hold across processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ports

CHILD = """
import sys
sys.path.insert(0, {tests!r})
import ports
ports._cursor[0] = {start}
print(" ".join(str(ports.free_port()) for _ in range(40)), flush=True)
sys.stdin.read()   # holds its reservations until the parent is done
"""


def test_two_processes_starting_at_the_same_port_get_different_ones():
    start = ports.LOW + 7000
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=str(Path(__file__).parent), start=start)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        theirs = {int(p) for p in child.stdout.readline().split()}
        ports._cursor[0] = start
        ours = {ports.free_port() for _ in range(40)}
    finally:
        child.communicate("")
    assert len(theirs) == 40 and len(ours) == 40
    assert not theirs & ours
    assert all(ports.LOW <= p < ports.HIGH for p in theirs | ours)


def test_consecutive_ports_are_free_together():
    base = ports.free_port(count=3)
    assert all(p in ports._held for p in (base, base + 1, base + 2))
