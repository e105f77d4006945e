"""What every part of the end-to-end benchmark shares: paths, the systems and their titles,
the settings of a run, and the registry of every process and broker it starts.

Split from run.py (the entry point and its command line). What is here is read or changed at
run time by the other modules: `PROCS` (which `cleanup` empties at the end), `SUT_CPUS`
(filled by `--pin`), `TITLES` and the baseline settings (set by `--baseline`). It is declared
once and imported, never copied; the baseline settings are rebound by the command line, so
they are read as `harness.BASELINE_SRC` and `harness.BASELINE_SAF`, not imported by name.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE.parent / "results"
MODULES = ROOT / "examples" / "modules"
PY = sys.executable
LOADGEN = HERE / "loadgen.py"
NODE_RED_DIR = HERE / "nodered"
NODE_RED_JS = HERE / "node_modules" / "node-red" / "red.js"
RUN_PY = HERE / "run.py"   # the entry point; the probes re-run it as a child (--bus-probe, --floor-probe)

RATES = (1_000, 5_000, 10_000)
WINDOW = 2_000            # closed-loop "max" step: passing messages on their way at most
PASS_FRACTION = 0.8
TARGET_RATIO = 1.0        # sustained throughput ≥ Node-RED's, with the durable default
TARGET_P99_MS = 5.0       # p99 at 5k msg/s
TARGET_CPU_RATIO = 0.5    # CPU per message ÷ Node-RED's at 5k and 10k msg/s, durable default
#: the paced steps goal 1 (CPU per message) is judged at
CPU_TARGET_STEPS = ("5k/s", "10k/s")
SYSTEMS = ("iotwasm", "iotwasm-saf", "iotwasm-workers", "python", "node-red")
BASELINE = "iotwasm-baseline"   # only with --baseline DIR
TITLES = {
    BASELINE: "iotwasm baseline (storeAndForward: false)",
    "iotwasm": "iotwasm (storeAndForward: false)",
    "iotwasm-saf": "iotwasm (storeAndForward: true, default)",
    "iotwasm-workers": "iotwasm --workers 2 (storeAndForward: true, default)",
    "python": "plain Python (paho-mqtt)",
    "node-red": "Node-RED",
}


def _load_brokers():
    """tests/brokers.py, imported by path (it is not a package)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))   # its own imports (ports) are its neighbours
    spec = importlib.util.spec_from_file_location("e2e_brokers", ROOT / "tests" / "brokers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


brokers = _load_brokers()


@dataclass
class Config:
    quick: bool
    rate_seconds: float
    max_seconds: float
    warmup_seconds: float
    hot_seconds: float
    hot_swap_at: float
    rates: tuple[int, ...] = RATES
    #: the system at rest after the warm-up: settle, then measure
    rest_settle: float = 2.0
    rest_seconds: float = 10.0
    drain_quiet: float = 2.0
    drain_timeout: float = 8.0
    flood_drain: float = 3.0

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(True, rate_seconds=2, max_seconds=2, warmup_seconds=1, hot_seconds=4,
                       hot_swap_at=1.5, drain_timeout=6, flood_drain=2, rest_settle=0.5,
                       rest_seconds=2)
        return cls(False, rate_seconds=10, max_seconds=5, warmup_seconds=1, hot_seconds=9,
                   hot_swap_at=3)


# -- processes -------------------------------------------------------------------------------
class Processes:
    """Every child process (own session each) and broker; `cleanup` ends them all."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.brokers: list = []
        self._lock = threading.Lock()

    def spawn(self, cmd: list[str], *, sut: bool = False, **kw) -> subprocess.Popen:
        """Start `cmd`; a system under test (`sut`) on the CPUs of `--pin` when it is given
        (everything else runs where this harness does)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        if sut and SUT_CPUS:
            kw["preexec_fn"] = functools.partial(os.sched_setaffinity, 0, SUT_CPUS)
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        with self._lock:
            self.procs.append(p)
        return p

    def broker(self, workdir: Path):
        b = brokers.Mosquitto(workdir, persistence=False)
        self.brokers.append(b)
        b.start()
        return b

    @staticmethod
    def end(p: subprocess.Popen, grace: float = 5.0) -> None:
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)

    def cleanup(self) -> None:
        with self._lock:
            procs, self.procs = self.procs, []
        for p in reversed(procs):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.end(p, grace=3.0)
        for b in self.brokers:
            with contextlib.suppress(OSError, subprocess.SubprocessError, RuntimeError):
                b.kill()
        self.brokers = []


PROCS = Processes()

#: `--pin`: the CPUs of the systems under test (the harness, broker, load generator and
#: collector keep the others); empty: no pinning
SUT_CPUS: set[int] = set()

#: the other checkout's src directory, from --baseline
BASELINE_SRC: Path | None = None
#: --baseline-saf: the baseline runs with the durable default (storeAndForward: true)
BASELINE_SAF = False


def _on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
