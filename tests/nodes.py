"""A node over the echo module, for tests that need a real route through a real wasm step.

The manifest text: an ``echo`` Deployment (tests/conftest.py's ECHO_WAT: each input comes back
unchanged on its own topic) and Routes through it, with the parts tests vary as parameters —
the source, the sinks (and their storeAndForward), the batch size, the replicas, the topics
the module may use. `echo_site` writes the module and the manifests into a test's directory.

And the node that runs them: `running` in this event loop (started, or served as `iotwasm up`
serves), `up` as a child process, as a user starts it.

    mdir = echo_site(tmp_path, echo_route("uplink", [mqtt_sink(uplink.url, "up/{device}")]))
    async with running(mdir, tmp_path / "data", name="edge1", broker=broker.url) as node:
        ...
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from conftest import ECHO_WAT
from iotwasm.node import Node, NodeConfig


def echo_deployment(module: Path | str, *, topics: str = "in/#", replicas: int = 1) -> str:
    """The ``echo`` Deployment of `module`, allowed to subscribe and publish `topics`."""
    return f"""\
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  module: {module}
  replicas: {replicas}
  capabilities:
    topics: {{subscribe: ["{topics}"], publish: ["{topics}"]}}
"""


def mqtt_source(topic: str = "in/{device}", *, queue: str | None = None) -> str:
    """An MQTT source at QoS 1 (sharing its messages with the nodes of `queue`)."""
    shared = f", queue: {queue}" if queue else ""
    return f'{{mqtt: {{topic: "{topic}", qos: 1{shared}}}}}'


def mqtt_sink(url: str, topic: str, *, store_and_forward: bool | None = None) -> str:
    """An MQTT sink at QoS 1; storeAndForward left to its default (on) unless given."""
    sink = f'{{mqtt: {{url: "{url}", topic: "{topic}", qos: 1}}'
    if store_and_forward is not None:
        sink += f", storeAndForward: {'true' if store_and_forward else 'false'}"
    return sink + "}"


def store_sink(table: str) -> str:
    return f"{{store: {{table: {table}}}}}"


def echo_route(name: str, sinks: Sequence[str], *, source: str | None = None,
               batch: int | None = None) -> str:
    """A Route `name`: `source` (default `mqtt_source()`) → echo → `sinks`, with batches of at
    most `batch` messages when given."""
    lines = ["apiVersion: iotwasm.io/v1", "kind: Route", f"metadata: {{name: {name}}}", "spec:",
             f"  source: {source or mqtt_source()}", "  steps: [echo]"]
    if batch is not None:
        lines.append(f"  batch: {{maxSize: {batch}}}")
    lines.append("  sinks:")
    lines.extend(f"    - {s}" for s in sinks)
    return "\n".join(lines) + "\n"


def echo_site(tmp: Path, *routes: str, topics: str = "in/#", replicas: int = 1,
              wat: str = ECHO_WAT) -> Path:
    """Write the module (`wat`, the echo module unless given) to ``tmp/echo.wat`` and its
    Deployment with `routes` to one manifest in ``tmp/m``; returns that directory."""
    module = tmp / "echo.wat"
    module.write_text(wat)
    mdir = tmp / "m"
    mdir.mkdir()
    docs = [echo_deployment(module, topics=topics, replicas=replicas), *routes]
    (mdir / "a.yaml").write_text("---\n".join(docs))
    return mdir


@asynccontextmanager
async def running(manifests: Path, data: Path, *, name: str, broker: str | None = None,
                  serve: bool = False, **config: Any) -> AsyncIterator[Node]:
    """A node in this event loop over `manifests`, shut down gracefully on the way out.

    By default it is started (`Node.start`: the manifests applied once, routes subscribed).
    With `serve` it runs as `iotwasm up` runs it (`Node.run` as a task: periodic sync, the
    manifest watch), entered once it is ready. `config`: more NodeConfig fields."""
    node = Node(NodeConfig(data_dir=data, manifests=manifests, broker=broker, name=name, **config))
    if not serve:
        await node.start()
        try:
            yield node
        finally:
            await node.shutdown()
        return
    task = asyncio.create_task(node.run())
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not node.ready:
            if task.done():
                task.result()             # it failed to start: say why
                raise AssertionError(f"node {name} ended before it was ready")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"node {name} not ready within 30s")
            await asyncio.sleep(0.02)
        yield node
    finally:
        node.stop()
        await asyncio.wait_for(task, 30)


def up(manifests: Path, data: Path, broker: str, *, name: str = "edge1", api: str | None = None,
       log: Path | None = None, extra: Sequence[str] = (),
       env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """``iotwasm up MANIFESTS --broker URL --data DIR -v`` as a child process, its API on
    `api` (none unless given), with `env` added to its environment; its output is appended
    to `log` (default ``node-<name>.log`` next to `data`)."""
    log = log or data.parent / f"node-{name}.log"
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "iotwasm.cli.main", "up", str(manifests), "--broker", broker,
             "--data", str(data), "--name", name, *(["--api", api] if api else ["--no-api"]),
             "-v", *extra],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None)


def stop_up(node: subprocess.Popen) -> None:
    """SIGINT a node started by `up` that must still be running; it must exit 0."""
    assert node.poll() is None, "the node restarted or died"
    node.send_signal(signal.SIGINT)
    assert node.wait(60) == 0


def kill_up(node: subprocess.Popen) -> None:
    """Kill a node started by `up` if it still runs (a test's clean-up)."""
    if node.poll() is None:
        node.kill()
        node.wait(10)
