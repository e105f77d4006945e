"""The systems under test: an iotwasm node (`iotwasm up`, from this checkout or from the
baseline's, with `--workers` for iotwasm-workers), plain Python (plain_python.py) and Node-RED,
each started against a given broker, and the waits that tell when one serves.

Split from run.py. What differs between the systems is here, so that a system's load steps
(load_steps.py) and the hot update (hot_update.py) drive any of them the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from harness import HERE, MODULES, NODE_RED_DIR, NODE_RED_JS, PROCS, PY, ROOT, Processes, brokers
from phases import _readline


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
