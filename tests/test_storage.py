"""Storage errors on a real small file system: typed, naming the file, and never a loss.

Each test puts its SQLite files on a tmpfs of a few MiB (tests/smallfs.py), fills it to the
last byte, remounts it read-only or writes garbage into a database, and checks what the
stores, the outbox forwarder, routes, rules and `iotwasm up` do: a `StorageError` that
names the file and the operating system's reason; work held (unacknowledged) and retried
while the disk is full and going through once space is back; no background task dying.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ECHO_WAT
from smallfs import small_disk  # noqa: F401  (fixture)

from iotwasm.backoff import Backoff
from iotwasm.container import WasmContainer
from iotwasm.errors import IotwasmError, SinkRejected, StorageError
from iotwasm.message import DeadLetter, Message
from iotwasm.messaging import open_bus
from iotwasm.messaging.acl import TopicACL
from iotwasm.messaging.bus import settled
from iotwasm.node.state import NodeState
from iotwasm.pipeline import LocalStore, Outbox, RouteRunner, StoreSink
from iotwasm.pipeline.outbox import Forwarder
from iotwasm.pipeline.rules import (
    Action,
    AlertPolicy,
    EventTime,
    RuleDefinition,
    RuleRunner,
    RuleSpec,
    RuleStateStore,
)
from iotwasm.sqlite import open_db

CLI = [sys.executable, "-m", "iotwasm.cli.main"]


async def wait_for(cond, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def items(n: int, start: int = 0, size: int = 1000) -> list[tuple[str, bytes]]:
    return [(f"t/{i}", json.dumps({"seq": i, "pad": "x" * size}).encode()) for i in range(start, start + n)]


# -- opening -----------------------------------------------------------------------------------
def test_a_read_only_file_system_is_a_storage_error_naming_the_file(small_disk):  # noqa: F811
    small_disk.read_only()
    path = small_disk.path / "outbox.db"
    with pytest.raises(StorageError) as e:
        open_db(path, synchronous="NORMAL", what="outbox")
    assert isinstance(e.value, IotwasmError) and e.value.kind == "storage"
    assert str(e.value).startswith(f"outbox {path}: ")
    assert "Read-only file system" in str(e.value)
    assert e.value.path == str(path)


def test_an_existing_database_on_a_read_only_file_system_is_refused_at_open(small_disk):  # noqa: F811
    path = small_disk.path / "node.db"
    NodeState(path).close()
    small_disk.read_only()
    with pytest.raises(StorageError) as e:
        NodeState(path)
    assert str(e.value).startswith(f"node state {path}: ")
    assert "Read-only file system" in str(e.value)


def test_a_corrupt_database_is_refused_at_open(tmp_path):
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database, just bytes\n" * 200)
    with pytest.raises(StorageError) as e:
        Outbox(path)
    assert str(e.value) == f"outbox {path}: file is not a database"


def test_a_missing_directory_that_cannot_be_created_names_it(small_disk):  # noqa: F811
    small_disk.read_only()
    with pytest.raises(StorageError) as e:
        LocalStore(small_disk.path / "sub" / "store.db")
    assert f"store {small_disk.path / 'sub' / 'store.db'}: " in str(e.value)
    assert "Read-only file system" in str(e.value)


# -- writing on a full disk --------------------------------------------------------------------
def test_outbox_append_on_a_full_disk_raises_and_works_again_once_space_returns(small_disk):  # noqa: F811
    outbox = Outbox(small_disk.path / "outbox.db")
    outbox.append("s", items(10))
    small_disk.fill()
    with pytest.raises(StorageError) as e:
        for k in range(1, 200):   # whatever slack SQLite had (free pages, WAL) runs out
            outbox.append("s", items(20, start=10 * k * 100))
    assert str(e.value).startswith(f"outbox {small_disk.path / 'outbox.db'}: database or disk is full")
    stored = outbox.backlog()
    assert stored == outbox._db.execute("SELECT count(*) FROM outbox").fetchone()[0]  # counters match
    small_disk.free()
    outbox.append("s", items(5, start=10**6))   # no "transaction within a transaction"
    assert outbox.backlog() == stored + 5
    rows = outbox.peek("s", limit=10**6)
    assert [json.loads(p)["seq"] for _, _, p in rows][-5:] == list(range(10**6, 10**6 + 5))
    outbox.close()


def test_store_insert_on_a_full_disk_raises_and_works_again_once_space_returns(small_disk):  # noqa: F811
    store = LocalStore(small_disk.path / "store.db")
    store.insert("out", "r", [Message("t", b"first")])
    small_disk.fill()
    with pytest.raises(StorageError) as e:
        for _ in range(200):
            store.insert("out", "r", [Message("t", b"y" * 1000)] * 20)
    assert str(e.value).startswith(f"store {small_disk.path / 'store.db'}: database or disk is full")
    small_disk.free()
    before = store.count("out")
    store.insert("out", "r", [Message("t", b"after")])
    assert store.count("out") == before + 1
    store.close()


def test_the_forwarder_outlives_a_failed_delete_and_sends_nothing_twice(small_disk):  # noqa: F811
    """The uplink acknowledged a window but the outbox cannot delete it (the WAL cannot grow
    on a full disk): the forwarder keeps those rows, says why, retries the delete, and
    drains the rest once space is back — without sending a message twice."""

    async def main():
        outbox = Outbox(small_disk.path / "outbox.db")
        outbox.append("up", items(300))
        outbox._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")   # the next write must grow the WAL
        small_disk.fill()
        sent: list[int] = []

        async def submit(window):
            sent.extend(json.loads(p)["seq"] for _, p in window)
            return settled([None] * len(window))

        fwd = Forwarder(outbox, "up", submit, batch=50, windows=2, min_backoff=0.01, max_backoff=0.05)
        fwd.start()
        await wait_for(lambda: fwd.storage.error is not None, what="the failed delete reported")
        assert str(fwd.storage.error).startswith(f"outbox {small_disk.path / 'outbox.db'}: database or disk is full")
        assert outbox.backlog("up") == 300   # nothing deleted, nothing lost
        small_disk.free()
        await wait_for(lambda: outbox.backlog("up") == 0, what="the outbox drained")
        assert fwd.storage.error is None
        assert sorted(sent) == list(range(300)) and len(sent) == 300   # in order, once each
        assert sent == sorted(sent)
        # the same forwarder (not a dead task) takes what comes next
        outbox.append("up", items(3, start=300))
        fwd.notify()
        await wait_for(lambda: len(sent) == 303, what="new rows forwarded")
        await fwd.stop()
        outbox.close()

    asyncio.run(main())


def fill_to_the_last_dead_letter(disk, state: NodeState) -> None:
    """Fill `disk` and the slack SQLite had in `state`'s file: a dead letter of more than
    1,000 bytes no longer fits."""
    disk.fill()
    with pytest.raises(StorageError):
        for _ in range(1000):
            state.dead_letter("", "filler", "s", "k", "e", "t", b"f" * 1000)


def test_a_refusal_for_good_is_held_while_its_dead_letter_cannot_be_written(small_disk, tmp_path):  # noqa: F811
    """The uplink refuses one message for good (`SinkRejected`) while the node database, where
    its dead letter goes, is full: the forwarder holds the window and says why, deletes
    nothing meanwhile, and once space is back the message is a dead letter exactly once and
    the messages behind it are delivered, in order."""

    async def main():
        state = NodeState(small_disk.path / "node.db")
        outbox = Outbox(tmp_path / "outbox.db")   # on a disk with room: deletes could happen
        outbox.append("up", items(10, size=100))
        fill_to_the_last_dead_letter(small_disk, state)
        kept_before = state.dead_letter_count()
        sent: list[int] = []
        attempts: list[bool] = []   # per attempt: the refused row still in the outbox

        async def submit(window):
            seqs = [json.loads(p)["seq"] for _, p in window]
            sent.extend(s for s in seqs if s != 3)
            return settled([SinkRejected("refused: seq 3") if s == 3 else None for s in seqs])

        async def reject(topic: str, payload: bytes, why: SinkRejected) -> None:
            attempts.append(outbox._db.execute("SELECT count(*) FROM outbox WHERE topic = 't/3'").fetchone()[0] == 1)
            await asyncio.to_thread(state.dead_letter, "", "r", "up", why.kind, str(why), topic,
                                    payload + b"x" * 50_000)   # more than any filler left room for

        fwd = Forwarder(outbox, "up", submit, batch=4, windows=2, min_backoff=0.01, max_backoff=0.05,
                        reject=reject)
        fwd.start()
        await wait_for(lambda: fwd.storage.error is not None, what="the dead-letter write held")
        assert str(fwd.storage.error).startswith(f"node state {small_disk.path / 'node.db'}: database or disk is full")
        await wait_for(lambda: len(attempts) >= 3, what="the write retried")
        assert outbox.backlog("up") == 10   # nothing deleted, the refused row least of all
        assert state.dead_letter_count() == kept_before and fwd.rejected == 0
        small_disk.free()
        await wait_for(lambda: outbox.backlog("up") == 0, what="the outbox drained")
        assert fwd.storage.error is None and fwd.last_error is None
        assert all(attempts), "the refused row was deleted before its dead letter was stored"
        dead = state.dead_letters(step="up")
        assert [(d["topic"], d["kind"], json.loads(d["payload"][:-50_000])["seq"]) for d in dead] == \
            [("t/3", "sink_rejected", 3)]
        assert fwd.rejected == 1
        assert sent == [0, 1, 2, 4, 5, 6, 7, 8, 9]   # the rest delivered, in order, once each
        await fwd.stop()
        outbox.close()
        state.close()

    asyncio.run(main())


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


# -- `iotwasm up` at start ---------------------------------------------------------------------
def _up(manifests: Path, data: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "up", str(manifests), "--data", str(data), "--no-api", "--seconds", "1"],
                          capture_output=True, timeout=120, check=False)


@pytest.fixture
def manifests(tmp_path) -> Path:
    (tmp_path / "echo.wat").write_text(ECHO_WAT)
    p = tmp_path / "m.yaml"
    p.write_text(f"""
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo}}
spec: {{module: {tmp_path / 'echo.wat'}}}
""")
    return p


def _one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode()
    assert r.returncode != 0, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_up_on_a_read_only_data_directory_exits_with_one_line(small_disk, manifests):  # noqa: F811
    small_disk.read_only()
    line = _one_line(_up(manifests, small_disk.path))
    assert str(small_disk.path) in line and "Read-only file system" in line


def test_up_with_its_databases_on_a_read_only_file_system_exits_with_one_line(small_disk, manifests):  # noqa: F811
    r = _up(manifests, small_disk.path)    # a first run creates everything
    assert r.returncode == 0, r.stderr.decode()
    small_disk.read_only()
    line = _one_line(_up(manifests, small_disk.path))
    assert str(small_disk.path) in line and ".db" in line and "Read-only file system" in line


def test_up_with_a_corrupt_node_database_exits_with_one_line(tmp_path, manifests):
    data = tmp_path / "data"
    data.mkdir()
    (data / "node.db").write_bytes(b"garbage " * 1000)
    line = _one_line(_up(manifests, data))
    assert line.endswith(f"node state {data / 'node.db'}: file is not a database")


# -- supervised background tasks ---------------------------------------------------------------
class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_supervised_task_is_restarted_and_a_repeating_failure_logged_once(caplog):
    from iotwasm.supervise import supervise

    log = logging.getLogger("test.supervised")
    clock = _Clock()

    async def main():
        runs = []

        async def flaky():
            runs.append(clock.now)
            clock.now += 1.0
            if len(runs) < 50:
                raise OSError("inotify went away")
            await asyncio.Event().wait()   # then runs for good

        task = supervise("watcher", flaky, log=log, backoff=Backoff(0.0001, 0.001, jitter=0),
                         clock=clock, summary_every=10.0)
        await wait_for(lambda: len(runs) == 50, what="50 runs")
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return runs

    with caplog.at_level(logging.INFO, logger="test.supervised"):
        runs = asyncio.run(main())
    assert len(runs) == 50
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "watcher" in tracebacks[0].getMessage()
    summaries = [r for r in caplog.records if "again" in r.getMessage()]
    # 48 repeats over 48 clock seconds, summarised at most once per 10 s
    assert 3 <= len(summaries) <= 5
    assert sum(int(r.args[1]) for r in summaries) <= 48


def test_a_supervised_task_that_finishes_is_not_restarted():
    from iotwasm.supervise import supervise

    async def main():
        runs = []

        async def once():
            runs.append(1)

        task = supervise("once", once, log=logging.getLogger("test.supervised"))
        await task
        return runs

    assert asyncio.run(main()) == [1]


def test_the_manifest_watch_follows_a_replaced_directory(tmp_path):
    """Deploy tools replace a configuration directory by renaming a new one over it: the
    inotify watch on the old directory would never fire again; the watch re-arms itself."""
    from iotwasm.node.watch import ManifestWatch

    async def main():
        mdir = tmp_path / "manifests"
        mdir.mkdir()
        changed = asyncio.Event()
        watch = ManifestWatch(mdir, changed)
        assert watch.start()
        (mdir / "a.yaml").write_text("a")
        await asyncio.wait_for(changed.wait(), 10)
        new = tmp_path / "manifests.new"
        new.mkdir()
        changed.clear()
        mdir.rename(tmp_path / "manifests.old")
        await asyncio.wait_for(changed.wait(), 10)   # the watched directory moved away
        new.rename(mdir)
        deadline = time.monotonic() + 20
        n = 0
        while True:   # the watch re-arms after a short backoff: write until it is seen
            changed.clear()
            (mdir / f"b{n}.yaml").write_text("b")
            n += 1
            try:
                await asyncio.wait_for(changed.wait(), 0.2)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "the watch never saw the new directory"
        watch.stop()

    asyncio.run(main())
