"""The workload of benchmarks/run.py: the module under test with its grant, the same logic as
plain Python, and the messages every implementation gets.

The per-message, cold-start, micro and density sections all measure this one definition;
components.py gets its messages, and languages.py and instructions.py take the messages and
the plain-Python filter through run.py, which re-exports them. It stands alone so that none
of them depends on a section's code. The iotwasm imports stay inside the functions, as
everywhere in run.py's modules.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RANGE_FILTER = ROOT / "examples" / "modules" / "range_filter.wasm"
FILTER_CONFIG = {"field": "value", "min": "10", "max": "30"}


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
