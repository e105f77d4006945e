"""Devices over a real Mosquitto: desired state reaches a device that was offline and the delta
clears with its report; silence is flagged by an injected clock and the desired state is sent
again when the device speaks; commands are acknowledged, retried after a timeout, refused or
timed out, each outcome in the history; an ack cannot settle another tenant's command. The
devices are clients of their own (the project's MQTT client, another connection and id)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import wasmtime
from apinode import ApiNode, deployment

from iotwasm.message import Message
from iotwasm.messaging import open_bus
from test_devices import TWIN_READER_WAT


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


ROUTE = """apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  source: {{mqtt: {{topic: "{topic}"}}}}
  sinks: [{{twin: {{}}}}]
  batch: {{maxSize: 10, maxLinger: 1ms}}
"""


def poll(what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
    """`check()` once it is truthy; fails naming `what` after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def apoll(what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
    return await asyncio.to_thread(poll, what, check, timeout)


@pytest.fixture
def node(tmp_path, mosquitto):
    clock = Clock()
    api = ApiNode(tmp_path, node_config={"broker": mosquitto.url, "device_silence_s": 60,
                                         "device_clock": clock}).start()
    api.clock = clock
    api.broker = mosquitto.url
    for name, ns, topic in (("twins", "default", "devices/{device}/reported"),
                            ("acme-twins", "acme", "acme/devices/{device}/reported")):
        r = api.admin.post("/v1/apply", content=ROUTE.format(name=name, namespace=ns, topic=topic),
                           headers={"Content-Type": "application/yaml"})
        assert r.status_code == 200 and r.json()["problems"] == [], r.text
    yield api
    api.stop()


class Device:
    """A device on its own MQTT connection: what it received, per topic."""

    def __init__(self, url: str):
        self.bus = open_bus(url)
        self.got: dict[str, list[dict]] = {}
        self.raw: dict[str, list[bytes]] = {}   # what was not JSON

    async def __aenter__(self) -> Device:
        await self.bus.connect(timeout=10)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.bus.close()

    async def listen(self, topic_filter: str, handler=None) -> None:
        async def on(msg: Message) -> None:
            try:
                body = json.loads(msg.payload)
            except ValueError:
                self.raw.setdefault(msg.topic, []).append(msg.payload)
                return
            self.got.setdefault(msg.topic, []).append(body)
            if handler is not None:
                await handler(msg.topic, body)
        await self.bus.subscribe(topic_filter, on, qos=1)

    async def send(self, topic: str, body: dict) -> None:
        await self.send_raw(topic, json.dumps(body).encode())

    async def send_raw(self, topic: str, payload: bytes) -> None:
        await self.bus.publish(topic, payload, qos=1)


def twin(api: ApiNode, ns: str, device: str) -> dict:
    r = api.admin.get(f"/v1/devices/{ns}/{device}")
    return r.json() if r.status_code == 200 else {}


def test_desired_state_reaches_a_device_that_was_offline_and_its_report_clears_the_delta(node):
    # set while the device has never connected: no device yet, so version 0 is expected
    r = node.admin.patch("/v1/devices/default/d1/desired", json={"fan": {"speed": 3}, "led": "on"},
                         headers={"If-Match": '"0"'})
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == '"1"' and r.json()["delta"] == {"fan": {"speed": 3}, "led": "on"}
    # a writer that read version 0 too is refused, and nothing changes
    r = node.admin.patch("/v1/devices/default/d1/desired", json={"led": "off"}, headers={"If-Match": '"0"'})
    assert r.status_code == 409 and r.json()["type"].endswith("/version-conflict"), r.text
    assert twin(node, "default", "d1")["desired"]["led"] == "on"

    async def device() -> None:
        async with Device(node.broker) as d:
            await d.listen("devices/d1/desired")   # retained: delivered on subscribing
            got = await apoll("the retained desired state", lambda: d.got.get("devices/d1/desired"))
            assert got[0] == {"version": 1, "desired": {"fan": {"speed": 3}, "led": "on"},
                              "delta": {"fan": {"speed": 3}, "led": "on"}}
            await d.send("devices/d1/reported", {"fan": {"speed": 3}, "led": "on", "temp": 21.5})
            await apoll("the report", lambda: twin(node, "default", "d1").get("reported_version") == 1)
            t = twin(node, "default", "d1")
            assert t["delta"] == {} and t["reported"]["temp"] == 21.5 and not t["silent"]

            # silence, by the injected clock; then a desired change, then the device speaks
            node.clock.t += 61
            await apoll("the device flagged silent", lambda: twin(node, "default", "d1").get("silent"))
            r = await asyncio.to_thread(node.admin.patch, "/v1/devices/default/d1/desired", json={"led": "off"},
                                        headers={"If-Match": '"1"'})
            assert r.status_code == 200 and r.json()["delta"] == {"led": "off"}, r.text
            await apoll("the changed desired state", lambda: len(d.got["devices/d1/desired"]) == 2)
            await d.send("devices/d1/reported", {"temp": 20.0})   # back, not yet done what was asked
            await apoll("the desired state sent again on its return",
                        lambda: len(d.got["devices/d1/desired"]) == 3)
            assert d.got["devices/d1/desired"][2] == {"version": 2, "desired": {"fan": {"speed": 3}, "led": "off"},
                                                      "delta": {"led": "off"}}
            await d.send("devices/d1/reported", {"led": "off"})
            await apoll("the delta cleared again", lambda: twin(node, "default", "d1").get("reported_version") == 3)

    asyncio.run(device())
    t = twin(node, "default", "d1")
    assert (t["delta"], t["silent"], t["desired_version"]) == ({}, False, 2)
    events = [e["kind"] for e in node.admin.get("/v1/events", params={"limit": 200}).json()
              if e["object"] == "device/d1"]
    assert "silent" in events and "returned" in events
    # a message that is not a JSON object is a dead letter naming why, and changes nothing
    asyncio.run(_send_raw(node.broker, "devices/d1/reported", b"[1, 2]"))
    letters = poll("the dead letter", lambda: node.admin.get("/v1/dead-letters", params={"route": "twins"}).json())
    assert "must be a JSON object, not list" in letters[0]["error"]
    assert twin(node, "default", "d1")["reported_version"] == 3


async def _send_raw(url: str, topic: str, payload: bytes) -> None:
    bus = open_bus(url)
    await bus.connect(timeout=10)
    try:
        await bus.publish(topic, payload, qos=1)
    finally:
        await bus.close()


def _history(node: ApiNode, ns: str, device: str) -> list[dict]:
    return node.admin.get(f"/v1/devices/{ns}/{device}/commands").json()


def test_commands_are_acknowledged_retried_refused_or_timed_out_with_their_history(node):
    for dev in ("d2", "mute"):
        assert node.admin.patch(f"/v1/devices/default/{dev}/desired", json={}).status_code == 200
    seen: list[dict] = []

    async def device() -> None:
        async with Device(node.broker) as d:
            async def answer(topic: str, cmd: dict) -> None:
                seen.append(cmd)
                if cmd["command"] == "reboot" and sum(c["id"] == cmd["id"] for c in seen) == 1:
                    return   # the first delivery is "lost": the node must send it again
                ok = cmd["command"] != "selfdestruct"
                await d.send(cmd["reply_to"], {"id": cmd["id"], "ok": ok, "result": {"echo": cmd["payload"]},
                                               **({} if ok else {"error": "not allowed here"})})
            await d.listen("devices/d2/commands/#", answer)

            def post(dev: str, body: dict) -> dict:
                r = node.admin.post(f"/v1/devices/default/{dev}/commands", json=body)
                assert r.status_code == 202, r.text
                return r.json()

            reboot = await asyncio.to_thread(post, "d2", {"name": "reboot", "payload": {"in": 1},
                                                          "timeout": "300ms", "retries": 3})
            refused = await asyncio.to_thread(post, "d2", {"name": "selfdestruct", "timeout": "5s", "retries": 0})
            lost = await asyncio.to_thread(post, "mute", {"name": "ping", "timeout": "200ms", "retries": 1})
            assert reboot["id"] and reboot["name"] == "reboot" and reboot["by"].startswith("initial-admin")

            def outcome(dev: str, cid: str) -> dict | None:
                return next((c for c in _history(node, "default", dev) if c["id"] == cid
                             and c["status"] not in ("pending", "sent")), None)

            done = await apoll("the reboot's outcome", lambda: outcome("d2", reboot["id"]))
            assert (done["status"], done["attempts"], done["result"]) == ("acked", 2, {"echo": {"in": 1}})
            notes = [x["note"] for x in done["log"]]
            assert notes[0].startswith("attempt 1: published to devices/d2/commands/reboot")
            assert notes[1] == "attempt 1: no acknowledgement within 0.3s" and notes[-1] == "acknowledged"
            done = await apoll("the refusal", lambda: outcome("d2", refused["id"]))
            assert (done["status"], done["error"], done["attempts"]) == ("rejected", "not allowed here", 1)
            done = await apoll("the timeout", lambda: outcome("mute", lost["id"]))
            assert (done["status"], done["attempts"]) == ("timed-out", 2)
            assert done["error"] == "no acknowledgement after 2 attempt(s)"

    asyncio.run(device())
    assert [c["command"] for c in seen].count("reboot") == 2
    assert len({c["id"] for c in seen if c["command"] == "reboot"}) == 1   # one correlation id for every attempt
    events = [e["message"] for e in node.admin.get("/v1/events", params={"limit": 200}).json()
              if e["object"] == "device/mute"]
    assert any("timed-out" in m for m in events)


def test_an_ack_settles_only_a_command_of_the_device_it_went_to(node):
    assert node.admin.patch("/v1/devices/acme/d3/desired", json={}).status_code == 200

    async def device() -> None:
        async with Device(node.broker) as d:
            async def answer(topic: str, cmd: dict) -> None:
                # a device of another namespace, then one of the same namespace, answer first
                await d.send("devices/d3/acks", {"id": cmd["id"], "ok": True, "result": "spoofed"})
                await d.send("acme/devices/other/acks", {"id": cmd["id"], "ok": True, "result": "spoofed"})
                await d.send(cmd["reply_to"], {"id": cmd["id"], "ok": True, "result": "real"})
            await d.listen("acme/devices/d3/commands/#", answer)
            r = await asyncio.to_thread(node.admin.post, "/v1/devices/acme/d3/commands",
                                        json={"name": "open", "timeout": "5s", "retries": 0}, params={"wait": 30})
            assert r.status_code == 202, r.text
            assert (r.json()["status"], r.json()["result"]) == ("acked", "real"), r.json()
            assert r.json()["log"][0]["note"] == "attempt 1: published to acme/devices/d3/commands/open"

    asyncio.run(device())


CLI = [sys.executable, "-m", "iotwasm.cli.main"]


def test_the_cli_lists_reads_sets_and_commands_devices(node, tmp_path):
    env = {**os.environ, "IOTWASM_URL": node.url, "IOTWASM_TOKEN": node.admin_token,
           "IOTWASM_CONFIG": str(tmp_path / "none.yaml"), "COLUMNS": "200"}

    def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([*CLI, "devices", *args], capture_output=True, text=True, timeout=120, env=env)
        assert (r.returncode == 0) == ok, f"{args}: {r.returncode} {r.stderr}{r.stdout}"
        return r

    r = cli("set", "acme/pump-1", '{"rpm": 1200}', "--version", "0")
    assert "acme/pump-1: desired v1" in r.stdout and '"rpm": 1200' in r.stdout
    r = cli("set", "acme/pump-1", '{"rpm": 900}', "--version", "0", ok=False)
    assert "409" in r.stderr and "version 1, not 0" in r.stderr
    twin = json.loads(cli("get", "acme/pump-1", "-o", "json").stdout)
    assert (twin["desired"], twin["delta"], twin["desired_version"]) == ({"rpm": 1200}, {"rpm": 1200}, 1)
    listed = cli("list", "--namespace", "acme").stdout
    assert "pump-1" in listed and "v1" in listed

    async def device_and_cli() -> None:
        async with Device(node.broker) as d:
            async def answer(topic: str, cmd: dict) -> None:
                await d.send(cmd["reply_to"], {"id": cmd["id"], "ok": True, "result": {"rpm": cmd["payload"]}})
            await d.listen("acme/devices/pump-1/commands/#", answer)
            r = await asyncio.to_thread(cli, "command", "acme/pump-1", "spin", "--payload", "1200",
                                        "--timeout", "5s")
            assert "spin" in r.stdout and "acked after 1 attempt(s)" in r.stdout and '{"rpm":1200}' in r.stdout

    asyncio.run(device_and_cli())
    r = cli("command", "acme/pump-1", "spin", "--timeout", "200ms", "--retries", "0", ok=False)
    assert "timed-out after 1 attempt(s): no acknowledgement after 1 attempt(s)" in r.stdout
    r = cli("get", "acme/pump-1", "--commands")
    assert "desired (v1)" in r.stdout and "acked" in r.stdout and "timed-out" in r.stdout
    r = cli("get", "acme/nobody", ok=False)
    assert "404" in r.stderr and "no device 'nobody' in namespace 'acme'" in r.stderr


def test_a_module_granted_twin_reads_its_own_namespace_s_devices_through_the_node(node):
    wasm = bytes(wasmtime.wat2wasm(TWIN_READER_WAT))
    r = node.admin.post("/v1/modules", content=wasm, params={"name": "twin-reader", "version": "1"},
                        headers={"Content-Type": "application/wasm"})
    assert r.status_code == 201, r.text
    route = """apiVersion: iotwasm.io/v1
kind: Route
metadata: {name: ask, namespace: acme}
spec:
  source: {mqtt: {topic: "acme/ask/{device}"}}
  steps: [reader]
  sinks: [{mqtt: {topic: "acme/answer/{device}"}}]
  batch: {maxSize: 1, maxLinger: 1ms}
"""
    for doc in (deployment("reader", "twin-reader:1", "acme", host="twin"), route):
        r = node.admin.post("/v1/apply", content=doc, headers={"Content-Type": "application/yaml"})
        assert r.status_code == 200 and r.json()["problems"] == [], r.text
    for ns, fan in (("acme", 1), ("default", 2)):
        assert node.admin.patch(f"/v1/devices/{ns}/d9/desired", json={"fan": fan}).status_code == 200

    async def ask() -> None:
        async with Device(node.broker) as d:
            await d.listen("acme/answer/+")
            await d.send_raw("acme/ask/q1", b"d9")
            await d.send_raw("acme/ask/q2", b"nobody")
            await apoll("both answers", lambda: len(d.got.get("acme/answer/q1", [])) +
                        len(d.raw.get("acme/answer/q2", [])) == 2)
            twin_doc = d.got["acme/answer/q1"][0]
            assert (twin_doc["device"], twin_doc["desired"], twin_doc["delta"]) == ("d9", {"fan": 1}, {"fan": 1})
            assert "namespace" not in twin_doc
            assert d.raw["acme/answer/q2"] == [b"-"]   # unknown in acme (and default's d9 is not acme's)

    asyncio.run(ask())
