"""Routes, rules and the node on a full disk: backpressure, never an acknowledgement and never a
drop. A route holds its batch unacknowledged while its store is full, and its dead letters
until the node database can keep them (each counted once); rule actions and alerts wait for
space; a deployment applied on a full disk is applied by itself once space returns.

The SQLite files go on a tmpfs of a few MiB (tests/smallfs.py) that the test fills to the
last byte and frees again.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import ECHO_WAT
from smallfs import fill_to_the_last_dead_letter, wait_for
from smallfs import small_disk  # noqa: F401  (fixture)

from iotwasm.container import WasmContainer
from iotwasm.errors import SinkRejected
from iotwasm.message import DeadLetter, Message
from iotwasm.messaging import open_bus
from iotwasm.messaging.acl import TopicACL
from iotwasm.node.state import NodeState
from iotwasm.pipeline import LocalStore, Outbox, RouteRunner, StoreSink
from iotwasm.pipeline.rules import (
    Action,
    AlertPolicy,
    EventTime,
    RuleDefinition,
    RuleRunner,
    RuleSpec,
    RuleStateStore,
)


# -- routes: backpressure, never an acknowledgement ---------------------------------------------
class StoreWhileConfirming:
    """A sink that takes a batch at once and stores it while the lane goes on: the storage
    error comes from its confirmation, after the lane moved on."""

    name = "r/0:confirming-store"

    def __init__(self, store: LocalStore):
        self.store = store

    async def deliver(self, messages, variables):
        return await (await self.submit(messages, variables))

    async def submit(self, messages, variables):
        async def confirmed():
            await asyncio.to_thread(self.store.insert, "out", "r", messages)
            return []
        return confirmed()


@pytest.mark.parametrize("sink", ["store", "confirming"])
def test_a_route_holds_its_batch_unacknowledged_while_the_store_is_full(small_disk, sink):  # noqa: F811
    async def main():
        store = LocalStore(small_disk.path / "store.db")
        store.insert("out", "r", [Message("t", b"warm-up")])
        runner = RouteRunner("r", [], [StoreSink("r/0:store", store, "out", "r") if sink == "store"
                                       else StoreWhileConfirming(store)])
        runner.start()
        small_disk.fill()
        loop = asyncio.get_running_loop()
        futs = []
        for i in range(400):
            fut = loop.create_future()
            futs.append(fut)
            await runner.offer(Message(f"t/{i % 4}", b"%d:" % i + b"z" * 1000), {}, fut)
        storage = getattr(runner, "storage", None)
        await wait_for(lambda: all(f.done() for f in futs) or (storage is not None and storage.error is not None),
                       what="the route to hold or to acknowledge")
        assert not all(f.done() for f in futs), "acknowledged although nothing could be stored"
        reason = str(runner.storage.error)
        assert reason.startswith(f"store {small_disk.path / 'store.db'}: database or disk is full")
        small_disk.free()
        await wait_for(lambda: all(f.done() for f in futs), what="every message through")
        assert all(f.result() is True for f in futs)
        assert runner.storage.error is None
        payloads = [r["payload"] for r in store.query("out", limit=1000)]
        seqs = sorted(int(p.split(":")[0]) for p in payloads if p != "warm-up")
        assert seqs == list(range(400))
        assert runner.stats.dead_letters == 0
        await runner.stop()
        store.close()

    asyncio.run(main())


class _Step:
    def __init__(self, container: WasmContainer):
        self.name = container.name
        self.container = container
        self.acl = TopicACL(["#"], ["#"], "echo")

    def process(self, messages):
        return self.container.process(messages)


def test_dead_letters_are_held_until_the_node_database_can_keep_them(small_disk, runtime):  # noqa: F811
    async def main():
        state = NodeState(small_disk.path / "node.db")
        uid = state.identify("Route", "", "r")
        echo = WasmContainer("echo", ECHO_WAT, runtime=runtime).start()

        async def dead_letter(route: str, step: str, dl: DeadLetter, variables: dict) -> None:
            m = dl.message
            await asyncio.to_thread(state.dead_letter, uid, route, step, dl.error.kind, str(dl.error), m.topic, m.payload)

        out = []

        class Keep:
            name = "keep"

            async def deliver(self, messages, variables):
                out.extend(messages)
                return []

        runner = RouteRunner("r", [_Step(echo)], [Keep()], dead_letter=dead_letter)
        runner.start()
        small_disk.fill()
        loop = asyncio.get_running_loop()
        futs = []
        for i in range(200):
            fut = loop.create_future()
            futs.append(fut)
            body = (b"!" if i % 2 else b"") + b"%d:" % i + b"q" * 1000   # '!' traps: a dead letter
            await runner.offer(Message("t", body), {}, fut)
        await wait_for(lambda: runner.storage.error is not None or all(f.done() for f in futs),
                       what="the dead-letter write to hold")
        assert not all(f.done() for f in futs)
        assert str(runner.storage.error).startswith(f"node state {small_disk.path / 'node.db'}: ")
        small_disk.free()
        await wait_for(lambda: all(f.done() for f in futs), what="every message through")
        kept = state.dead_letters(limit=1000)
        assert sorted(int(d["payload"][1:].split(b":")[0]) for d in kept) == list(range(1, 200, 2))
        assert sorted(int(m.payload.split(b":")[0]) for m in out) == list(range(0, 200, 2))
        await runner.stop()
        echo.stop()
        state.close()

    asyncio.run(main())


def test_a_dead_letter_held_for_storage_is_counted_once(small_disk):  # noqa: F811
    """`RouteRunner.dead_letter` (the way to dead-letter, for a route's steps and sinks and
    for what an uplink refused for good) holds the write while the node database is full and
    counts the dead letter once, however often the write is tried."""

    async def main():
        state = NodeState(small_disk.path / "node.db")
        tries: list[str] = []

        async def write(route: str, step: str, dl: DeadLetter, variables: dict) -> None:
            tries.append(step)
            m = dl.message
            await asyncio.to_thread(state.dead_letter, "", route, step, dl.error.kind, str(dl.error), m.topic, m.payload)

        runner = RouteRunner("r", [], [], dead_letter=write)
        fill_to_the_last_dead_letter(small_disk, state)
        refused = DeadLetter(0, Message("t", b"r" * 50_000), SinkRejected("refused: 422"))
        held = asyncio.create_task(runner.dead_letter("r/0:webhook", refused, {}))
        await wait_for(lambda: len(tries) >= 3, what="the write retried")
        assert str(runner.storage.error).startswith(f"node state {small_disk.path / 'node.db'}: database or disk is full")
        assert not held.done() and runner.stats.dead_letters == 1
        small_disk.free()
        await held
        assert runner.storage.error is None
        assert (runner.stats.dead_letters, dict(runner.stats.dead_by)) == (1, {"r/0:webhook": 1})
        assert "refused: 422" in runner.stats.last_dead["r/0:webhook"][1]
        assert [(d["step"], d["kind"]) for d in state.dead_letters(step="r/0:webhook")] == \
            [("r/0:webhook", "sink_rejected")]
        state.close()

    asyncio.run(main())


# -- rules: actions, alerts and checkpoints -----------------------------------------------------
def test_rule_actions_and_alerts_wait_for_space_instead_of_being_dropped(small_disk):  # noqa: F811
    async def main():
        bus = open_bus(None)
        await bus.connect()
        alerts: list[dict] = []
        await bus.subscribe("alerts/#", lambda m: alerts.append(json.loads(m.payload)), qos=1)
        store = LocalStore(small_disk.path / "store.db")
        outbox = Outbox(small_disk.path / "outbox.db")
        checkpoints = RuleStateStore(small_disk.path / "rules.db")
        runner = RuleRunner(bus, outbox=outbox, store=store, state=checkpoints, checkpoint_s=0.05)
        await runner.start()
        await runner.put(RuleDefinition(
            RuleSpec("hot", 'SELECT device, seq, pad FROM "s/{device}" WHERE t > 30', EventTime()),
            actions=[Action("store", table="hot")],
            alert=AlertPolicy(dedup="{device}-{seq}", topic="alerts/{rule}")))
        small_disk.fill()
        n = 300
        for i in range(n):
            await runner.offer(Message(f"s/d{i % 3}", json.dumps({"t": 40, "seq": i, "pad": "p" * 1000}).encode()))
        await wait_for(lambda: bool(runner.storage_problems()), what="rules to report the full disk")
        problems = runner.storage_problems()
        assert any(str(small_disk.path) in p and "database or disk is full" in p for p in problems), problems
        small_disk.free()
        await wait_for(lambda: store.count("hot") == n and len(alerts) == n, timeout=60,
                       what="every action and alert through")
        assert sorted(r["payload"]["seq"] for r in store.query("hot", limit=n)) == list(range(n))
        assert sorted(a["values"]["seq"] for a in alerts) == list(range(n))
        await wait_for(lambda: not runner.storage_problems(), what="problems cleared")
        await runner.stop()
        await bus.close()
        for s in (store, outbox, checkpoints):
            s.close()

    asyncio.run(main())


# -- the node ------------------------------------------------------------------------------------
def test_a_deployment_applied_on_a_full_disk_runs_once_space_returns(small_disk, tmp_path):  # noqa: F811
    """The module's copy into the registry and the revision fail on the full disk: the node
    reports it, keeps the events it could not write, and applies the manifest again by itself
    (not only when the file changes) once space is back."""
    from iotwasm.node import Node, NodeConfig

    async def main():
        (tmp_path / "echo.wat").write_text(ECHO_WAT)
        mdir = tmp_path / "manifests"
        mdir.mkdir()
        node = Node(NodeConfig(data_dir=small_disk.path / "data", manifests=mdir, sync_interval_s=0.05))
        task = asyncio.create_task(node.run())
        try:
            await wait_for(lambda: node.ready, what="the node started")
            small_disk.fill()
            (mdir / "echo.yaml").write_text(f"""
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo}}
spec: {{module: {tmp_path / 'echo.wat'}}}
""")
            await wait_for(lambda: any("No space left on device" in p for p in node.last_problems),
                           what="the deployment's storage problem reported")
            assert "echo" not in node.deployments
            await wait_for(lambda: any(p.startswith("events not recorded: node state ")
                                       for p in node.storage_problems()), what="events kept in memory")
            small_disk.free()
            await wait_for(lambda: "echo" in node.deployments and not node.last_problems
                           and not node.storage_problems(), what="the deployment applied by itself")
            # the failure (recorded while the disk was full) was written late, not lost
            assert any(e["kind"] == "failed" and "No space left on device" in e["message"]
                       for e in node.state.events("manifests"))
            assert "created" in [e["kind"] for e in node.state.events("echo")]
        finally:
            node.stop()
            await task

    asyncio.run(main())
