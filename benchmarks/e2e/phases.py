"""A measured load step: the load generator and the collector (loadgen.py) around the system
under test, and what its processes, the broker and the rest of the machine spent meanwhile,
read from /proc.

Split from run.py. Every system's steps, the hot update and the probes measure through
these, so nothing here knows any one system.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from pathlib import Path

from harness import LOADGEN, PASS_FRACTION, PROCS, PY, Config


# -- measuring helpers -----------------------------------------------------------------------
CLK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and the processes it started, and theirs (`iotwasm up --workers`: the ingress
    and its workers), as they run now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return out


def proc_cpu_s(pid: int | None, *, alone: bool = False) -> float:
    """CPU seconds (user + system, all threads) of a running process and its children
    (`alone`: of the process itself)."""
    if pid is None:
        return 0.0
    total = 0.0
    for p in [pid] if alone else process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / CLK
        except (OSError, IndexError, ValueError):
            pass
    return total


def ctx_switches(pid: int | None) -> int:
    """Context switches (voluntary + involuntary) of all threads of a process and its
    children so far."""
    if pid is None:
        return 0
    return sum(_ctx_switches(p) for p in process_tree(pid))


def _ctx_switches(pid: int) -> int:
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if "ctxt_switches" in line:
                        total += int(line.split()[-1])
        except (OSError, ValueError):
            pass
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])
    return (total - idle) / CLK, total / CLK


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """CPU use during a phase: the system under test, the broker, load generator + collector,
    and what the rest of the machine (other processes) used meanwhile."""

    def __init__(self, sut_pid: int | None, broker_pid: int | None):
        self.sut_pid, self.broker_pid = sut_pid, broker_pid
        self.t0 = time.monotonic()
        self.sut0, self.br0 = proc_cpu_s(sut_pid), proc_cpu_s(broker_pid)
        self.main0 = proc_cpu_s(sut_pid, alone=True)
        self.cs0 = ctx_switches(sut_pid)
        self.ch0 = children_cpu_s()
        self.me0 = time.process_time()
        self.busy0, _ = machine_busy()

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        sut = proc_cpu_s(self.sut_pid) - self.sut0
        br = proc_cpu_s(self.broker_pid) - self.br0
        lg = children_cpu_s() - self.ch0
        busy = machine_busy()[0] - self.busy0
        own = sut + br + lg + (time.process_time() - self.me0)
        main = proc_cpu_s(self.sut_pid, alone=True) - self.main0
        return {"wall_s": round(wall, 2), "sut_cores": round(sut / wall, 2),
                "sut_cpu_s": round(sut, 4),
                # the system's first process alone (with --workers: the ingress)
                "sut_main_cores": round(main / wall, 3),
                "sut_ctx_switches": ctx_switches(self.sut_pid) - self.cs0,
                "broker_cores": round(br / wall, 2), "loadgen_cores": round(lg / wall, 2),
                "machine_busy_cores": round(busy / wall, 2),
                "other_cores": round(max(0.0, busy - own) / wall, 2)}


def loadgen_cmd(*args: str) -> list[str]:
    return [PY, str(LOADGEN), *map(str, args)]


class Phase:
    """One measured load step: collector up, generator run, drain, collector result."""

    seq = 0  # seqs never repeat within a run, so stragglers of an earlier phase are 'stale'

    def __init__(self, cfg: Config, broker, sut_pid: int | None, label: str, rate: float,
                 seconds: float, *, window: int = 0, drain_timeout: float | None = None):
        self.cfg, self.broker, self.sut_pid = cfg, broker, sut_pid
        self.label, self.rate, self.seconds = label, rate, seconds
        self.window = window
        self.drain_timeout = cfg.drain_timeout if drain_timeout is None else drain_timeout
        self.progress = Path(broker.dir) / "collector.progress"
        self.gen_proc: subprocess.Popen | None = None
        self.collector: subprocess.Popen | None = None
        self.meter: CpuMeter | None = None
        self.seq_start = Phase.seq

    def start(self) -> None:
        self.collector = PROCS.spawn(
            loadgen_cmd("collect", "--port", self.broker.port, "--progress", self.progress),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = _readline(self.collector, 10)
        if line.strip() != "ready":
            raise RuntimeError(f"collector did not start: {line!r}")
        self.meter = CpuMeter(self.sut_pid, self.broker.proc.pid)
        closed = ("--window", self.window, "--progress", self.progress) if self.window else ()
        self.gen_proc = PROCS.spawn(
            loadgen_cmd("gen", "--port", self.broker.port, "--rate", self.rate, "--seconds",
                        self.seconds, "--seq-start", self.seq_start, *closed),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self) -> dict:
        out, err = self.gen_proc.communicate(timeout=self.seconds + 60)
        if self.gen_proc.returncode != 0:
            raise RuntimeError(f"load generator failed: {err.strip()[-500:]}")
        gen = json.loads(out)
        Phase.seq = gen["last_seq"] + 1000
        cmd = {"first_seq": gen["first_seq"], "last_seq": gen["last_seq"],
               "gen_start_ns": gen["start_ns"], "gen_end_ns": gen["end_ns"],
               "quiet_s": self.cfg.drain_quiet, "timeout_s": self.drain_timeout}
        self.collector.stdin.write(json.dumps(cmd) + "\n")
        self.collector.stdin.flush()
        line = _readline(self.collector, self.drain_timeout + 60)
        self.collector.wait(10)
        cpu = self.meter.stop()
        res = json.loads(line)
        # input messages the system got through; per-message figures only when nothing was
        # lost (otherwise the work done on messages still queued inside would be misattributed)
        handled = res["unique"] / PASS_FRACTION if res["lost"] == 0 else 0
        cpu["sut_us_per_input_msg"] = (round(cpu["sut_cores"] * cpu["wall_s"] * 1e6 / handled, 1)
                                       if handled else None)
        cpu["sut_ctx_switches_per_input_msg"] = (round(cpu["sut_ctx_switches"] / handled, 2)
                                                 if handled else None)
        cpu["sut_main_us_per_input_msg"] = (round(cpu["sut_main_cores"] * cpu["wall_s"] * 1e6 / handled, 1)
                                            if handled else None)
        return {"label": self.label, "rate_asked": self.rate, "window": self.window,
                "seconds": round(gen["seconds"], 3),
                "sent": gen["sent"], "offered_per_s": gen["offered_per_s"],
                "acked_by_broker": gen["acked_by_broker"], "gen_start_ns": gen["start_ns"],
                "gen_end_ns": gen["end_ns"], **res, "cpu": cpu}

    def run(self) -> dict:
        self.start()
        return self.finish()


def _readline(p: subprocess.Popen, timeout: float) -> str:
    """A line from a child's stdout, or an error naming the child when it takes too long."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(p.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise RuntimeError(f"no answer from {p.args[1:3]} within {timeout}s")
    return box[0]
