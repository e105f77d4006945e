"""What the fleet tests share: the echo module's bytes (`ECHO`), `fleet_deployment` (a
Deployment of a module digest with its placement), `wait_for` (polls a condition, or a
coroutine's result, in the event loop) and `Member`: a node with its fleet agent, run in the
test's event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import wasmtime

from iotwasm.fleet import FleetAgent, FleetDeployment
from iotwasm.node import Node, NodeConfig

from conftest import ECHO_WAT
from waiting import wait_for

ECHO = wasmtime.wat2wasm(ECHO_WAT)


def fleet_deployment(name: str, module: str, placement: dict, memory: str = "16Mi",
                     replicas: int = 1) -> FleetDeployment:
    return FleetDeployment.parse({
        "deployment": {"apiVersion": "iotwasm.io/v1", "kind": "Deployment", "metadata": {"name": name},
                       "spec": {"module": module, "replicas": replicas, "resources": {"memory": memory}}},
        "placement": placement})


class Member:
    """A node with its fleet agent, run in this event loop."""

    def __init__(self, root: Path, name: str, url: str, labels: dict, **kw):
        self.node = Node(NodeConfig(data_dir=root / name, manifests=None, name=name, sync_interval_s=0.2))
        self.agent = FleetAgent(self.node, url, labels=labels, heartbeat_s=0.3, **kw)
        self.task: asyncio.Task | None = None

    async def start(self) -> "Member":
        self.task = asyncio.create_task(self.node.run())
        await wait_for(lambda: self.node.ready, what="node ready")
        self.agent.start()
        return self

    async def stop(self, leave: bool = True) -> None:
        await asyncio.wait_for(self.agent.stop(leave=leave), 10)
        self.node.stop()
        await asyncio.wait_for(self.task, 20)

    def running(self) -> set[str]:
        return set(self.node.deployments)
