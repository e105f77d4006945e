"""The rules clock runs only for what needs it: a node without rules, or with rules that have
no windows, is not woken ten times a second to tick an engine that has nothing to close.

The clock's period is 1 ms here, so a clock that ticked where it should not would tick dozens
of times in the 50 ms each negative check gives it; the checks count ticks, never time.
"""

from __future__ import annotations

import asyncio

from waiting import wait_for

from iotwasm.messaging import open_bus
from iotwasm.pipeline import LocalStore, Outbox
from iotwasm.pipeline.rules import EventTime, RuleDefinition, RuleRunner, RuleSpec, RuleStateStore

PLAIN = 'SELECT device, t FROM "s/{device}" WHERE t > 30'
WINDOWED = 'SELECT device, avg(t) AS t FROM "s/{device}" GROUP BY device, TUMBLINGWINDOW(ms, 1000)'


async def _counting_runner(tmp_path) -> tuple[RuleRunner, list[int]]:
    """A rule runner on an in-process bus whose clock's period is 1 ms, and the list its
    engine's ticks are counted in (one entry per tick)."""
    bus = open_bus(None)
    await bus.connect()
    runner = RuleRunner(bus, outbox=Outbox(tmp_path / "outbox.db"), store=LocalStore(tmp_path / "store.db"),
                        state=RuleStateStore(tmp_path / "rules.db"), tick_s=0.001)
    ticks: list[int] = []
    tick = runner.engine.tick

    def counted(*args):
        ticks.append(1)
        return tick(*args)

    runner.engine.tick = counted  # type: ignore[method-assign]
    return runner, ticks


def test_the_clock_ticks_only_while_a_rule_has_windows(tmp_path):
    async def main():
        runner, ticks = await _counting_runner(tmp_path)
        await runner.start()
        try:
            await asyncio.sleep(0.05)
            assert ticks == [], "ticked with no rule deployed"
            await runner.put(RuleDefinition(RuleSpec("plain", PLAIN, EventTime())))
            await asyncio.sleep(0.05)
            assert ticks == [], "ticked for a rule without windows"
            await runner.put(RuleDefinition(RuleSpec("windowed", WINDOWED, EventTime())))
            await wait_for(lambda: len(ticks) >= 5)   # windows to close: ticks every period
            await runner.remove("windowed")
            await runner.remove("plain")
            settled = len(ticks) + 1   # a tick already on the engine's thread may still count
            await asyncio.sleep(0.05)
            assert len(ticks) <= settled, "went on ticking after the last rule was removed"
            await runner.put(RuleDefinition(RuleSpec("windowed", WINDOWED, EventTime())))
            again = len(ticks)
            await wait_for(lambda: len(ticks) >= again + 5)   # and woken by the next one
        finally:
            await runner.stop()
            await runner.bus.close()

    asyncio.run(main())


def test_a_rule_put_before_the_runner_starts_is_ticked_once_it_does(tmp_path):
    # a node deploys its rules, then starts the runner: the clock must not wait for a rule
    # that is already there
    async def main():
        runner, ticks = await _counting_runner(tmp_path)
        await runner.put(RuleDefinition(RuleSpec("windowed", WINDOWED, EventTime())))
        await runner.start()
        try:
            await wait_for(lambda: len(ticks) >= 5)
        finally:
            await runner.stop()
            await runner.bus.close()

    asyncio.run(main())
