"""Traffic splits on a node: a route step shared between a stable and a canary deployment,
by seeded weight and by a match on topic or payload field; real modules on the in-process bus."""

from __future__ import annotations

import asyncio
import random

import pytest

from iotwasm.message import Message

from iotwasm.node.manifests import ManifestError, parse_documents

from conftest import ECHO_WAT
from nodesite import started, wait_for, write

CANARY_WAT = ECHO_WAT.replace("(global $heap (mut i32) (i32.const 1024))",
                              "(global $heap (mut i32) (i32.const 2048))")  # same behaviour, new digest


def deployment(name: str, module: str) -> str:
    return f"""
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  module: {module}
  capabilities:
    topics: {{subscribe: ["in/#"], publish: ["in/#"]}}
"""


def route(split: str, table: str = "out") -> str:
    return f"""
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: r}}
spec:
  source: {{bus: {{topic: "in/{{device}}"}}}}
  steps: [stable]
  split:
    stable: {split}
  batch: {{maxSize: 500}}
  sinks: [{{store: {{table: {table}}}}}]
"""


def messages_of(node, name: str) -> int:
    return node.deployments[name].handle.current.stats().totals()["messages"]


def run_split(tmp_path, split: str, payloads):
    (tmp_path / "stable.wat").write_text(ECHO_WAT)
    (tmp_path / "canary.wat").write_text(CANARY_WAT)
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    write(mdir, "a.yaml", deployment("stable", str(tmp_path / "stable.wat")) + "---"
          + deployment("canary", str(tmp_path / "canary.wat")) + "---" + route(split))

    async def main():
        node = await started(tmp_path, mdir)
        try:
            for topic, payload in payloads:
                await node.bus.publish(topic, payload, qos=1)
            n = len(payloads)
            await wait_for(lambda: node.store.count("out") == n, timeout=60, what=f"{n} rows")
            view = node.snapshot()["routes"]["r"]["splits"]["stable"]
            return view, messages_of(node, "stable"), messages_of(node, "canary")
        finally:
            await node.shutdown()

    return asyncio.run(main())


def test_a_10_percent_split_sends_10_percent_of_10000_messages_to_the_canary(tmp_path):
    payloads = [(f"in/d{i % 50}", b'{"n": %d}' % i) for i in range(10_000)]
    view, stable, canary = run_split(tmp_path, "{deployment: canary, weight: 10, seed: 7}", payloads)
    assert 800 <= canary <= 1200, canary
    assert stable + canary == 10_000
    # the route's own count agrees with what each deployment's container handled
    assert view["messages"] == {"stable": stable, "canary": canary, "fallback": 0}
    assert view["weight"] == 10 and view["canary"] == "canary"


def test_matching_messages_always_go_to_the_canary(tmp_path):
    payloads = ([(f"in/lab{i % 3}", b'{"n": %d}' % i) for i in range(30)]
                + [(f"in/d{i % 3}", b'{"fw": "2.1", "n": %d}' % i) for i in range(20)]
                + [(f"in/d{i % 3}", b'{"fw": "2.0", "n": %d}' % i) for i in range(40)])
    view, stable, canary = run_split(tmp_path, '{deployment: canary, match: {field: fw, equals: "2.1"}}',
                                     payloads)
    assert (stable, canary) == (70, 20)


def test_a_topic_match_and_a_weight_combine(tmp_path):
    payloads = [("in/lab", b"x") for i in range(30)] + [(f"in/d{i % 5}", b"y") for i in range(2000)]
    view, stable, canary = run_split(tmp_path, '{deployment: canary, weight: 50, seed: 1, '
                                     'match: {topic: "in/lab"}}', payloads)
    # every in/lab message, and about half of the others
    assert 900 <= canary - 30 <= 1100 and stable + canary == 2030


def test_split_manifests_are_checked():
    base = route("{deployment: canary, weight: 10}")
    [r] = parse_documents(base, "r.yaml")
    assert r.spec.deployments() == ["stable", "canary"]
    for bad, why in (("{deployment: stable, weight: 10}", "sends to its own deployment"),
                     ("{deployment: canary}", "neither a weight nor a match"),
                     ("{deployment: canary, weight: 120}", "less than or equal to 100"),
                     ("{deployment: canary, match: {}}", "a match needs a topic, a field")):
        with pytest.raises(ManifestError, match=why):
            parse_documents(route(bad), "r.yaml")
    with pytest.raises(ManifestError, match="split 'other' is not a step of this route"):
        parse_documents(base.replace("    stable: {", "    other: {"), "r.yaml")


FAULTY_ROUTE = """
apiVersion: iotwasm.io/v1
kind: Route
metadata: {name: r}
spec:
  source: {bus: {topic: "in/{device}"}}
  steps: [stable]
  sinks: [{store: {table: out}}, {store: {table: copy}}]
  faults:
    - {step: stable, failPercent: 20, delayPercent: 10, delay: 1ms, seed: 4}
    - {sink: 1, failPercent: 100}
"""


def test_injected_faults_fail_their_share_say_so_and_are_recorded(tmp_path):
    (tmp_path / "stable.wat").write_text(ECHO_WAT)
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    write(mdir, "a.yaml", deployment("stable", str(tmp_path / "stable.wat")) + "---" + FAULTY_ROUTE)

    async def main():
        node = await started(tmp_path, mdir)
        try:
            for i in range(500):
                await node.bus.publish(f"in/d{i % 7}", b"%d" % i, qos=1)
            # each message is dead once: in the step (its injected share), or else at sink 1
            await wait_for(lambda: node.snapshot()["routes"]["r"]["dead_letters"] == 500, timeout=60,
                           what="500 dead letters")
            failed_in_step = 500 - node.store.count("out")
            assert 70 <= failed_in_step <= 130, failed_in_step
            assert node.store.count("copy") == 0          # the second sink failed every batch
            dead = node.state.dead_letters("r", limit=2000)
            by_step = {d["step"] for d in dead}
            assert by_step == {"stable", "r/1:store"}
            assert all(d["kind"] == "fault_injected" and "injected failure" in d["error"] for d in dead)
            assert sum(d["step"] == "stable" for d in dead) == failed_in_step
            view = node.snapshot()["routes"]["r"]["faults"]
            assert view["step stable"]["failed"] == failed_in_step and view["step stable"]["delayed"] > 0
            assert view["sink r/1:store"]["failed"] == 500 - failed_in_step
            events = [e for e in node.state.events("r") if e["kind"] == "faults"]
            assert events and "step stable: delay 1ms on 10% of calls, fail 20%" in events[0]["message"]
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_a_route_without_faults_injects_none_and_fault_specs_are_checked():
    [r] = parse_documents(route("{deployment: canary, weight: 10}"), "r.yaml")
    assert r.spec.faults == []
    for bad, why in (("{step: stable, sink: 0, failPercent: 1}", "exactly one of step or sink"),
                     ("{step: other, failPercent: 1}", "'other' is not a step"),
                     ("{sink: 3, failPercent: 1}", "sink 3 does not exist"),
                     ("{step: stable, delayPercent: 10}", "needs failPercent, or delayPercent with a positive delay")):
        with pytest.raises(ManifestError, match=why):
            parse_documents(route("{deployment: canary, weight: 10}") + f"  faults: [{bad}]\n", "r.yaml")


def test_a_canary_failing_its_health_gate_is_rolled_back_by_itself(tmp_path):
    (tmp_path / "stable.wat").write_text(ECHO_WAT)
    (tmp_path / "canary.wat").write_text(ECHO_WAT.replace(
        "local.get $first i32.const 33 i32.eq (if (then unreachable))", "unreachable"))   # traps on all
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    write(mdir, "a.yaml", deployment("stable", str(tmp_path / "stable.wat")) + "---"
          + deployment("canary", str(tmp_path / "canary.wat")) + "---"
          + route("{deployment: canary, weight: 50, seed: 2, healthGate: {messages: 20, maxTrapRate: 0.2}}"))

    async def main():
        node = await started(tmp_path, mdir)
        try:
            def split():
                return node.snapshot()["routes"]["r"]["splits"]["stable"]

            i = 0
            while split()["gate"]["verdict"] == "watching":
                await node.bus.publish(f"in/d{i % 3}", b"%d" % i, qos=1)
                i += 1
                if i % 10 == 0:   # let those ten through the split before looking again
                    await wait_for(lambda: sum(split()["messages"].values()) == i, what=f"{i} split")
                assert i < 1000
            gate = split()["gate"]
            assert gate["verdict"] == "rolled-back" and gate["failed"] >= 5
            assert "failed its health gate" in gate["reason"] and split()["weight"] == 0
            events = [e for e in node.state.events("r") if e["kind"] == "canary-rolled-back"]
            assert events and "all traffic back to stable" in events[0]["message"]
            await wait_for(lambda: sum(split()["messages"].values()) == i, what="first wave through the split")
            canary_before = split()["messages"]["canary"]
            for j in range(100):
                await node.bus.publish(f"in/d{j % 3}", b"x", qos=1)
            await wait_for(lambda: sum(split()["messages"].values()) == i + 100, what="second wave through")
            assert split()["messages"]["canary"] == canary_before   # none went to the canary
            # every message the canary had trapped on; all the others stored
            await wait_for(lambda: node.store.count("out") == i + 100 - canary_before, what="all stored")
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_seeded_picks_do_not_depend_on_how_the_stream_is_cut_into_batches(runtime):
    from iotwasm.container import WasmContainer
    from iotwasm.pipeline.split import SplitStep

    stable = WasmContainer("stable", ECHO_WAT, runtime=runtime).start()
    canary = WasmContainer("canary", CANARY_WAT, runtime=runtime).start()
    try:
        msgs = [Message("in/d", b"%d" % i) for i in range(3000)]

        # the picks over the whole stream, cut three different ways
        def picks(sizes):
            split, out, i = SplitStep(stable, canary, weight=10, rng=random.Random(5)), [], 0
            for size in sizes:
                out += [i + k for k in split.pick(msgs[i:i + size])]
                i += size
            return out

        whole = picks([3000])
        assert picks([1] * 3000) == whole == picks([7, 500, 93, 2400])
        assert 240 <= len(whole) <= 360
        # and the split hands exactly those to the canary, outputs back in input order
        split = SplitStep(stable, canary, weight=10, rng=random.Random(5))
        res = split.process(msgs[:500])
        assert [o.index for o in res.outputs] == list(range(500))
        assert split.stats["canary"] == len([k for k in whole if k < 500])
        assert canary.stats().totals()["messages"] == split.stats["canary"]
    finally:
        stable.stop()
        canary.stop()
