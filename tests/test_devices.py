"""The device registry: twins (reported, desired, delta) with compare-and-set versions, silence
flagged by an injected clock, the schema upgrade that adds them, and the `twin` host function a
module reads a twin through (denied unless granted)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import ECHO_WAT

from iotwasm.container import WasmContainer
from iotwasm.engine import Capabilities, HostContext, Limits, prepare
from iotwasm.errors import CapabilityDenied, ConfigError
from iotwasm.message import Message
from iotwasm.node.devices import DeviceRegistry, VersionConflict, delta, merge_patch
from iotwasm.node.state import NodeState
from iotwasm.node.state_schema import SCHEMA_VERSION


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def registry(tmp_path):
    state = NodeState(tmp_path / "node.db")
    clock = Clock()
    reg = DeviceRegistry(state, silent_after_s=60, clock=clock)
    reg.test_clock = clock
    yield reg
    state.close()


def test_merge_patch_and_delta_follow_rfc7396_and_compare_objects_key_by_key():
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}, "f": [1]}) == \
        {"a": 1, "b": {"d": 3, "e": 4}, "f": [1]}
    assert merge_patch({"a": 1}, {"a": {"x": 1}}) == {"a": {"x": 1}}
    assert delta({"fan": {"speed": 3, "mode": "auto"}, "led": "on"}, {"fan": {"speed": 3, "mode": "eco"}}) == \
        {"fan": {"mode": "auto"}, "led": "on"}
    assert delta({"fan": {"speed": 3}}, {"fan": {"speed": 3}, "extra": 1}) == {}


def test_desired_state_is_compare_and_set_and_the_delta_clears_when_reported(registry):
    t = registry.set_desired("default", "d1", {"fan": {"speed": 3}, "led": "on"}, expect_version=0)
    assert (t.desired_version, t.delta) == (1, {"fan": {"speed": 3}, "led": "on"})
    # a writer that read version 0 is refused once another wrote version 1
    with pytest.raises(VersionConflict) as e:
        registry.set_desired("default", "d1", {"led": "off"}, expect_version=0)
    assert (e.value.expected, e.value.current) == (0, 1)
    assert registry.get("default", "d1").desired == {"fan": {"speed": 3}, "led": "on"}
    t = registry.set_desired("default", "d1", {"led": None}, expect_version=1)
    assert (t.desired, t.desired_version) == ({"fan": {"speed": 3}}, 2)
    [r] = registry.report("default", [("d1", {"fan": {"speed": 3}, "temp": 21.5})])
    assert r.changed and r.twin.reported_version == 1 and r.twin.delta == {}
    # the same report again changes nothing but the time it was seen
    [r] = registry.report("default", [("d1", {"temp": 21.5})])
    assert not r.changed and r.twin.reported_version == 1


def test_a_batch_of_reports_merges_in_order_per_device(registry):
    reports = registry.report("default", [("a", {"x": 1}), ("b", {"y": 1}), ("a", {"x": 2, "z": 1}),
                                          ("a", {"z": None}), ("b", {"y": 1})])
    assert [(r.twin.device, r.first, r.changed) for r in reports] == [
        ("a", True, True), ("b", True, True), ("a", False, True), ("a", False, True), ("b", False, False)]
    a, b = registry.get("default", "a"), registry.get("default", "b")
    assert (a.reported, a.reported_version) == ({"x": 2}, 3)
    assert (b.reported, b.reported_version) == ({"y": 1}, 1)
    # a report that would make the twin too large fails the batch, which changes nothing
    with pytest.raises(ConfigError, match="reported state of default/a: larger than 65536 bytes"):
        registry.report("default", [("b", {"y": 2}), ("a", {"big": "x" * 40_000}), ("a", {"big2": "x" * 40_000})])
    assert registry.get("default", "b").reported == {"y": 1}


def test_devices_are_their_namespace_s_and_listed_by_it(registry):
    registry.set_desired("acme", "d1", {"x": 1})
    registry.set_desired("globex", "d1", {"x": 2})
    assert registry.get("acme", "d1").desired == {"x": 1}
    assert registry.get("globex", "d1").desired == {"x": 2}
    assert registry.get("acme", "d1").uid != registry.get("globex", "d1").uid
    assert [t.namespace for t in registry.twins(["acme"])] == ["acme"]
    assert [(t.namespace, t.device) for t in registry.twins()] == [("acme", "d1"), ("globex", "d1")]
    assert registry.twins([]) == []


@pytest.mark.parametrize("namespace,device,doc,says", [
    ("default", "a/b", {}, "device id 'a/b'"),
    ("default", "+", {}, "device id '+'"),
    ("Acme", "d1", {}, "namespace 'Acme'"),
    ("default", "d1", [1], "must be a JSON object, not list"),
    ("default", "d1", {"x": "y" * 70_000}, "larger than 65536 bytes"),
    ("default", "d1", json.loads("{\"a\":" * 20 + "1" + "}" * 20), "nested deeper than 16"),
])
def test_bad_names_and_documents_are_refused_naming_what(registry, namespace, device, doc, says):
    with pytest.raises(ConfigError, match=None) as e:
        registry.set_desired(namespace, device, doc)
    assert says in str(e.value)
    assert registry.twins() == []


def test_what_a_namespace_can_make_the_registry_hold_is_bounded(tmp_path, monkeypatch):
    import iotwasm.node.devices as devices

    state = NodeState(tmp_path / "node.db")
    try:
        reg = DeviceRegistry(state, max_devices=2)
        reg.set_desired("acme", "a", {})
        reg.report("acme", [("b", {"x": 1})])
        with pytest.raises(ConfigError, match="namespace acme has 2 devices, the most one namespace may have"):
            reg.set_desired("acme", "c", {})
        reg.set_desired("acme", "a", {"x": 2})     # known devices still change
        reg.set_desired("globex", "c", {})         # another namespace has its own count
        monkeypatch.setattr(devices, "MAX_COMMANDS_KEPT", 3)
        t = reg.get("acme", "a")
        ids = [reg.add_command(t, "c", i, "x")["id"] for i in range(5)]
        assert [c["id"] for c in reg.commands(t)] == ids[:1:-1]   # the newest three, newest first
    finally:
        state.close()


def test_the_node_looks_for_silence_every_sixtieth_of_the_limit(registry):
    """DeviceLink.sweep, which the node calls every second, hands the registry a sweep only
    once a sixtieth of the silence limit has passed on the registry's clock since the last."""
    import asyncio

    from iotwasm.node.device_link import DeviceLink

    clock = registry.test_clock
    link = DeviceLink(registry, lambda kind, twin, message: None)
    registry.report("default", [("a", {})])
    clock.t += 0.7
    registry.report("default", [("b", {})])

    async def sweep() -> list[str]:
        return [t.device for t in await link.sweep()]

    async def main():
        clock.t += 59.8            # a: 60.5 s silent, b: 59.8 s
        assert await sweep() == ["a"]
        clock.t += 0.5             # b: 60.3 s silent, but the last look was 0.5 s ago (< 60 s / 60)
        assert await sweep() == []
        clock.t += 0.5
        assert await sweep() == ["b"]

    asyncio.run(main())


def test_a_device_silent_past_the_limit_is_flagged_once_and_its_return_is_noticed(registry):
    clock = registry.test_clock
    [r] = registry.report("default", [("d1", {"on": True})])
    assert r.returned and r.first   # first seen
    registry.set_desired("default", "quiet", {"x": 1})   # never seen: not silent, just unknown
    clock.t += 59
    assert registry.sweep() == []
    clock.t += 2
    [t] = registry.sweep()
    assert (t.device, t.silent) == ("d1", True)
    assert registry.sweep() == []                 # flagged once
    assert [t.device for t in registry.twins(silent=True)] == ["d1"]
    [r] = registry.report("default", [("d1", {"on": True})])
    assert r.returned and not r.first and not r.twin.silent and r.twin.last_seen == clock.t
    [r] = registry.report("default", [("d1", {"on": True})])
    assert not r.returned


def test_a_version_1_node_database_is_upgraded_keeping_its_rows(tmp_path):
    path = tmp_path / "node.db"
    state = NodeState(path)
    uid = state.identify("Deployment", "default", "d")
    state._x("INSERT INTO kv(uid, key, value) VALUES (?, ?, ?)", (uid, b"k", b"v"))
    state._x("DROP TABLE devices")
    state._x("DROP TABLE device_commands")
    state._x("PRAGMA user_version=1")
    state.close()
    state = NodeState(path)
    try:
        assert state._x("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 2
        assert state._x("SELECT value FROM kv WHERE uid = ?", (uid,)) == [(b"v",)]
        assert state.uid_of("Deployment", "d") == uid
        DeviceRegistry(state).set_desired("default", "d1", {"x": 1})
    finally:
        state.close()
    assert sqlite3.connect(path).execute("SELECT count(*) FROM devices").fetchone() == (1,)


def test_command_history_records_each_attempt_and_the_outcome(registry):
    t = registry.set_desired("default", "d1", {})
    rec = registry.add_command(t, "reboot", {"delay": 1}, "alice")
    assert (rec["status"], rec["attempts"], rec["payload"]) == ("pending", 0, {"delay": 1})
    registry.update_command(rec["id"], status="sent", attempts=1, note="attempt 1")
    registry.update_command(rec["id"], status="acked", attempts=2, result={"ok": 1}, note="acknowledged")
    [h] = registry.commands(t)
    assert (h["status"], h["attempts"], h["result"], h["by"]) == ("acked", 2, {"ok": 1}, "alice")
    assert [x["note"] for x in h["log"]] == ["attempt 1", "acknowledged"]
    assert registry.unfinished_commands() == []


# -- the twin host function ---------------------------------------------------------------

#: answers each batch with the twin of the device its first message names ("-" when unknown)
TWIN_READER_WAT = ECHO_WAT.replace(
    '(memory (export "memory") 2)',
    '(import "iot" "twin_get" (func $twin (param i32 i32 i32 i32) (result i32)))\n'
    '  (memory (export "memory") 2)').split('  (func (export "iot_process")')[0] + r'''
  (func (export "iot_process") (param $in i32) (param $len i32) (param $count i32)
        (param $out i32) (param $cap i32) (result i32)
    (local $tl i32) (local $pl i32) (local $pay i32) (local $n i32) (local $w i32)
    local.get $in i32.load offset=8 local.set $tl
    local.get $in i32.load offset=12 local.set $pl
    local.get $in i32.const 16 i32.add local.get $tl i32.add local.set $pay
    local.get $out i32.const 8 i32.add local.set $w
    local.get $pay local.get $pl local.get $w i32.const 16 i32.add i32.const 4096 call $twin local.set $n
    local.get $n i32.const 0 i32.lt_s (if (then
      local.get $w i32.const 16 i32.add i32.const 45 i32.store8
      i32.const 1 local.set $n))
    local.get $w i32.const 0 i32.store
    local.get $w i32.const 0 i32.store offset=4
    local.get $w i32.const 0 i32.store offset=8
    local.get $w local.get $n i32.store offset=12
    local.get $out local.get $n i32.const 16 i32.add i32.store
    local.get $out i32.const 1 i32.store offset=4
    i32.const 0))
'''


def test_the_twin_host_function_is_denied_unless_granted(runtime):
    c = WasmContainer("reader", TWIN_READER_WAT, runtime=runtime, capabilities=Capabilities.grant("kv", "log"))
    with pytest.raises(CapabilityDenied) as e:
        c.start()
    assert str(e.value) == "reader: imports iot.twin_get, which needs capability 'twin' (not granted)"


def test_a_granted_module_reads_a_twin_and_an_unknown_device_is_absent(runtime, registry):
    registry.set_desired("default", "d1", {"fan": 2})
    registry.report("default", [("d1", {"fan": 1})])

    def twin(device: str) -> bytes | None:
        t = registry.get("default", device)
        return None if t is None else json.dumps(t.to_dict()).encode()

    ctx = HostContext("reader", Capabilities.grant("twin"), twin=twin)
    guest = prepare(runtime.load(TWIN_READER_WAT), Limits(), ctx).new_guest()
    [out] = guest.process([Message("t", b"d1")]).outputs
    doc = json.loads(out.payload)
    assert (doc["reported"], doc["desired"], doc["delta"]) == ({"fan": 1}, {"fan": 2}, {"fan": 2})
    [out] = guest.process([Message("t", b"nobody")]).outputs
    assert out.payload == b"-"
    # granted without a registry (iotwasm run): every device is unknown
    guest = prepare(runtime.load(TWIN_READER_WAT), Limits(), HostContext("r", Capabilities.grant("twin"))).new_guest()
    assert [o.payload for o in guest.process([Message("t", b"d1")]).outputs] == [b"-"]


def test_twins_page_by_namespace_and_id(registry):
    for ns, dev in (("acme", "b"), ("acme", "a"), ("globex", "a"), ("acme", "c")):
        registry.set_desired(ns, dev, {})
    first = registry.twins(limit=2)
    assert [(t.namespace, t.device) for t in first] == [("acme", "a"), ("acme", "b")]
    rest = registry.twins(after=("acme", "b"), limit=10)
    assert [(t.namespace, t.device) for t in rest] == [("acme", "c"), ("globex", "a")]


def test_commands_the_node_stopped_during_are_marked_interrupted_at_its_next_start(registry):
    import asyncio

    from iotwasm.messaging.bus import InProcessBus
    from iotwasm.node.device_link import DeviceLink

    t = registry.set_desired("default", "d1", {})
    running = registry.add_command(t, "reboot", None, "alice")
    registry.update_command(running["id"], status="sent", attempts=1, note="attempt 1")
    done = registry.add_command(t, "ping", None, "alice")
    registry.update_command(done["id"], status="acked", attempts=1, note="acknowledged")

    async def start() -> None:
        bus = InProcessBus()
        await bus.connect()
        link = DeviceLink(registry, lambda *a: None)
        await link.start(bus)
        await link.stop()
        await bus.close()

    asyncio.run(start())
    assert registry.command(running["id"])["status"] == "interrupted"
    assert registry.command(running["id"])["log"][-1]["note"] == "interrupted"
    assert registry.command(done["id"])["status"] == "acked"
