"""A node over a directory of manifests that a test writes and edits, run in the test's event
loop.

`site` (a fixture): the test's directory with the echo module (tests/conftest.py's ECHO_WAT),
`v2.wat` (the same behaviour with a new digest) and `trap.wat` (traps on every message), and
an empty `manifests` directory. `deployment` and `route` are the manifests' text; `write` puts
one in place with a new stamp; `started` starts a node over the directory; `publish` sends
numbered messages to `in/d<n>`; `wait_for` polls a condition.

A test module takes the fixture with an explicit re-export (its tests name it as a parameter):

    from nodesite import site as site
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from iotwasm.node import Node, NodeConfig

from conftest import ECHO_WAT
from waiting import wait_for as wait_for  # for the tests that wait through this module

TRAP_ALL_WAT = ECHO_WAT.replace("local.get $first i32.const 33 i32.eq (if (then unreachable))",
                                "unreachable")
V2_WAT = ECHO_WAT.replace("(global $heap (mut i32) (i32.const 1024))",
                          "(global $heap (mut i32) (i32.const 2048))")  # same behaviour, new digest


def deployment(name: str, module: str, replicas: int = 1, gate: int = 20) -> str:
    return f"""
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  module: {module}
  replicas: {replicas}
  capabilities:
    topics: {{subscribe: ["in/#"], publish: ["in/#"]}}
  updateStrategy: {{healthGate: {{messages: {gate}, maxTrapRate: 0.2}}}}
"""


def route(name: str, step: str, table: str) -> str:
    return f"""
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: {name}}}
spec:
  source: {{bus: {{topic: "in/{{device}}"}}}}
  steps: [{step}]
  sinks: [{{store: {{table: {table}}}}}]
"""


@pytest.fixture()
def site(tmp_path: Path):
    (tmp_path / "echo.wat").write_text(ECHO_WAT)
    (tmp_path / "v2.wat").write_text(V2_WAT)
    (tmp_path / "trap.wat").write_text(TRAP_ALL_WAT)
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    return tmp_path, mdir


def write(mdir: Path, name: str, text: str) -> None:
    p = mdir / name
    p.write_text(text)
    # make sure the node sees a new stamp even within one mtime tick
    t = time.time_ns() + 1_000_000
    import os
    os.utime(p, ns=(t, t))


async def started(tmp: Path, mdir: Path) -> Node:
    node = Node(NodeConfig(data_dir=tmp / "data", manifests=mdir, sync_interval_s=0.05))
    await node.start()
    return node


async def publish(node: Node, n: int, start: int = 0, devices: int = 5) -> None:
    for i in range(start, start + n):
        await node.bus.publish(f"in/d{i % devices}", b"%d" % i, qos=1)
