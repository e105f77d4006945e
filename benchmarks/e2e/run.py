#!/usr/bin/env python3
"""End-to-end benchmark: iotwasm against plain Python and Node-RED, through a real Mosquitto.

    .venv/bin/python benchmarks/e2e/run.py              # full run (~5.5 min), results/e2e.json
    .venv/bin/python benchmarks/e2e/run.py --quick      # smoke run (~2.5 min), results/e2e-quick.json
    .venv/bin/python benchmarks/e2e/run.py --only iotwasm --profile --no-hot-update
    .venv/bin/python benchmarks/e2e/run.py --only iotwasm --rates 20,200,1000,5000 --no-hot-update
    .venv/bin/python benchmarks/e2e/run.py --only iotwasm-baseline,iotwasm --baseline ../base --no-hot-update
    .venv/bin/python benchmarks/e2e/run.py --only iotwasm-baseline,iotwasm-saf,node-red --baseline ../base \
        --baseline-saf --rates 5000,10000 --no-hot-update     # the durable default, before/after
    .venv/bin/python benchmarks/e2e/run.py --only iotwasm-saf,node-red --pin 1 --no-hot-update
        # each system alone on CPU 1; harness, broker, load generator and collector on the rest

Partial runs (--only, --rates, --no-hot-update) write results/e2e-partial.json, or --out PATH.

The transform, the same in every system: a JSON temperature reading in °C on ``in/{device}``
(QoS 1) → converted to °F → kept only when 40 ≤ °F ≤ 104 → published on ``out/{device}``
(QoS 1). About 100 bytes a message; 80 % pass the filter.

Systems, one at a time, each against a fresh private Mosquitto (same binary and config, from
tests/brokers.py) on a free loopback port:

* ``iotwasm``: `iotwasm up` with two Deployments (examples/modules/unit_convert.wasm with
  ``to: F``, range_filter.wasm with ``field: value, min: 40, max: 104``) and a Route
  in/{device} → convert → plausible → out/{device}; once with ``storeAndForward: false`` and
  once with the durable default ``storeAndForward: true`` (the SQLite outbox).
* ``python``: plain_python.py, one paho-mqtt client doing json.loads, conversion, range check
  and publish; no sandbox.
* ``node-red``: Node-RED (benchmarks/e2e/package.json, installed into node_modules/ here on
  first use) running nodered/flow.json headless: mqtt in → function → mqtt out.
* ``iotwasm-baseline``: the ``iotwasm`` system run from another checkout (``--baseline DIR``,
  e.g. ``git worktree add ../base main``; its ``src`` goes first on PYTHONPATH, everything else
  — this environment, the modules, the broker, the load — is the same), so that a change is
  measured before and after in one run, on the same machine at the same time.

Load: loadgen.py (a separate process) offers 1,000 / 5,000 / 10,000 msg/s for N seconds each;
every message carries its seq and time.time_ns(). A collector (another process) subscribed to
``out/#`` computes what was delivered, lost (expected passing seqs not received), duplicated,
and the latency (receive time − send time). Then two "as fast as possible" steps:

* ``max``: closed loop — the generator sends as fast as it can while fewer than WINDOW passing
  messages are on their way (it reads the collector's count), so the system always has work
  and nothing piles up in the broker. Sustained throughput = the better of its delivery rate
  and that of the highest paced step the system kept up with.
* ``flood``: open loop — the generator sends as fast as it can, full stop. On a small machine
  this mostly measures who wins the CPU against the generator and what the broker drops once
  a subscriber's queue (max_queued_messages 10000) is full.

A step after which not every expected message came out (lost, or still queued when the drain
timeout ran out) is followed by a fresh broker and a fresh system. CPU time and context switches of the system under test are read
from /proc, and so is what the rest of the machine was doing meanwhile ("other processes").

Afterwards, a hot update: while load flows through iotwasm, the convert deployment's module is
replaced by a copy with an extra custom section (a different digest, identical behaviour), by
rewriting the manifest; lost and duplicate messages, the receive stream around the swap and
the time from the manifest write to the node's 'updated' event (node.db, table events) are
reported. Last, iotwasm's MqttBus alone: QoS 1 publishes awaited one at a time (the round
trip) and 100 at a time (how the sinks and the outbox forwarder send a batch); and the floor,
an MqttBus subscriber that receives 5k msg/s paced and only acknowledges them: what being
woken for each message alone costs before any work is done.

Every process this starts is killed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
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

RATES = (1_000, 5_000, 10_000)
WINDOW = 2_000            # closed-loop "max" step: passing messages on their way at most
PASS_FRACTION = 0.8
TARGET_RATIO = 2.0        # iotwasm sustained throughput ≥ 2× Node-RED's
TARGET_P99_MS = 5.0       # p99 at 5k msg/s
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
    drain_quiet: float = 2.0
    drain_timeout: float = 8.0
    flood_drain: float = 3.0

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(True, rate_seconds=2, max_seconds=2, warmup_seconds=1, hot_seconds=4,
                       hot_swap_at=1.5, drain_timeout=6, flood_drain=2)
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


def _on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


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


def wait_flowing(broker, timeout: float = 60.0, alive=lambda: True) -> float:
    """Publish probe readings until one comes out transformed; seconds it took."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"e2e-probe-{os.getpid()}")
    c.on_message = lambda *a: got.set()
    c.on_connect = lambda cl, *a: cl.subscribe("out/dev-9999", qos=1)
    c.connect(broker.host, broker.port)
    c.loop_start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            if not alive():
                raise RuntimeError("the system under test exited while starting")
            c.publish("in/dev-9999", json.dumps({"device": "dev-9999", "sensor": "temperature",
                                                 "value": 20.0, "unit": "C", "seq": -1,
                                                 "ts": time.time_ns()}), qos=1)
            if got.wait(0.2):
                return time.monotonic() - t0
        raise RuntimeError(f"no transformed message on out/dev-9999 within {timeout}s")
    finally:
        c.loop_stop()
        c.disconnect()


def wait_status_online(broker, node: str, timeout: float, alive) -> float:
    """Wait for the node's retained status {"state": "online"}: its routes are subscribed."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    online = threading.Event()

    def on_message(cl, ud, msg):
        try:
            if json.loads(msg.payload).get("state") == "online":
                online.set()
        except ValueError:
            pass

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"e2e-status-{os.getpid()}")
    c.on_message = on_message
    c.on_connect = lambda cl, *a: cl.subscribe(f"iotwasm/nodes/{node}/status", qos=1)
    c.connect(broker.host, broker.port)
    c.loop_start()
    t0 = time.monotonic()
    try:
        while not online.wait(0.2):
            if not alive():
                raise RuntimeError("the node exited while starting")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"node {node} not online within {timeout}s")
        return time.monotonic() - t0
    finally:
        c.loop_stop()
        c.disconnect()


# -- systems under test ----------------------------------------------------------------------
DEPLOYMENTS = """\
# convert °C → °F, then keep 40 ≤ °F ≤ 104 (written by benchmarks/e2e/run.py)
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: convert}}
spec:
  module: {convert_module}
  resources: {{memory: 4Mi, timeout: 50ms}}
  config: {{to: F}}
  capabilities:
    topics: {{subscribe: ["in/#"], publish: ["in/#"]}}
---
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: plausible}}
spec:
  module: {filter_module}
  resources: {{memory: 4Mi, timeout: 50ms}}
  config: {{field: value, min: 40, max: 104}}
  capabilities:
    topics: {{subscribe: ["in/#"], publish: ["in/#"]}}
"""

ROUTE = """\
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: e2e}}
spec:
  source: {{mqtt: {{topic: "in/{{device}}", qos: 1}}}}
  steps: [convert, plausible]
  sinks:
    - mqtt: {{topic: "out/{{device}}", qos: 1}}
      storeAndForward: {saf}
"""


def write_deployments(mdir: Path, convert_module: Path) -> None:
    text = DEPLOYMENTS.format(convert_module=json.dumps(str(convert_module)),
                              filter_module=json.dumps(str(MODULES / "range_filter.wasm")))
    tmp = mdir / ".deployments.tmp"
    tmp.write_text(text)
    os.replace(tmp, mdir / "deployments.yaml")  # atomic: the node never reads half a file


class SUT:
    """A running system under test."""

    key = ""
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            Processes.end(self.proc, grace=15)

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except (OSError, AttributeError):
            return ""

    def notes(self) -> dict:
        return {}


class IotwasmNode(SUT):
    def __init__(self, key: str, workdir: Path, broker, saf: bool, name: str, src: Path | None = None,
                 workers: int = 1):
        """`src`: another checkout's `src` directory to run the node from (a baseline);
        `workers` > 1: `iotwasm up --workers N` (events and revisions are worker 0's)."""
        self.key, self.workdir, self.broker, self.saf, self.name = key, workdir, broker, saf, name
        self.workers = workers
        self.env = None
        if src is not None:
            self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(src), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.mdir = workdir / "manifests"
        self.data = workdir / "data"
        self.mdir.mkdir(parents=True)
        write_deployments(self.mdir, MODULES / "unit_convert.wasm")
        (self.mdir / "routes.yaml").write_text(ROUTE.format(saf=str(saf).lower()))
        self.log = workdir / "node.log"

    def start(self) -> dict:
        t0 = time.monotonic()
        self.proc = PROCS.spawn(
            [PY, "-m", "iotwasm.cli.main", "up", str(self.mdir), "--broker", self.broker.url,
             "--data", str(self.data), "--name", self.name,
             *(["--workers", str(self.workers), "--no-api"] if self.workers > 1 else [])],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, env=self.env, sut=True)
        online = wait_status_online(self.broker, self.name, 60, self.alive)
        return {"startup_s": round(time.monotonic() - t0, 2), "status_online_after_s": round(online, 2)}

    @property
    def node_db(self) -> Path:
        return self.data / "workers" / "0" / "node.db" if self.workers > 1 else self.data / "node.db"

    def events(self, since: float = 0.0) -> list[dict]:
        db = sqlite3.connect(f"file:{self.node_db}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute("SELECT ts, kind, object, message FROM events WHERE ts >= ? ORDER BY id",
                              (since,)).fetchall()
            return [{"ts": r[0], "kind": r[1], "object": r[2], "message": r[3]} for r in rows]
        finally:
            db.close()

    def revisions(self) -> list[dict]:
        db = sqlite3.connect(f"file:{self.node_db}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute("SELECT name, revision, module_digest, status, created FROM revisions "
                              "ORDER BY name, revision").fetchall()
            return [{"name": r[0], "revision": r[1], "module": r[2][:19], "status": r[3],
                     "created": r[4]} for r in rows]
        finally:
            db.close()

    def notes(self) -> dict:
        """The node's own last progress line (received/delivered/dead letters of the route)."""
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines()
                     if ln.startswith("routes:")]
        except OSError:
            lines = []
        return {"node_last_progress_line": lines[-1] if lines else None}


class PlainPython(SUT):
    key = "python"

    def __init__(self, workdir: Path, broker):
        self.workdir, self.broker = workdir, broker
        self.log = workdir / "plain_python.log"

    def start(self) -> dict:
        t0 = time.monotonic()
        self.proc = PROCS.spawn([PY, str(HERE / "plain_python.py"), "--port", str(self.broker.port)],
                                stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True, sut=True)
        line = _readline(self.proc, 30)
        if line.strip() != "ready":
            raise RuntimeError(f"plain_python.py did not start: {line!r} {self.log_tail()}")
        return {"startup_s": round(time.monotonic() - t0, 2)}


class NodeRed(SUT):
    key = "node-red"

    def __init__(self, workdir: Path, broker):
        self.workdir, self.broker = workdir, broker
        self.userdir = workdir / "userdir"
        self.userdir.mkdir(parents=True)
        self.log = workdir / "node-red.log"

    def start(self) -> dict:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("Node.js is not installed (no `node` on PATH)")
        ensure_node_red()
        flow = self.userdir / "flow.json"  # a copy: Node-RED may write next to its flow file
        shutil.copy(NODE_RED_DIR / "flow.json", flow)
        env = dict(os.environ, E2E_BROKER_HOST=self.broker.host, E2E_BROKER_PORT=str(self.broker.port),
                   E2E_UI_PORT=str(brokers.free_port()), E2E_LOG_LEVEL="info")
        t0 = time.monotonic()
        self.proc = PROCS.spawn([node, str(NODE_RED_JS), "-u", str(self.userdir), "-s",
                                 str(NODE_RED_DIR / "settings.js"), str(flow)],
                                stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env, sut=True)
        deadline = time.monotonic() + 60
        while "Connected to broker" not in self.log.read_text(errors="replace"):
            if not self.alive():
                raise RuntimeError(f"Node-RED exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Node-RED did not connect to the broker in 60 s:\n{self.log_tail()}")
            time.sleep(0.1)
        return {"startup_s": round(time.monotonic() - t0, 2)}


def node_red_version() -> str | None:
    try:
        return json.loads((NODE_RED_JS.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def ensure_node_red() -> None:
    """Install Node-RED (the version pinned in package.json) into benchmarks/e2e/node_modules."""
    if NODE_RED_JS.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: cannot install Node-RED")
    cmd = [npm, "ci" if (HERE / "package-lock.json").exists() else "install", "--no-audit",
           "--no-fund"]
    print(f"  installing Node-RED: {' '.join(cmd[1:])} in {HERE} ...", flush=True)
    try:
        r = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=600,
                           check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError("`npm install node-red` did not finish within 600 s") from None
    if r.returncode != 0 or not NODE_RED_JS.exists():
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-8:])
        raise RuntimeError(f"`npm {cmd[1]}` failed with exit code {r.returncode}:\n{tail}")


# -- one system: startup, warm-up, the load steps --------------------------------------------
#: the other checkout's src directory, from --baseline
BASELINE_SRC: Path | None = None
#: --baseline-saf: the baseline runs with the durable default (storeAndForward: true)
BASELINE_SAF = False


def make_sut(key: str, workdir: Path, broker) -> SUT:
    if key == BASELINE:
        return IotwasmNode(key, workdir, broker, saf=BASELINE_SAF, name="e2e-baseline", src=BASELINE_SRC)
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


# -- profiling (optional) --------------------------------------------------------------------
class Profiler:
    """Where the node's CPU goes during a step: CPU per thread (from /proc) and py-spy samples
    of every thread, grouped by function and by what the code does."""

    def __init__(self, pid: int, path: Path, seconds: float):
        self.pid, self.path, self.seconds = pid, path, seconds
        self.raw = path.with_suffix(".raw")
        self.proc = None
        self.t0 = 0.0
        self.cpu0: dict[int, float] = {}

    def start(self) -> None:
        spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        if not Path(spy).exists():
            print("  (py-spy not installed: .venv/bin/pip install py-spy)", flush=True)
            return
        self.t0, self.cpu0 = time.monotonic(), thread_cpu(self.pid)
        self.proc = PROCS.spawn([spy, "record", "--pid", str(self.pid), "--rate", "100", "--format",
                                 "raw", "--threads", "--duration", str(max(1, int(self.seconds))),
                                 "--output", str(self.raw)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self) -> dict | None:
        if self.proc is None:
            return None
        try:
            self.proc.wait(self.seconds + 30)
        except subprocess.TimeoutExpired:
            Processes.end(self.proc)
        wall = time.monotonic() - self.t0
        cpu1 = thread_cpu(self.pid)
        cores = {tid: (cpu1[tid] - self.cpu0.get(tid, 0.0)) / wall for tid in cpu1}
        if not self.raw.exists():
            return {"error": (self.proc.stderr.read() or b"").decode(errors="replace")[-300:]}
        return summarize_profile(self.raw, self.path, cores)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            out[int(t)] = (int(parts[11]) + int(parts[12])) / CLK
        except (OSError, IndexError, ValueError):
            pass
    return out


#: leaf functions where a thread waits (select, condition variables, idle pool workers; a
#: route lane's worker thread waiting for its next batch shows as `Worker._serve`, the C
#: queue's get being no frame of its own); py-spy cannot always tell a blocking syscall from
#: running code, so these are dropped
IDLE_LEAVES = ("EpollSelector.select", "Worker._serve", "Condition.wait", "Event.wait", "Client._loop",
               "_worker",
               "SimpleQueue.get", "Thread._wait_for_tstate_lock", "Thread.join", "_tick")

#: what the node's code does, first match wins (matched against every frame of a sample)
CATEGORIES = (
    ("wasm: DeploymentHandle.process (both modules, in worker threads)", ("DeploymentHandle.process",)),
    ("outbox: SQLite append/peek/ack", ("Outbox.",)),
    ("event loop: MQTT packets in (decoding, dispatch)", ("_Connection.data_received",)),
    # py-spy names a method by the class that defines it: MqttBus's and RouteRunner's parts
    # are mixins, so their rows name the mixins
    ("event loop: MQTT packets out (one send per loop pass)", ("MqttSession._flush",)),
    ("event loop: publishing results (MqttOutbound.send_many / publish)", ("MqttOutbound.send_many",
                                                                           "MqttOutbound.publish")),
    ("event loop: waking up on the self-pipe (_read_from_self)", ("_read_from_self",)),
    ("event loop: route (RouteRunner: queue, lanes, batching, the hop to the lane's worker)",
     ("RouteRunner.", "RouteSteps.", "RouteSinks.")),
    ("event loop: subscription queue and handler (Subscription, BusSource)",
     ("Subscription.", "BusSource.", "MqttInbound._on_message")),
    ("event loop: node status and sync", ("Node.",)),
    ("event loop: other asyncio machinery", ("BaseEventLoop", "Handle._run")),
    ("wasmtime epoch ticker thread (Python; the native one is not sampled)", ("ThreadTicker._run",)),
)


def _func(frame: str) -> str:
    """'Client.publish (paho/mqtt/client.py:1790)' → 'Client.publish (paho/mqtt/client.py)'."""
    head, sep, rest = frame.rpartition(":")
    return head + ")" if sep and rest.rstrip(")").isdigit() else frame


def summarize_profile(raw: Path, out: Path, cores: dict[int, float], top: int = 25) -> dict:
    self_t: dict[str, int] = {}
    total_t: dict[str, int] = {}
    threads: dict[str, int] = {}
    cats: dict[str, int] = {}
    names: dict[int, str] = {}
    n = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith("thread") else "?"
        try:  # "thread (5442): paho-mqtt-client-…"
            names[int(thread.split("(", 1)[1].split(")", 1)[0])] = thread.split(": ", 1)[1]
        except (IndexError, ValueError):
            pass
        frames = [_func(f) for f in frames if not f.startswith(("thread", "process"))]
        if not frames or frames[-1].split(" ", 1)[0] in IDLE_LEAVES:
            idle += c
            continue
        n += c
        tname = thread.split(": ", 1)[-1]
        threads[tname] = threads.get(tname, 0) + c
        for f in set(frames):
            total_t[f] = total_t.get(f, 0) + c
        self_t[frames[-1]] = self_t.get(frames[-1], 0) + c
        joined = ";".join(frames)
        cat = next((name for name, keys in CATEGORIES if any(k in joined for k in keys)), "other")
        cats[cat] = cats.get(cat, 0) + c
    n = max(n, 1)

    def table(d, k=top):
        return [(round(100 * v / n, 1), name) for name, v in sorted(d.items(), key=lambda kv: -kv[1])[:k]]

    thread_cores = sorted(((round(v, 3), names.get(tid, f"tid {tid}")) for tid, v in cores.items()
                           if v >= 0.005), reverse=True)
    res = {"samples_on_cpu": n, "samples_waiting_dropped": idle, "thread_cores": thread_cores,
           "threads": table(threads), "categories": table(cats, 20), "self": table(self_t),
           "total": [row for row in table(total_t, 80) if not any(
               x in row[1] for x in ("runpy", "typer", "click", "threading.py", "runners.py",
                                     "iotwasm/cli/main.py"))][:top]}
    lines = [f"py-spy: {n} samples on CPU, {idle} in blocking waits (dropped)", "",
             "CPU per thread (from /proc, cores):"]
    lines += [f"  {c:6.3f}  {k}" for c, k in thread_cores]
    lines += ["", "what the samples on CPU were doing:"]
    lines += [f"  {p:5.1f}%  {k}" for p, k in res["categories"]]
    lines += ["", "self (the function itself was on CPU):"]
    lines += [f"  {p:5.1f}%  {k}" for p, k in res["self"]]
    lines += ["", "total (the function or what it called):"]
    lines += [f"  {p:5.1f}%  {k}" for p, k in res["total"]]
    out.write_text("\n".join(lines) + "\n")
    res["text"] = "\n".join(lines)
    return res


# -- hot update under load -------------------------------------------------------------------
def with_custom_section(wasm: bytes, name: bytes, data: bytes) -> bytes:
    """The module plus a custom section: a new digest, the same code."""
    from iotwasm.engine.wasm_scan import leb128

    body = leb128(len(name)) + name + data
    return wasm + b"\x00" + leb128(len(body)) + body


def pick_hot_rate(iot: dict | None) -> tuple[int, str]:
    """The highest load step iotwasm kept up with, so that a loss during the swap can only
    come from the swap (at a rate it cannot sustain, the broker drops what queues up)."""
    ok = [int(ph["rate_asked"]) for ph in (iot or {}).get("phases", []) if kept_up(ph)]
    if ok:
        return max(ok), f"{max(ok):,} msg/s, the highest load step iotwasm kept up with"
    return 500, "500 msg/s: iotwasm kept up with none of the load steps"


def run_hot_update(cfg: Config, tmp: Path, rate: int, why: str) -> dict:
    out: dict = {"status": "ok", "rate": rate, "rate_reason": why, "seconds": cfg.hot_seconds}
    wd = tmp / f"hot-{rate}"
    broker = PROCS.broker(wd / "broker")
    sut = IotwasmNode("iotwasm", wd, broker, saf=False, name=f"e2e-hot-{rate}")
    new_module = wd / "unit_convert-v2.wasm"
    orig = (MODULES / "unit_convert.wasm").read_bytes()
    new_module.write_bytes(with_custom_section(orig, b"iotwasm.e2e", b"hot update under load"))
    out["old_digest"] = "sha256:" + hashlib.sha256(orig).hexdigest()
    out["new_digest"] = "sha256:" + hashlib.sha256(new_module.read_bytes()).hexdigest()
    t0 = time.monotonic()
    try:
        sut.start()
        wait_flowing(broker, 60, sut.alive)
        Phase(cfg, broker, sut.pid, "warm-up", 1000, cfg.warmup_seconds).run()
        ph = Phase(cfg, broker, sut.pid, "hot update", rate, cfg.hot_seconds)
        ph.start()
        time.sleep(cfg.hot_swap_at)
        written = time.time()
        write_deployments(sut.mdir, new_module)
        res = ph.finish()
        evs = [e for e in sut.events(written - 0.001) if e["object"] == "convert"]
        updated = next((e for e in evs if e["kind"] == "updated"), None)
        out["events"] = [{**e, "t_after_write_ms": round((e["ts"] - written) * 1000, 1)} for e in evs]
        out["revisions"] = [r for r in sut.revisions() if r["name"] == "convert"]
        out["manifest_written_ns"] = int(written * 1e9)
        if updated:
            out["write_to_serving_ms"] = round((updated["ts"] - written) * 1000, 1)
        else:
            out["error"] = "no 'updated' event for convert after the manifest was rewritten"
            out["status"] = "failed"
        # the receive stream around the swap: its largest gap and the latency there
        out["load"] = res
        w_ns = int(written * 1e9)
        near = [g for g in res["largest_gaps"] if w_ns - 1e9 <= g["after_ns"] <= w_ns + 3e9]
        out["largest_gap_near_swap_ms"] = max((g["gap_ms"] for g in near), default=0.0)
        out["largest_gap_anywhere_ms"] = max((g["gap_ms"] for g in res["largest_gaps"]), default=0.0)
        print(f"  hot update at {rate:,}/s: lost {res['lost']}, duplicates {res['duplicates']}, "
              f"manifest written → new revision serving {out.get('write_to_serving_ms')} ms, largest "
              f"receive gap near the swap {out['largest_gap_near_swap_ms']} ms, p99 {res['p99_ms']:.2f} ms, "
              f"max {res['max_ms']:.1f} ms", flush=True)
    except Exception as e:  # noqa: BLE001 - any failure is reported, and the run goes on
        out["status"] = "failed"
        out["error"] = f"{type(e).__name__}: {e}"
        out["log_tail"] = sut.log_tail(20)
        print(f"  FAILED: {out['error']}", flush=True)
        traceback.print_exc()
    finally:
        sut.stop()
        broker.kill()
        out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


# -- the node's MQTT publish path alone --------------------------------------------------------
def bus_probe_child(port: int, n: int) -> None:
    """(Runs in a child process.) QoS 1 publishes through iotwasm's MqttBus: awaited one at a
    time (the round trip), and 100 at a time awaited together (how the route's MQTT sink and
    the outbox forwarder send a batch). Prints a JSON line."""
    import asyncio

    from iotwasm.messaging.mqtt_bus import MqttBus

    payload = (b'{"device":"dev-0001","sensor":"temperature","value":70.7,"unit":"F","seq":1,'
               b'"ts":1795384906395513378}')

    async def main() -> dict:
        bus = MqttBus(f"mqtt://127.0.0.1:{port}")
        await bus.connect()
        res = {}
        for label in ("one_at_a_time", "window_100") * 2:
            t, c = time.perf_counter(), time.process_time()
            if label == "one_at_a_time":
                for _ in range(n):
                    await bus.publish("probe/dev-0001", payload, qos=1)
            else:
                for _ in range(0, n, 100):
                    await asyncio.gather(*(bus.publish("probe/dev-0001", payload, qos=1)
                                           for _ in range(100)))
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            res[label] = {"msg_per_s": round(n / wall), "wall_us_per_msg": round(wall / n * 1e6, 1),
                          "cpu_us_per_msg": round(cpu / n * 1e6, 1)}  # the second round is kept
        await bus.close()
        return res

    print(json.dumps(asyncio.run(main())), flush=True)


def run_bus_probe(tmp: Path, quick: bool) -> dict:
    broker = PROCS.broker(tmp / "bus-probe" / "broker")
    try:
        meter = CpuMeter(None, broker.proc.pid)
        p = PROCS.spawn([PY, str(Path(__file__).resolve()), "--bus-probe", str(broker.port),
                         "--bus-probe-n", "1000" if quick else "3000"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=120)
        if p.returncode != 0:
            return {"status": "failed", "error": err.strip()[-500:]}
        res = {"status": "ok", **json.loads(out), "cpu": meter.stop()}
        print(f"  one at a time: {res['one_at_a_time']['msg_per_s']:,} msg/s "
              f"({res['one_at_a_time']['wall_us_per_msg']} µs each); windows of 100: "
              f"{res['window_100']['msg_per_s']:,} msg/s", flush=True)
        return res
    finally:
        broker.kill()


# -- the floor: receiving alone ---------------------------------------------------------------
def floor_probe_child(port: int) -> None:
    """(Runs in a child process.) An MqttBus subscriber at QoS 1 whose handler does nothing:
    each message is received, decoded, handed to the subscription and acknowledged. Prints
    "ready" once subscribed, then sleeps until killed."""
    import asyncio

    from iotwasm.messaging.mqtt_bus import MqttBus

    async def main() -> None:
        bus = MqttBus(f"mqtt://127.0.0.1:{port}")
        await bus.connect()

        async def nothing(msg) -> None:
            return None

        await bus.subscribe("in/#", nothing, qos=1)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def run_floor_probe(tmp: Path, quick: bool, rate: int = 5000) -> dict:
    """CPU per message of the floor subscriber (`floor_probe_child`) with the load generator
    paced at `rate`: what any asyncio process pays on this machine to be woken for, read and
    acknowledge a message arriving alone, before it does anything with it."""
    broker = PROCS.broker(tmp / "floor-probe" / "broker")
    try:
        p = PROCS.spawn([PY, str(Path(__file__).resolve()), "--floor-probe", str(broker.port)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, sut=True)
        if _readline(p, 30).strip() != "ready":
            return {"status": "failed", "error": (p.stderr.read() if p.poll() is not None else "")[-500:]}
        secs = 3 if quick else 8
        c0, x0 = proc_cpu_s(p.pid), ctx_switches(p.pid)
        gen = subprocess.run(loadgen_cmd("gen", "--port", str(broker.port), "--rate", str(rate),
                                         "--seconds", str(secs), "--seq-start", "0"),
                             capture_output=True, text=True, timeout=secs + 60)
        time.sleep(0.5)   # the last acknowledgements
        n = json.loads(gen.stdout.strip().splitlines()[-1])["sent"]
        res = {"status": "ok", "rate": rate, "messages": n,
               "cpu_us_per_msg": round((proc_cpu_s(p.pid) - c0) / n * 1e6, 1),
               "ctx_switches_per_msg": round((ctx_switches(p.pid) - x0) / n, 2)}
        Processes.end(p)
        print(f"  {rate:,} msg/s received and acknowledged, nothing else: {res['cpu_us_per_msg']} µs "
              f"CPU and {res['ctx_switches_per_msg']} context switches per message", flush=True)
        return res
    finally:
        broker.kill()


# -- report ----------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    def cmd_ver(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return None

    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "iotwasm": ver("iotwasm"), "wasmtime": ver("wasmtime"), "paho-mqtt": ver("paho-mqtt"),
        "mosquitto": cmd_ver([brokers.find_binary("mosquitto", "mosquitto"), "-h"]),
        "node": cmd_ver(["node", "--version"]) if shutil.which("node") else None,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
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
    mine = "iotwasm-saf" if BASELINE_SAF else "iotwasm"   # compared with the baseline
    if BASELINE in s and mine in s:   # the same system before and after a change
        base, now = s[BASELINE], s[mine]
        cmp: dict = {"sustained": _ratio(sustained(now), sustained(base)), "steps": {}}
        for ph in now.get("phases", []):
            b = phase_of(base, ph["label"])
            if b is not None and ph["label"] != "flood":
                cmp["steps"][ph["label"]] = {
                    "cpu_per_msg": _ratio(ph["cpu"]["sut_us_per_input_msg"], b["cpu"]["sut_us_per_input_msg"]),
                    "p50": _ratio(ph["p50_ms"], b["p50_ms"]), "p99": _ratio(ph["p99_ms"], b["p99_ms"])}
        out["vs_baseline"] = cmp
    return out


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a and b else None


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
        met1 = {True: "met", False: "NOT met", None: "not measured"}[t["throughput_target_met"]]
        met2 = {True: "met", False: "NOT met", None: "not measured"}[t["p99_target_met"]]
        lines.append(f"- {TITLES[k]}: {r1} Node-RED's sustained throughput (target ≥ {TARGET_RATIO:.0f}×: "
                     f"{met1}), {r2} plain Python's; p99 at 5k msg/s {fmt_ms(t['p99_at_5k_ms'])} ms "
                     f"(target ≤ {TARGET_P99_MS:.0f} ms: {met2})")
    vb = su.get("vs_baseline")
    if vb:
        steps = "; ".join(f"{label}: CPU/msg {fmt_x(r['cpu_per_msg'])}, p50 {fmt_x(r['p50'])}, "
                          f"p99 {fmt_x(r['p99'])}" for label, r in vb["steps"].items())
        mine = "iotwasm-saf" if BASELINE_SAF else "iotwasm"
        lines += ["", (f"{TITLES[mine]} against {TITLES[BASELINE]}, same run: sustained throughput "
                       f"{fmt_x(vb['sustained'])}; {steps} (below 1× is less).")]
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
        lines += ["", (f"The floor, iotwasm's MqttBus receiving {fp['rate']:,} msg/s paced and "
                       f"acknowledging each with nothing else to do: {fp['cpu_us_per_msg']} µs CPU "
                       f"and {fp['ctx_switches_per_msg']} context switches per message (a wake-up "
                       "of the process per message).")]
    lines += ["", f"Wall time: {results['wall_s']:.0f} s."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description="End-to-end benchmark through Mosquitto: iotwasm, "
                                             "plain Python, Node-RED.")
    ap.add_argument("--quick", action="store_true", help="short smoke run (2 s steps)")
    ap.add_argument("--only", default=",".join(SYSTEMS),
                    help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    ap.add_argument("--rates", help="comma-separated paced load steps in msg/s (default: "
                                    f"{','.join(map(str, RATES))})")
    ap.add_argument("--no-hot-update", action="store_true", help="skip the hot-update step")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the iotwasm node during the 10k/s and max steps")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help=f"another checkout of iotwasm: system {BASELINE} runs the node from its src")
    ap.add_argument("--baseline-saf", action="store_true",
                    help=f"system {BASELINE} runs with storeAndForward: true (the durable default), "
                         "to compare it with iotwasm-saf")
    ap.add_argument("--bus-probe", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--bus-probe-n", type=int, default=3000, help=argparse.SUPPRESS)
    ap.add_argument("--floor-probe", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--pin", metavar="CPUS", help="run each system under test on these CPUs "
                    "(e.g. 1) and the harness, broker, load generator and collector on the others")
    ap.add_argument("--out", type=Path, help="result file (default: results/e2e.json, "
                                             "results/e2e-quick.json with --quick)")
    args = ap.parse_args()
    if args.floor_probe:
        floor_probe_child(args.floor_probe)
        return 0
    if args.bus_probe:
        bus_probe_child(args.bus_probe, args.bus_probe_n)
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SYSTEMS and s != BASELINE:
            ap.error(f"unknown system {s!r}; choose from {', '.join(SYSTEMS)} (and {BASELINE} "
                     f"with --baseline)")
    if (BASELINE in only) != (args.baseline is not None):
        ap.error(f"--baseline DIR and system {BASELINE} go together")
    if args.baseline is not None:
        global BASELINE_SRC, BASELINE_SAF
        BASELINE_SRC = args.baseline.resolve() / "src"
        BASELINE_SAF = args.baseline_saf
        if BASELINE_SAF:
            TITLES[BASELINE] = "iotwasm baseline (storeAndForward: true, default)"
        if not (BASELINE_SRC / "iotwasm" / "__init__.py").exists():
            ap.error(f"--baseline {args.baseline}: no src/iotwasm there")
    cfg = Config.make(args.quick)
    if args.rates:
        cfg.rates = tuple(int(r) for r in args.rates.split(","))
    partial = set(only) != set(SYSTEMS) or args.no_hot_update or bool(args.rates)
    out_path = args.out or RESULTS / ("e2e-quick.json" if args.quick else
                                      "e2e-partial.json" if partial else "e2e.json")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    t_start = time.monotonic()
    if args.pin:
        SUT_CPUS.update(int(c) for c in args.pin.split(","))
        rest = set(os.sched_getaffinity(0)) - SUT_CPUS
        if not SUT_CPUS <= set(os.sched_getaffinity(0)) or not rest:
            print(f"--pin {args.pin}: needs CPUs this process may use and leaves none for the rest",
                  file=sys.stderr)
            return 2
        os.sched_setaffinity(0, rest)   # the harness and everything it starts but the systems
    machine = machine_info()
    if args.pin:
        machine["pinned"] = {"sut": ",".join(map(str, sorted(SUT_CPUS))),
                             "rest": ",".join(map(str, sorted(set(os.sched_getaffinity(0)))))}
    if BASELINE_SRC is not None:
        machine["baseline"] = {"src": str(BASELINE_SRC), "code": code_version(BASELINE_SRC.parent)}
    results: dict = {"machine": machine, "quick": cfg.quick,
                     "command": " ".join([".venv/bin/python" if ".venv" in PY else PY, *sys.argv]),
                     "config": {"rates": cfg.rates, "rate_seconds": cfg.rate_seconds,
                                "max_seconds": cfg.max_seconds, "warmup_seconds": cfg.warmup_seconds,
                                "hot_seconds": cfg.hot_seconds, "message_bytes": "~105",
                                "pass_fraction": PASS_FRACTION, "devices": 100},
                     "systems": {}}
    tmp = Path(tempfile.mkdtemp(prefix="iotwasm-e2e-"))
    try:
        for key in only:
            print(f"{TITLES[key]}:", flush=True)
            results["systems"][key] = run_system(key, cfg, tmp, args.profile)
        machine["node-red"] = node_red_version()
        if not args.no_hot_update:
            rate, why = pick_hot_rate(results["systems"].get("iotwasm"))
            runs = [(rate, why)]
            if rate != 10_000:
                runs.append((10_000, ("10k msg/s, more than iotwasm sustains: losses here include "
                                      "what the broker drops from the node's full queue")))
            results["hot_update"] = []
            for r, w in runs:
                print(f"hot update under load ({r:,} msg/s):", flush=True)
                results["hot_update"].append(run_hot_update(cfg, tmp, r, w))
        if any(k.startswith("iotwasm") for k in only):
            print("iotwasm's MQTT bus alone (QoS 1 publishes, no route, no wasm):", flush=True)
            results["bus_probe"] = run_bus_probe(tmp, cfg.quick)
            print("the floor: iotwasm's MQTT bus receiving alone (QoS 1, paced, nothing done):",
                  flush=True)
            results["floor_probe"] = run_floor_probe(tmp, cfg.quick)
    except KeyboardInterrupt:
        print("interrupted: stopping every process", flush=True)
        PROCS.cleanup()
        return 130
    finally:
        PROCS.cleanup()
        if not os.environ.get("E2E_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    machine["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    machine["code_at_end"] = code_version()
    if machine["code_at_end"] != machine["code"]:
        print(f"WARNING: the iotwasm sources changed during the run ({machine['code']} → "
              f"{machine['code_at_end']}): systems started at different times may have run "
              "different code", flush=True)
    results["wall_s"] = round(time.monotonic() - t_start, 1)
    results["summary"] = summary(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(markdown(results))
    print(f"\nresults: {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    return 0 if all(r["status"] == "ok" for r in results["systems"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
