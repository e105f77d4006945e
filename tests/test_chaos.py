"""Chaos: no message is lost through restarts, edits and outages.

Each case runs the node as a user runs it (`iotwasm up` with a manifest directory and a data
directory, a child process), with its own private Mosquittos: numbered QoS 1 messages go in on
the devices' broker, through an echo deployment, out to an uplink broker with store-and-forward,
and a collector there counts by sequence number what was lost and what came twice
(tests/chaos.py). Something happens mid-stream — a signal, a manifest edit, a broker going
away — and afterwards every message must have arrived.

Duplicates: docs/node.md ("Delivery guarantees") says which paths are at-least-once. A restart
of the node (graceful or kill -9) or of a broker may deliver a message twice; the cases count
and report them (the summary at the end of the module's run). A route edit and a hot update
hand work over inside the running node and must deliver every message exactly once.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from chaos import ChaosRig, Report, rig_fixture
from conftest import ECHO_WAT

#: modest load: enough that messages are queued in the node when it is disturbed, small
#: enough that the module stays well under two minutes on a shared two-core machine
COUNT, RATE, AT = 900, 150, 300

#: the uplink stays away long enough for the node's reconnect backoff to grow several steps
#: and for hundreds of messages to pile up in the outbox; 15 s of outage would only add more
#: rows of the same kind and more waiting at the capped backoff, not a different behaviour
SINK_OUTAGE_S = 4.0

# the same echo, another digest: a hot update that changes nothing but the module
ECHO_V2_WAT = ECHO_WAT.replace('(global $heap', '(global $version i32 (i32.const 2))\n  (global $heap', 1)

# echo that spins ~15 ms per call first: one message a batch falls behind RATE, so an edit
# finds hundreds of messages queued in the route (and a larger batch catches up afterwards)
SLOW_ECHO_WAT = ECHO_WAT.replace(
    "(local $kind i32) (local $first i32)",
    "(local $kind i32) (local $first i32) (local $spin i32)\n"
    "    i32.const 4000000 local.set $spin\n"
    "    (block $s (loop $sl local.get $spin i32.eqz br_if $s\n"
    "      local.get $spin i32.const 1 i32.sub local.set $spin br $sl))", 1)


@pytest.fixture(scope="module")
def chaos_summary(request):
    """Collects each case's counts and prints them at the end of the module's run."""
    rows: list[tuple[str, Report]] = []
    yield rows
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not rows:
        return
    with capture.global_and_fixture_disabled():  # shown whether the cases passed or not
        reporter.write_line("")
        reporter.write_line("chaos cases (lost / duplicates by sequence number):")
        for case, report in rows:
            reporter.write_line(f"  {case:<24} {report.line()}")


rig = rig_fixture(ECHO_WAT)
slow_rig = rig_fixture(SLOW_ECHO_WAT, batch=1)


def play(rig: ChaosRig, summary: list, case: str, disturb, **kw) -> Report:
    report = asyncio.run(rig.run(disturb, count=kw.pop("count", COUNT), rate=kw.pop("rate", RATE),
                                 at=kw.pop("at", AT), **kw))
    summary.append((case, report))
    assert "Traceback" not in rig.node.log_text(), rig.node.log_text()[-4000:]
    assert report.lost == [], f"{case}: {report.line()}; node log {rig.node.log_path}"
    assert report.out_of_order == [], f"{case}: {report.line()}"
    return report


async def restart_with(rig: ChaosRig, sig: int) -> None:
    rc = await asyncio.to_thread(rig.node.restart, sig)
    if sig != signal.SIGKILL:
        assert rc == 0, f"node exited with {rc} on signal {sig}"


def test_sigint_restart_loses_nothing(rig, chaos_summary):
    play(rig, chaos_summary, "SIGINT restart", lambda r: restart_with(r, signal.SIGINT))


def test_sigterm_restart_loses_nothing(rig, chaos_summary):
    """What systemd does on `systemctl restart`: at least as safe as kill -9."""
    play(rig, chaos_summary, "SIGTERM restart", lambda r: restart_with(r, signal.SIGTERM))


def test_sigkill_restart_loses_nothing(rig, chaos_summary):
    play(rig, chaos_summary, "SIGKILL restart", lambda r: restart_with(r, signal.SIGKILL))


def test_route_edit_mid_stream_loses_nothing_and_repeats_nothing(slow_rig, chaos_summary):
    """The edit finds messages queued in the route: they move to the new version with their
    acknowledgements still pending."""
    async def edit(r: ChaosRig) -> None:
        r.write_route(batch=8)

    report = play(slow_rig, chaos_summary, "route edit", edit)
    assert report.duplicates == 0, report.line()
    assert "uplink updated" in slow_rig.node.log_text()


def test_hot_update_mid_stream_loses_nothing_and_repeats_nothing(rig, chaos_summary):
    v2 = rig.dir / "echo-v2.wat"
    v2.write_text(ECHO_V2_WAT)

    async def update(r: ChaosRig) -> None:
        r.write_deployment(module=v2)

    report = play(rig, chaos_summary, "hot update", update)
    assert report.duplicates == 0, report.line()


def test_sink_broker_outage_loses_nothing(rig, chaos_summary):
    async def outage(r: ChaosRig) -> None:
        await asyncio.to_thread(r.sink.stop)
        await asyncio.sleep(SINK_OUTAGE_S)  # the disturbance itself: the uplink is away
        await asyncio.to_thread(r.sink.start)

    play(rig, chaos_summary, f"sink down {SINK_OUTAGE_S:.0f} s", outage)


def test_source_broker_restart_loses_nothing(rig, chaos_summary):
    async def restart(r: ChaosRig) -> None:
        await asyncio.to_thread(r.source.restart)

    play(rig, chaos_summary, "source broker restart", restart)
