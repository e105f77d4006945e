"""Log lines where no terminal reads them: one line per record, whatever its length."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import logging
from rich.console import Console
from iotwasm.cli.up import configure_logging
configure_logging(False, Console(stderr=True))
logging.getLogger("iotwasm.test").warning("outbox %s: database or disk is full", "/var/lib/" + "d" * 150 + "/outbox.db")
"""


def test_a_long_line_is_not_wrapped_when_stderr_is_not_a_terminal():
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60,
                       env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert " WARNING " in lines[0]
    assert lines[0].endswith("/var/lib/" + "d" * 150 + "/outbox.db: database or disk is full")
