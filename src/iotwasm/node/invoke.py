"""Synchronous invocation of one deployment on this node (`POST /v1/deployments/{name}/invoke`,
`iotwasm invoke NAME`): messages in, outputs and dead letters back in the answer.

An invocation is treated as a one-step route whose source is the caller: the deployment's
topic grants apply as they do in a route (a message on a topic it may not receive, an output
on a topic it may not emit, is a dead letter naming the grant), its limits are its own
(`resources.*`: a module that spins ends at its timeout with the usual ``timeout`` dead
letter), and the batch goes through the deployment's handle, so hot updates, the health gate
and tracing see it like any route batch.

Guest code never runs on the event loop: each deployment has its own `Worker` threads for
invocations (as many as it has replicas, at most `MAX_WORKERS`), so a tenant whose module
spins at its limit holds up only invocations of that deployment — not the API, not other
tenants, not the routes. Workers are keyed by the deployment's identity (uid): a deployment
deleted and created again under the same name gets new ones, and the workers of one that is
gone are closed at the next invocation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import CapabilityDenied, ContainerUnavailable, IotwasmError
from ..message import BatchResult, DeadLetter, Message, Output
from ..pipeline.route_steps import acl_allows
from ..pipeline.worker import Worker

if TYPE_CHECKING:
    from .node import Node

#: at most this many messages in one invocation
MAX_MESSAGES = 1000
#: at most this many invocation threads per deployment (however many replicas it has)
MAX_WORKERS = 8


class NotInvocable(IotwasmError):
    """The deployment does not exist on this node (any more)."""
    kind = "not_found"


@dataclass
class Invocation:
    """What one invocation gave: outputs (index = the input message's) and dead letters."""
    deployment: str
    revision: int
    outputs: list[Output] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    elapsed_ms: float = 0.0


class _Pool:
    """A deployment's invocation threads; an invocation takes the least loaded one."""

    def __init__(self, name: str):
        self.name = name
        self.workers: list[Worker] = []
        self.pending: list[int] = []

    def pick(self, want: int) -> int:
        while len(self.workers) < min(max(1, want), MAX_WORKERS):
            self.workers.append(Worker(f"invoke-{self.name}-{len(self.workers)}"))
            self.pending.append(0)
        return min(range(len(self.workers)), key=self.pending.__getitem__)

    def close(self) -> None:
        for w in self.workers:
            w.close()


class Invocations:
    """The node's synchronous invocations (one per node: `Node.invocations`)."""

    def __init__(self, node: Node):
        self.node = node
        self._pools: dict[str, _Pool] = {}   # by deployment uid
        self.count = 0

    async def invoke(self, name: str, messages: Sequence[Message]) -> Invocation:
        """Run `messages` through deployment `name`; every message comes back as outputs or a
        dead letter. Raises NotInvocable (no such deployment) or ContainerUnavailable (not
        running: suspended, in error), having run nothing."""
        if not 1 <= len(messages) <= MAX_MESSAGES:
            raise IotwasmError(f"invoke {name}: {len(messages)} messages; between 1 and {MAX_MESSAGES} "
                               "per invocation")
        rec = self.node.deployments.get(name)
        if rec is None:
            raise NotInvocable(f"deployment {name!r} is not running on this node")
        self._sweep()
        pool = self._pools.get(rec.uid)
        if pool is None:
            pool = self._pools[rec.uid] = _Pool(name)
        handle = rec.handle
        i = pool.pick(handle.current.replicas)
        pool.pending[i] += 1
        try:
            t0 = time.perf_counter()
            inv = await pool.workers[i].run(run_once, handle, list(messages))
            inv.elapsed_ms = (time.perf_counter() - t0) * 1000
        finally:
            pool.pending[i] -= 1
        self.count += 1
        return inv

    def _sweep(self) -> None:
        """Close the threads of deployments that are gone."""
        if len(self._pools) <= len(self.node.deployments):
            return
        live = {rec.uid for rec in self.node.deployments.values()}
        for uid in [u for u in self._pools if u not in live]:
            self._pools.pop(uid).close()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def run_once(handle, messages: list[Message]) -> Invocation:
    """One invocation, on a worker thread: the deployment's subscribe grants filter what goes
    in, its publish grants what comes out (as in a route), and every refusal is a dead letter."""
    acl = handle.acl
    revision = handle.revision
    dead: list[DeadLetter] = []
    keep: list[int] = []
    for i, m in enumerate(messages):
        if acl_allows(acl.can_subscribe, m.topic):
            keep.append(i)
        else:
            acl.stats.subscribe_denied += 1
            dead.append(DeadLetter(i, m, CapabilityDenied(
                f"may not receive {m.topic!r} (subscribe grants: {', '.join(acl.subscribe) or 'none'})",
                module=handle.name)))
    result = handle.process([messages[i] for i in keep]) if keep else BatchResult()
    outputs: list[Output] = []
    for o in result.outputs:
        index = keep[o.index]
        src = messages[index]
        topic = o.topic or src.topic
        if acl_allows(acl.can_publish, topic):
            outputs.append(Output(index, topic, o.payload))
        else:
            acl.stats.publish_denied += 1
            dead.append(DeadLetter(index, Message(topic, o.payload, src.timestamp_ms), CapabilityDenied(
                f"may not emit on {topic!r} (publish grants: {', '.join(acl.publish) or 'none'})",
                module=handle.name)))
    dead += [DeadLetter(keep[d.index], d.message, d.error) for d in result.dead_letters]
    dead.sort(key=lambda d: d.index)
    return Invocation(handle.name, revision, outputs, dead)


__all__ = ["MAX_MESSAGES", "ContainerUnavailable", "Invocation", "Invocations", "NotInvocable", "run_once"]
