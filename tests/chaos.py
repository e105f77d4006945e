"""Chaos helpers: the node run as a user runs it, numbered QoS 1 messages in, a collector out.

A chaos case is: private brokers (tests/brokers.py), an `iotwasm up` child process with a
manifest directory and a data directory, a `Publisher` that behaves like a device (numbered
QoS 1 messages at a steady rate, each retried until its broker acknowledged it), something done
to the system mid-stream (a signal, a manifest edit, a broker stopped), and a `Collector`
subscribed to the sink topic that counts, by sequence number, what was lost and what came
more than once.

    async with Publisher(source.url, count=900, rate=150) as pub, \\
            Collector(sink.url, "out/#") as out:
        await pub.reached(300)                                   # mid-stream
        await asyncio.to_thread(node.restart, signal.SIGTERM)    # what the case does
        await pub.done()
        await out.all_arrived(pub.count)
        await asyncio.to_thread(node.stop)   # graceful: what it still sends goes out now
        await out.flush()
        report = out.report(pub.count)
    assert report.lost == []

`NodeProcess` methods block (they wait for the process): call them through
`asyncio.to_thread` so the publisher and the collector keep running meanwhile. Everything a
case needs is here, so a new case (a disk filled and freed, a network cut) is a test function
with its own disturbance (tests/test_chaos.py: `ChaosRig.run`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from iotwasm.message import Message
from iotwasm.messaging import MqttBus
from iotwasm.messaging.errors import MessagingError
from nodes import echo_deployment, echo_route, mqtt_sink, up
from waiting import until_set

#: how long a node may take to start or to stop gracefully before the case fails
NODE_TIMEOUT = 60.0


class NodeProcess:
    """`iotwasm up MANIFESTS --broker URL --data DIR` as a child process, as a user starts it.

    Each start appends to `log_path`, so a failed case shows what every run of the node said.
    """

    def __init__(self, manifests: Path, data: Path, broker: str, *, name: str = "chaos",
                 extra: tuple[str, ...] = (), log_path: Path | None = None):
        self.manifests = manifests
        self.data = data
        self.broker = broker
        self.name = name
        self.extra = extra
        #: next to `data` unless given (a data directory on a small disk keeps its log elsewhere)
        self.log_path = log_path or data.parent / f"node-{name}.log"
        self.proc: subprocess.Popen | None = None
        self.exit_codes: list[int] = []

    def start(self) -> "NodeProcess":
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== start {time.strftime('%H:%M:%S')} ====\n".encode())
        # off a terminal the node's console wraps at 80 columns, and folds a word (a file's
        # path) longer than its column: wide enough for any path a case names
        self.proc = up(self.manifests, self.data, self.broker, name=self.name, log=self.log_path,
                       extra=self.extra, env={"COLUMNS": "200"})
        return self

    @property
    def status_topic(self) -> str:
        return f"iotwasm/nodes/{self.name}/status"

    def stop(self, sig: int = signal.SIGINT, timeout: float = NODE_TIMEOUT) -> int:
        """Send `sig` and wait for the process to end; returns its exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"node did not stop within {timeout}s after signal {sig}; "
                                 f"log {self.log_path}:\n{self.log_tail()}") from None
        self.exit_codes.append(rc)
        self.proc = None
        return rc

    def restart(self, sig: int = signal.SIGINT) -> int:
        rc = self.stop(sig)
        self.start()
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_words(self) -> str:
        """The log with its white space folded to single spaces: a message the console
        wrapped over several lines reads as one again."""
        return " ".join(self.log_text().split())

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


async def wait_online(url: str, node: str, timeout: float = NODE_TIMEOUT) -> None:
    """Wait for the node's retained status 'online' (published once its routes subscribed)."""
    bus = MqttBus(url)
    await bus.connect(timeout=10)
    seen = asyncio.Event()

    async def on(msg: Message) -> None:
        if json.loads(msg.payload).get("state") == "online":
            seen.set()

    await bus.subscribe(f"iotwasm/nodes/{node}/status", on, qos=1)
    try:
        await asyncio.wait_for(seen.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"node {node} did not report 'online' within {timeout}s") from None
    finally:
        await bus.close()


async def until(cond, timeout: float, what: str, node: subprocess.Popen | None = None):
    """Wait until `cond()` (called on a thread) is true and return its value; fail after
    `timeout` seconds, or at once when `node` (the process under test) has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(cond)
        if value:
            return value
        if node is not None and node.poll() is not None:
            raise AssertionError(f"the node exited ({node.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


class StatusWatch:
    """The retained status of `node` on its broker (`+`: of every node, e.g. the workers of
    `up --workers`), as a fleet or an operator sees it: what each said of its storage."""

    def __init__(self, url: str, node: str):
        self.bus = MqttBus(url)
        self.node = node
        self.storage_seen: list[str] = []

    async def start(self) -> None:
        await self.bus.connect(timeout=10)

        async def on(msg: Message) -> None:
            self.storage_seen += json.loads(msg.payload).get("storage", [])

        await self.bus.subscribe(f"iotwasm/nodes/{self.node}/status", on, qos=1)


class Publisher:
    """A device: `count` numbered messages (``{"seq": n}``, n from `first`) on
    ``in/d{n % devices}`` at QoS 1, `rate` a second, each retried until the broker acknowledged
    it — so every message is in the broker's hands once `done()` returns (a retry after a lost
    PUBACK may add a duplicate, which the collector counts like any other)."""

    def __init__(self, url: str, *, count: int, rate: float, devices: int = 4,
                 topic: str = "in/d{device}", first: int = 0):
        self.url = url
        self.count = count
        self.first = first
        self.rate = rate
        self.devices = devices
        self.topic = topic
        self.acknowledged = 0
        self.retries = 0
        self._bus: MqttBus | None = None
        self._task: asyncio.Task | None = None
        self._progress = asyncio.Event()

    async def __aenter__(self) -> "Publisher":
        self._bus = MqttBus(self.url, reconnect_min=0.05, reconnect_max=0.5)
        await self._bus.connect(timeout=10)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="publisher")
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._bus.close(timeout=1)

    async def _run(self) -> None:
        start = time.monotonic()
        for n in range(self.count):
            seq = self.first + n
            delay = start + n / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not waiting for an outcome
            topic = self.topic.format(device=seq % self.devices)
            payload = json.dumps({"seq": seq}).encode()
            while True:
                try:
                    await self._bus.publish(topic, payload, qos=1, timeout=2)
                    break
                except MessagingError:
                    self.retries += 1
                    await asyncio.sleep(0.05)
            self.acknowledged = n + 1
            self._progress.set()

    async def reached(self, n: int, timeout: float = NODE_TIMEOUT) -> None:
        """Wait until the broker acknowledged the first `n` messages (of this publisher's)."""
        async with asyncio.timeout(timeout):
            while self.acknowledged < n:
                if self._task.done():
                    self._task.result()
                self._progress.clear()
                await self._progress.wait()

    async def done(self, timeout: float = 120.0) -> None:
        await asyncio.wait_for(asyncio.shield(self._task), timeout)


@dataclass
class Report:
    """What reached the sink: lost (never arrived) and duplicated (arrived more than once)."""

    expected: int
    received: int
    lost: list[int]
    duplicates: int
    #: devices whose messages (first arrivals) did not come in the order they were sent
    out_of_order: list[str] = field(default_factory=list)

    def line(self) -> str:
        lost = f"{len(self.lost)}" + (f" (first: {self.lost[:10]})" if self.lost else "")
        return (f"expected {self.expected}, received {self.received}, lost {lost}, "
                f"duplicates {self.duplicates}"
                + (f", out of order on {', '.join(self.out_of_order)}" if self.out_of_order else ""))


class Collector:
    """Subscribed (QoS 1, persistent session: nothing is missed while its broker restarts) to
    the sink topic; counts each sequence number it receives."""

    def __init__(self, url: str, topic_filter: str = "out/#", *, client_id: str = "chaos-collector"):
        self.url = url
        self.filter = topic_filter
        self.client_id = client_id
        self.seen: Counter[int] = Counter()
        self.first_arrivals: dict[str, list[int]] = {}
        self._markers: set[str] = set()
        self._bus: MqttBus | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> "Collector":
        self._bus = MqttBus(self.url, client_id=self.client_id, reconnect_min=0.05,
                            reconnect_max=0.5)
        await self._bus.subscribe(self.filter, self._on, qos=1)
        await self._bus.connect(timeout=10)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._bus.close(timeout=1)

    async def _on(self, msg: Message) -> None:
        doc = json.loads(msg.payload)
        if "marker" in doc:
            self._markers.add(doc["marker"])
        else:
            seq = doc["seq"]
            if not self.seen[seq]:
                self.first_arrivals.setdefault(msg.topic, []).append(seq)
            self.seen[seq] += 1
        self._changed.set()

    def report(self, expected: int) -> Report:
        lost = [s for s in range(expected) if not self.seen[s]]
        disorder = [t for t, seqs in sorted(self.first_arrivals.items()) if seqs != sorted(seqs)]
        return Report(expected, sum(self.seen.values()), lost,
                      sum(n - 1 for n in self.seen.values() if n > 1), disorder)

    async def _until(self, predicate, timeout: float) -> bool:
        return await until_set(self._changed, predicate, timeout)

    async def all_arrived(self, expected: int, timeout: float = 60.0) -> bool:
        """Wait until every sequence number below `expected` arrived; False after `timeout`."""
        return await self._until(lambda: sum(1 for s in self.seen if s < expected) >= expected,
                                 timeout)

    async def flush(self, timeout: float = 30.0) -> None:
        """Return once everything the broker took for the sink topic before this call has
        arrived here: a marker published now comes after it (one broker, one subscriber)."""
        marker = f"{time.monotonic_ns()}"
        topic = self.filter.replace("#", "_flush").replace("+", "_flush")
        pub = MqttBus(self.url)
        await pub.connect(timeout=10)
        try:
            await pub.publish(topic, json.dumps({"marker": marker}).encode(), qos=1)
        finally:
            await pub.close(timeout=1)
        if not await self._until(lambda: marker in self._markers, timeout):
            raise AssertionError(f"the collector's flush marker did not come back within {timeout}s")


class ChaosRig:
    """Two private Mosquittos — `source`, the devices' broker and the node's bus, and `sink`,
    the uplink the route publishes to — a route ``in/{device}`` → echo → ``out/{device}``
    (QoS 1 both ways, store-and-forward on), and the node as a child process (with
    `workers` > 1, an ingress and that many worker processes).

    `data` may be given (e.g. a directory on a small filesystem); it defaults to one under
    `workdir`. `devices`: how many devices the case's publisher sends as (with workers, enough
    that each worker has some: a device's messages all go to the one its name hashes to).
    `run` plays one case."""

    def __init__(self, workdir: Path, module_wat: str, *, data: Path | None = None,
                 replicas: int = 1, batch: int = 16, workers: int = 1, devices: int = 4):
        from brokers import Mosquitto

        self.dir = workdir
        self.source = Mosquitto(workdir / "source")
        self.sink = Mosquitto(workdir / "sink")
        self.manifests = workdir / "manifests"
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.module = workdir / "echo.wat"
        self.module.write_text(module_wat)
        self.replicas = replicas
        self.batch = batch
        self.devices = devices
        self.data = data or workdir / "data"
        #: with workers > 1 the node is `iotwasm up --workers N`: an ingress and N worker processes
        self.node = NodeProcess(self.manifests, self.data, self.source.url,
                                extra=("--workers", str(workers)) if workers > 1 else (),
                                log_path=workdir / "node-chaos.log")

    def write_deployment(self, module: Path | None = None, replicas: int | None = None) -> None:
        text = echo_deployment(module or self.module, replicas=replicas or self.replicas)
        _replace(self.manifests / "deployment.yaml", text)

    def write_route(self, batch: int | None = None) -> None:
        _replace(self.manifests / "route.yaml", echo_route(
            "uplink", [mqtt_sink(self.sink.url, "out/{device}")], batch=batch or self.batch))

    def start(self) -> None:
        self.source.start()
        self.sink.start()
        self.write_deployment()
        self.write_route()

    def close(self) -> None:
        self.node.kill()
        for broker in (self.source, self.sink):
            broker.kill()

    async def run(self, disturb, *, count: int, rate: float, at: int,
                  arrival_timeout: float = 60.0) -> Report:
        """Start the node, publish `count` messages at `rate`; once `at` are in the source
        broker's hands, `await disturb(self)`; then wait until every message reached the
        sink (or `arrival_timeout` passed), stop the node gracefully and count."""
        self.node.start()
        await wait_online(self.source.url, self.node.name)
        async with Collector(self.sink.url, "out/#") as out:
            async with Publisher(self.source.url, count=count, rate=rate, devices=self.devices) as pub:
                await pub.reached(at)
                await disturb(self)
                await pub.done()
                if not self.node.alive():
                    raise AssertionError(f"the node is not running after the disturbance; log "
                                         f"{self.node.log_path}:\n{self.node.log_tail()}")
                await out.all_arrived(count, arrival_timeout)
            rc = await asyncio.to_thread(self.node.stop, signal.SIGINT)
            assert rc == 0, f"node exited with {rc} on SIGINT; log:\n{self.node.log_tail()}"
            await out.flush()
            return out.report(count)


def rig_fixture(module_wat: str, **kw):
    """A fixture giving each case a started `ChaosRig(tmp_path, module_wat, **kw)`, closed
    after it (its node killed, its brokers stopped); assign it to the fixture's name:
    ``rig = rig_fixture(ECHO_WAT, workers=2)``."""
    @pytest.fixture
    def fixture(tmp_path):
        """A started `ChaosRig`, closed after the case."""
        rig = ChaosRig(tmp_path, module_wat, **kw)
        rig.start()
        try:
            yield rig
        finally:
            rig.close()
    return fixture


def _replace(path: Path, text: str) -> None:
    """Write a manifest the way editors save: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
