"""`--profile`: py-spy samples of the iotwasm node during a step and the CPU of each of its
threads, summarised by thread, by what the code does and by function.

Split from run.py. It reads the node only from outside (py-spy, /proc); its categories follow
the node's code rather than the harness, and change when that code does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from harness import PROCS, PY, Processes
from phases import CLK


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
