"""Rules with actions and alerts on real Mosquitto: deduplication, cooldown, FOR, and
escalation MQTT QoS 1 → webhook → pending queue, with nothing lost while the broker is down
and across a restart of the runner."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from iotwasm.message import Message
from iotwasm.messaging import open_bus
from iotwasm.pipeline import LocalStore, Outbox
from iotwasm.pipeline.rules import (Action, AlertPolicy, EventTime, RuleDefinition, RuleRunner,
                                    RuleSpec, RuleStateStore)
from iotwasm.pipeline.rules.alerts import AlertTracker
from waiting import wait_for



class Webhook:
    """A real HTTP server on a free port that records the JSON bodies POSTed to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        hook = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers["Content-Length"])
                hook.bodies.append(json.loads(self.rfile.read(n)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def hot(device: str, t: float, ts: int = 0) -> Message:
    return Message(f"sensors/{device}/t", json.dumps({"t": t, "ts": ts}).encode())


def test_tracker_dedup_cooldown_and_for():
    tr = AlertTracker("r", AlertPolicy(dedup="{device}", cooldown_ms=10_000, for_ms=3_000))
    seen = []
    for ok, ts, dev in [(True, 0, "a"), (True, 2000, "a"), (True, 3000, "a"),   # fires at 3 s held
                        (True, 4000, "a"),                                      # dedup: still firing
                        (False, 5000, "a"), (True, 6000, "a"), (True, 9000, "a"),  # held again, cooldown
                        (True, 1000, "b"), (False, 2000, "b"), (True, 2500, "b"), (True, 5500, "b"),
                        (False, 14000, "a"), (True, 14000, "a"), (True, 17000, "a")]:
        a = tr.observe(ok, ts, {"device": dev}, None)
        if a:
            seen.append((a["key"], a["time"], a["since"]))
    assert seen == [("a", 3000, 0), ("b", 5500, 2500), ("a", 17000, 14000)]
    assert tr.fired == 3 and tr.suppressed == 2


def test_alerts_escalate_without_loss_while_the_broker_is_down(mosquitto, tmp_path):  # noqa: F811
    async def main():
        hook = Webhook()
        watcher = open_bus(mosquitto.url, client_id="watcher")  # persistent session
        await watcher.connect()
        # QoS 1 is at least once: across the broker's stop a delivery can come again (the
        # watcher's PUBACK for d1 may still be unread when the broker stops, so the restored
        # session delivers d1 once more; a pending alert whose MQTT acknowledgement came later
        # than its timeout is sent again). Alerts are told apart by their id.
        deliveries: list[dict] = []
        await watcher.subscribe("alerts/#", lambda m: deliveries.append(json.loads(m.payload)), qos=1)

        def alerts() -> list[dict]:
            by_id: dict[str, dict] = {}
            for a in deliveries:
                assert by_id.setdefault(a["id"], a) == a, f"two different alerts with the id {a['id']}"
            return list(by_id.values())

        def runner_on(bus):
            return RuleRunner(bus, outbox=Outbox(tmp_path / "outbox.db"), store=LocalStore(tmp_path / "store.db"),
                              state=RuleStateStore(tmp_path / "rules.db"), alert_publish_timeout=0.5)
        rule = RuleDefinition(
            RuleSpec("overheat", 'SELECT device, t FROM "sensors/{device}/t" WHERE t > 30', EventTime()),
            actions=[Action("store", table="hot")],
            alert=AlertPolicy(severity="critical", dedup="{device}", cooldown_ms=60_000,
                              topic="alerts/{severity}/{device}", webhook=hook.url,
                              message="{device} at {t} °C"))
        bus = open_bus(mosquitto.url, client_id="rules-node")
        await bus.connect()
        runner = runner_on(bus)
        await runner.start()
        await runner.put(rule)
        # broker up: three hot readings of d1 → one alert over MQTT; a cool one raises none
        for t in (31, 35, 40):
            await runner.offer(hot("d1", t))
        await runner.offer(hot("d9", 20))
        await runner.idle()
        await wait_for(lambda: len(alerts()) == 1)
        received = alerts()
        assert received[0]["key"] == "d1" and received[0]["severity"] == "critical"
        assert received[0]["message"] == "d1 at 31 °C"
        # broker down: the alert goes to the webhook instead. Stopped, not killed: a broker
        # killed -9 forgets the watcher's persistent session, and an alert delivered after the
        # restart but before the watcher is back (its reconnect backoff has grown meanwhile)
        # would go to nobody — a flaw of the observer, not of the node
        mosquitto.stop()
        await runner.offer(hot("d2", 50))
        await runner.idle()
        await wait_for(lambda: len(hook.bodies) == 1)
        assert hook.bodies[0]["alert"]["key"] == "d2" and hook.bodies[0]["topic"] == "alerts/critical/d2"
        # webhook down too: the alert waits in the pending queue, also across a restart
        hook.close()
        await runner.offer(hot("d3", 60))
        await runner.offer(hot("d3", 61))   # deduplicated while still firing
        await runner.idle()
        # the counters settle as the dispatcher and the store's forwarder get to them: read
        # them once they have, not at one moment that may come before
        expected = {"fired": 3, "suppressed": 3, "pending": 1,
                    "actions": [{"type": "store", "sent": 6, "failed": 0, "backlog": 0}]}

        def counters() -> dict:
            st = runner.status()["overheat"]
            return {**{k: st["alerts"][k] for k in ("fired", "suppressed", "pending")}, "actions": st["actions"]}

        try:
            await wait_for(lambda: counters() == expected)
        except AssertionError:
            assert counters() == expected   # shows what differs
        await runner.stop(drain_timeout=0.2)
        runner.outbox.close()
        await bus.close()
        assert Outbox(tmp_path / "outbox.db").backlog("alerts:overheat") == 1
        # the node comes back, then the broker: the pending alert is delivered over MQTT
        bus = open_bus(mosquitto.url, client_id="rules-node")
        try:
            await bus.connect(timeout=0.5)
        except Exception:
            pass
        runner = runner_on(bus)
        await runner.start()
        await runner.put(rule)
        mosquitto.start()
        await wait_for(lambda: len(alerts()) == 2, timeout=20)
        received = alerts()
        assert received[1]["key"] == "d3" and received[1]["values"] == {"device": "d3", "t": 60}
        await wait_for(lambda: runner.status()["overheat"]["alerts"]["pending"] == 0)
        # the dedup state came back with the node: d3 still firing is not alerted again
        await runner.offer(hot("d3", 62))
        await runner.idle()
        assert runner.status()["overheat"]["alerts"]["fired"] == 0
        assert runner.status()["overheat"]["alerts"]["suppressed"] == 1
        await runner.stop()
        await bus.close()
        await watcher.close()
        assert sorted(a["key"] for a in alerts() + [b["alert"] for b in hook.bodies]) == ["d1", "d2", "d3"]
    asyncio.run(main())


def test_actions_publish_command_webhook_store_and_invoke(tmp_path, runtime):
    from iotwasm.container import WasmContainer
    from conftest import ECHO_WAT

    async def main():
        hook = Webhook()
        bus = open_bus(None)
        await bus.connect()
        got: dict[str, list] = {}
        await bus.subscribe("#", lambda m: got.setdefault(m.topic, []).append(m.payload))
        echo = WasmContainer("echo", ECHO_WAT, runtime=runtime).start()
        store = LocalStore(tmp_path / "store.db")
        runner = RuleRunner(bus, outbox=Outbox(tmp_path / "outbox.db"), store=store,
                            processors={"echo": echo}.get)
        await runner.start()
        await runner.put(RuleDefinition(
            RuleSpec("heat", 'SELECT device, t * 2 AS t2 FROM "sensors/{device}/t" WHERE t > 30', EventTime()),
            actions=[Action("publish", topic="out/{device}", payload='{"double": {t2}, "rule": "{rule}"}'),
                     Action("command"),
                     Action("webhook", url=hook.url),
                     Action("store", table="heat"),
                     Action("invoke", deployment="echo", topic="signed/{device}")]))
        await runner.offer(hot("d1", 31))
        await runner.offer(hot("d2", 10))
        await runner.idle()
        await wait_for(lambda: "out/d1" in got and "devices/d1/commands" in got and "signed/d1" in got
                       and hook.bodies)
        assert json.loads(got["out/d1"][0]) == {"double": 62, "rule": "heat"}
        assert json.loads(got["devices/d1/commands"][0]) == {"device": "d1", "t2": 62}
        assert json.loads(got["signed/d1"][0]) == {"device": "d1", "t2": 62}   # the echo module's output
        assert hook.bodies == [{"topic": "rules/heat", "payload": {"device": "d1", "t2": 62}}]
        assert [r["payload"] for r in store.query("heat")] == [{"device": "d1", "t2": 62}]
        assert not any("d2" in t for t in got)
        st = runner.status()["heat"]
        assert [a["sent"] for a in st["actions"]] == [1, 1, 1, 1, 1]
        # an unknown deployment is refused before anything changes
        with pytest.raises(Exception, match="deployment 'nope' is not on this node"):
            await runner.put(RuleDefinition(RuleSpec("x", 'SELECT 1 FROM "a"'), actions=[Action("invoke", deployment="nope")]))
        await runner.stop()
        echo.stop()
        hook.close()
    asyncio.run(main())
