"""Devices in a fleet: each node mirrors its twins into the fleet's JetStream KV bucket, so any
node shows every device of the fleet and the node that hears it; while the fleet link is down
the node's own registry goes on, and what changed meanwhile reaches the bucket once the link is
back. Real nats-server and Mosquitto; devices on their own connections."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from apinode import ApiNode

from iotwasm.messaging import open_bus

ROUTE = """apiVersion: iotwasm.io/v1
kind: Route
metadata: {name: twins}
spec:
  source: {mqtt: {topic: "devices/{device}/reported"}}
  sinks: [{twin: {}}]
  batch: {maxSize: 10, maxLinger: 1ms}
"""


def poll(what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def report(url: str, device: str, body: dict) -> None:
    bus = open_bus(url)
    await bus.connect(timeout=10)
    try:
        await bus.publish(f"devices/{device}/reported", json.dumps(body).encode(), qos=1)
    finally:
        await bus.close()


def test_every_node_shows_the_fleet_s_devices_and_a_link_outage_loses_no_change(tmp_path, nats_server, mosquitto):
    fleet = {"url": nats_server.url, "heartbeat_s": 0.3}
    a = ApiNode(tmp_path / "a", name="node-a", fleet=fleet, node_config={"broker": mosquitto.url}).start()
    b = ApiNode(tmp_path / "b", name="node-b", fleet=fleet).start()
    try:
        r = a.admin.post("/v1/apply", content=ROUTE, headers={"Content-Type": "application/yaml"})
        assert r.status_code == 200 and r.json()["problems"] == [], r.text
        assert a.admin.patch("/v1/devices/default/d1/desired", json={"fan": 2}).status_code == 200
        asyncio.run(report(mosquitto.url, "d1", {"temp": 20.5}))

        def seen_from_b(want: dict) -> dict | None:
            r = b.admin.get("/v1/fleet/devices")
            rows = {(t["namespace"], t["device"]): t for t in r.json()} if r.status_code == 200 else {}
            t = rows.get(("default", "d1"))
            return t if t is not None and all(t.get(k) == v for k, v in want.items()) else None

        t = poll("node-a's twin in node-b's fleet view", lambda: seen_from_b({"reported": {"temp": 20.5}}))
        assert (t["node"], t["desired"], t["delta"], t["desired_version"]) == ("node-a", {"fan": 2}, {"fan": 2}, 1)
        # node-b's own registry does not hold it: a device is set through the node that hears it
        assert b.admin.get("/v1/devices/default/d1").status_code == 404

        # the fleet link goes down: node-a's devices go on, and the change reaches the bucket later
        nats_server.stop()
        asyncio.run(report(mosquitto.url, "d1", {"fan": 2}))
        poll("node-a's own twin updated", lambda: a.admin.get("/v1/devices/default/d1").json()["delta"] == {})
        assert b.admin.get("/v1/fleet/devices").status_code == 503
        nats_server.start()
        t = poll("the change made while the link was down", lambda: seen_from_b({"reported_version": 2}))
        assert (t["reported"], t["delta"]) == ({"temp": 20.5, "fan": 2}, {})
        # tenants and other views: fleet views are for tokens without tenant
        assert b.admin.put("/v1/tenants/acme", json={}).status_code == 200
        tenant = b.client(b.token("viewer", "acme", "acme-viewer"))
        assert tenant.get("/v1/fleet/devices").status_code == 403
    finally:
        b.stop()
        a.stop()
