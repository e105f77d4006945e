"""`iotwasm up --workers N`: one node's routes over N worker processes behind an ingress.

The chaos cases of tests/test_chaos.py, run against a node with two workers: nothing lost
and every device's messages in order through a graceful restart, a kill -9 of the whole node,
a kill -9 of one worker (its unsettled messages wait for its next process), a route edit
and a restart of the source broker. And the workers' data directories on a small disk
(tests/smallfs.py) filled to the last byte mid-stream and freed again: the workers hold what
they cannot store, unacknowledged, and lose nothing, whether the node rides it out or is
stopped (Ctrl-C, kill -9) meanwhile and started again once the space is back."""

from __future__ import annotations

import asyncio
import os
import re
import signal

import pytest

from chaos import ChaosRig, Collector, Publisher, Report, StatusWatch, rig_fixture, until, wait_online
from conftest import ECHO_WAT
from smallfs import SmallDisk, rows, truncate_wal
from test_chaos import play, restart_with

COUNT, RATE, AT = 900, 300, 300
#: devices d0..d3 fall to worker 0 (CRC-32 of the device, modulo 2), d4 and d5 to worker 1
DEVICES = 6


rig = rig_fixture(ECHO_WAT, workers=2, devices=DEVICES)


def children(pid: int) -> list[int]:
    """The processes `pid` started (its workers)."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def test_sigint_restart_with_workers_loses_nothing(rig):
    play(rig, [], "SIGINT restart, 2 workers", lambda r: restart_with(r, signal.SIGINT),
         count=COUNT, rate=RATE, at=AT)


def test_sigkill_restart_with_workers_loses_nothing(rig):
    play(rig, [], "SIGKILL restart, 2 workers", lambda r: restart_with(r, signal.SIGKILL),
         count=COUNT, rate=RATE, at=AT)


def test_a_killed_worker_loses_nothing(rig):
    async def kill_one(r: ChaosRig) -> None:
        assert r.node.proc is not None
        workers = children(r.node.proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        await asyncio.sleep(0)

    play(rig, [], "worker SIGKILL, 2 workers", kill_one, count=COUNT, rate=RATE, at=AT)


def test_a_route_edit_with_workers_loses_nothing_and_repeats_nothing(rig):
    """Every worker sees the edit and replaces its route; the source stays subscribed."""
    async def edit(r: ChaosRig) -> None:
        r.write_route(batch=8)

    report = play(rig, [], "route edit, 2 workers", edit, count=COUNT, rate=RATE, at=AT)
    assert report.duplicates == 0, report.line()
    assert rig.node.log_text().count("uplink updated") == 2


def test_a_source_broker_restart_with_workers_loses_nothing(rig):
    """The ingress reconnects; what workers settle of the old connection is redelivered."""
    async def restart(r: ChaosRig) -> None:
        await asyncio.to_thread(r.source.restart)

    play(rig, [], "source broker restart, 2 workers", restart, count=COUNT, rate=RATE, at=AT)


def exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")   # a zombie has exited
    except FileNotFoundError:
        return True


def test_workers_stop_when_their_ingress_is_killed(rig):
    """A worker without its ingress has no work: it stops (and hands nothing on, as the
    broker's session keeps what was not acknowledged) instead of running on unseen."""
    from chaos import wait_online

    rig.node.start()
    asyncio.run(wait_online(rig.source.url, rig.node.name))
    assert rig.node.proc is not None
    workers = children(rig.node.proc.pid)
    assert len(workers) == 2
    rig.node.kill()

    async def gone() -> None:
        while not all(exited(w) for w in workers):
            await asyncio.sleep(0.05)

    asyncio.run(asyncio.wait_for(gone(), 60))
    assert "the link to the ingress is lost" in rig.node.log_text()


@pytest.mark.parametrize("args, error", [
    (["--broker", "mqtt://127.0.0.1:1"], "--workers runs without the management API"),
    (["--broker", "nats://127.0.0.1:1", "--no-api"], "--workers needs an MQTT broker"),
    (["--no-api"], "--workers needs an MQTT broker (--broker mqtt://host:port), not none"),
    (["--broker", "mqtt://127.0.0.1:1", "--no-api", "--fleet", "nats://127.0.0.1:1"],
     "--workers and --fleet do not go together"),
])
def test_workers_refuses_what_it_cannot_run(tmp_path, args, error):
    from typer.testing import CliRunner

    from iotwasm.cli.main import app

    (tmp_path / "m.yaml").write_text("")
    result = CliRunner().invoke(app, ["up", str(tmp_path / "m.yaml"), "--workers", "2",
                                      "--data", str(tmp_path / "d"), *args])
    assert result.exit_code != 0
    assert error in result.output


def _kept(path, n: int) -> None:
    from iotwasm.pipeline.outbox import Outbox

    path.parent.mkdir(parents=True, exist_ok=True)
    box = Outbox(path)
    box.append("uplink/0:mqtt", [("out/d1", b"x")] * n)
    box.close()


@pytest.mark.parametrize("kept, args, error", [
    ("workers/2/outbox.db", ["--workers", "2"], "start it as before (with --workers 3)"),
    ("workers/1/outbox.db", [], "start it as before (with --workers 2)"),
    ("outbox.db", ["--workers", "2"], "start it as before (without --workers)"),
])
def test_a_node_does_not_strand_messages_kept_by_another_number_of_workers(tmp_path, kept, args, error):
    """Changing the number of workers (or going to or from workers) while an outbox the new
    setting would not use still holds messages would leave them unsent for good."""
    from typer.testing import CliRunner

    from iotwasm.cli.main import app

    data = tmp_path / "d"
    _kept(data / kept, 3)
    (tmp_path / "m.yaml").write_text("")
    result = CliRunner().invoke(app, ["up", str(tmp_path / "m.yaml"), "--data", str(data), "--no-api",
                                      "--broker", "mqtt://127.0.0.1:1", *args])
    assert result.exit_code != 0
    assert f"{data / kept} holds 3 message(s)" in result.output and error in result.output


#: messages sent before the disk fills (kept in the outboxes: the uplink is away) and after
A, B = 600, 900


@pytest.fixture
def disk_rig(tmp_path):
    """A started two-worker `ChaosRig` whose data directory is on a small disk."""
    disk = SmallDisk(tmp_path / "disk", "32m").mount()
    rig = ChaosRig(tmp_path, ECHO_WAT, data=disk.path / "data", workers=2, devices=DEVICES)
    try:
        rig.start()
        yield rig, disk
    finally:
        rig.close()
        disk.unmount()


class FullDisk:
    """The first half of a full-disk case under `up --workers 2`: the node started, the
    uplink gone (A accumulates in each worker's outbox), the disk filled to the last byte while
    B comes (each worker's outbox append fails: its route holds, and B stays unacknowledged
    with the source broker). `--workers` runs without the API (no /readyz): what a user sees
    is each worker's log line naming its file and the OS error, the `storage` of each
    worker's own retained status (`iotwasm/nodes/{name}-w{k}/status`) and the same lines,
    `worker <k>: …`, in the node's status (`iotwasm/nodes/{name}/status`)."""

    def __init__(self, rig: ChaosRig, disk: SmallDisk):
        self.rig, self.disk, self.node = rig, disk, rig.node
        data = rig.data.resolve()
        self.outboxes = [data / "workers" / str(k) / "outbox.db" for k in range(2)]
        #: the devices' own retries (each may put a message in twice)
        self.retries = 0

    def kept(self) -> list[int]:
        return [rows(db, "SELECT count(*) FROM outbox") for db in self.outboxes]

    def logged(self, fmt: str) -> bool:
        """Each worker's log names its outbox in `fmt`."""
        text = self.node.log_words()
        return all(fmt.format(db) in text for db in self.outboxes)

    async def publish(self, count: int, first: int) -> None:
        async with Publisher(self.rig.source.url, count=count, rate=RATE, devices=self.rig.devices,
                             first=first) as pub:
            await pub.done()
        self.retries += pub.retries

    async def fill(self) -> None:
        rig, node = self.rig, self.node
        node.start()
        await wait_online(rig.source.url, node.name)
        assert node.proc is not None
        status = StatusWatch(rig.source.url, "+")
        own = StatusWatch(rig.source.url, node.name)    # the node's, published by its ingress
        await status.start()
        await own.start()
        try:
            # 1. the uplink goes away: A accumulates in both workers' outboxes
            await asyncio.to_thread(rig.sink.stop)
            await self.publish(A, 0)
            await until(lambda: sum(self.kept()) >= A and min(self.kept()) > 0, 60,
                        "A kept in both workers' outboxes", node.proc)
            for db in self.outboxes:
                await until(lambda: truncate_wal(db), 30, f"{db}'s WAL truncated", node.proc)

            # 2. the disk fills up and B keeps coming: each worker's route holds, and says why
            self.disk.fill()
            publishing = asyncio.create_task(self.publish(B, A))
            await until(lambda: self.logged("route uplink: outbox {}: database or disk is full"), 60,
                        "each worker's log naming its full outbox", node.proc)
            await publishing         # the source broker has all of B
            await until(lambda: all(any(f"route uplink holds messages: outbox {db}: database or disk is full"
                                        in s for s in status.storage_seen) for db in self.outboxes), 30,
                        "each worker's status naming its full outbox", node.proc)
            await until(lambda: all(any(f"worker {k}: route uplink holds messages: outbox {db}: database or "
                                        "disk is full" in s for s in own.storage_seen)
                                    for k, db in enumerate(self.outboxes)), 30,
                        "the node's own status naming each worker's full outbox", node.proc)
            assert sum(self.kept()) < A + B      # B is held, not stored
        finally:
            await status.bus.close()
            await own.bus.close()

    async def play(self, then) -> Report:
        """`fill()`, `await then()`, then wait for every message at the uplink and both
        outboxes drained, stop the node gracefully and count what arrived."""
        rig, node = self.rig, self.node
        async with Collector(rig.sink.url, "out/#") as out:
            await self.fill()
            await then()
            assert await out.all_arrived(A + B, 120), out.report(A + B).line()
            await until(lambda: self.kept() == [0, 0], 60, "both outboxes drained", node.proc)
            assert node.alive(), node.log_tail()
            rc = await asyncio.to_thread(node.stop, signal.SIGINT)
            assert rc == 0, f"node exited with {rc} on SIGINT; log:\n{node.log_tail()}"
            await out.flush()
            return out.report(A + B)

    def check(self, report: Report, case: str) -> str:
        """Nothing lost, each device's first arrivals in order, no worker restarted by its
        ingress, no traceback; returns the log."""
        log = self.node.log_text()
        print(f"{case}: {report.line()}; publisher retries {self.retries}")
        assert report.lost == [], f"{case}: {report.line()}; node log {self.node.log_path}"
        assert report.out_of_order == [], report.line()
        assert "Traceback" not in log, log[-4000:]
        assert " exited with " not in log, log[-4000:]
        return log


def test_a_full_disk_under_workers_holds_messages_and_loses_none(disk_rig):
    """A full disk under both workers (`FullDisk`); the uplink returns and acknowledges A,
    which the outboxes cannot delete; the space comes back: every message reaches the uplink,
    in each device's order, and neither the ingress nor a worker exits meanwhile."""
    rig, disk = disk_rig
    case = FullDisk(rig, disk)

    async def then() -> None:
        # 3. the uplink returns and acknowledges A, which the outboxes cannot delete yet
        await asyncio.to_thread(rig.sink.start)
        await until(lambda: case.logged("outbox forwarder uplink/0:mqtt: outbox {}: database or disk is full"),
                    60, "each worker's forwarder logging a failed delete", rig.node.proc)
        assert min(case.kept()) > 0
        # 4. space returns: everything goes through, no restart
        disk.free()

    report = asyncio.run(case.play(then))
    log = case.check(report, "disk full, 2 workers")
    # nothing here sends a message twice but a device's own retry: the uplink was away before
    # A was sent, and A's deletes that failed were retried, not A sent again
    assert report.duplicates <= case.retries, report.line()
    restarts = re.findall(r"workers joined \[0, 1\] of 2, restarts (\d+);", rig.node.log_words())
    assert restarts and restarts[-1] == "0", restarts[-1:]
    assert "storage writable again" in log


@pytest.mark.parametrize("restart", ["once space is back", "on the full disk"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_node_stopped_while_its_workers_hold_on_a_full_disk_loses_nothing(disk_rig, sig, restart):
    """What the workers hold on a full disk was never acknowledged: the node stopped then (a
    Ctrl-C, or kill -9 of the ingress, which takes its workers with it) and started again
    gets it all from the broker's session — started once the space is back, or still on the
    full disk (a worker that finds the disk full releases its disk reserve to open its
    databases, node/reserve.py) and the space freed after. The workers start together: the
    first to release its reserve may leave the other room enough to start without releasing
    its own, so one release is what every restart on the full disk shows."""
    rig, disk = disk_rig
    case = FullDisk(rig, disk)
    node = rig.node

    async def then() -> None:
        assert node.proc is not None
        workers = children(node.proc.pid)
        assert len(workers) == 2, workers
        rc = await asyncio.to_thread(node.stop, sig)
        if sig == signal.SIGINT:
            assert rc == 0, f"node exited with {rc} on SIGINT; log:\n{node.log_tail()}"
        await until(lambda: all(exited(w) for w in workers), 60, "both workers gone")
        if restart == "on the full disk":
            released = node.log_words().count("disk full: released the")
            node.start()
            await until(lambda: node.log_words().count("disk full: released the") >= released + 1, 60,
                        "a worker releasing its reserve", node.proc)
            await wait_online(rig.source.url, node.name)   # both workers took their routes
            disk.free()
            await asyncio.to_thread(rig.sink.start)
        else:
            disk.free()
            await asyncio.to_thread(rig.sink.start)
            node.start()

    report = asyncio.run(case.play(then))
    case.check(report, f"disk full, 2 workers, {signal.Signals(sig).name}, restarted {restart}")
