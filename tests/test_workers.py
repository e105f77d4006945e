"""`iotwasm up --workers N`: one node's routes over N worker processes behind an ingress.

The chaos cases of tests/test_chaos.py, run against a node with two workers: nothing lost
and every device's messages in order through a graceful restart, a kill -9 of the whole node,
a kill -9 of one worker (its unsettled messages wait for its next process), a route edit
and a restart of the source broker."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from chaos import ChaosRig, rig_fixture
from conftest import ECHO_WAT
from test_chaos import play, restart_with

COUNT, RATE, AT = 900, 300, 300


rig = rig_fixture(ECHO_WAT, workers=2)


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
