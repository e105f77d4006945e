"""Alerts: severity, deduplication, cooldown, a FOR duration, and escalation that loses nothing.

A rule with an alert reports, for each evaluation, whether its condition held for a dedup key
(a template over the output and message fields, default: the rule name). The tracker turns
that into alerts:

- FOR d: the condition must hold continuously for d (event time) before the alert fires;
  one evaluation where it does not hold resets the clock.
- Deduplication: while the condition keeps holding, the alert fired once is not repeated.
- Cooldown c: after an alert for a key, no new alert for that key for c, even if the
  condition cleared and came back.

Escalation: an alert is first written to the SQLite outbox (durable before anything is sent),
then delivered by MQTT QoS 1 (the broker's PUBACK is the acknowledgement); if that fails, by
webhook (a 2xx answer acknowledges); if that fails too it stays in the pending queue and is
retried with backoff, MQTT first again. It is deleted only once one channel acknowledged it,
so broker outages and node restarts lose nothing (at-least-once; the alert's `id` lets a
receiver drop duplicates).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from ...errors import IotwasmError
from ...messaging.bus import settled
from ..outbox import Forwarder, Outbox, send_in_order

log = logging.getLogger("iotwasm.rules.alerts")

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


def fill(template: str, values: dict) -> str:
    """`{name}` → str(values[name]); a missing value fills as empty."""
    def sub(m: re.Match) -> str:
        v = values.get(m.group(1))
        if v is None:
            return ""
        return v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list, bool)) else str(v)
    return _VAR.sub(sub, template)


@dataclass
class AlertPolicy:
    severity: str = "warning"
    dedup: str = "{rule}"
    cooldown_ms: int = 0
    for_ms: int = 0
    topic: str = "alerts/{rule}"
    webhook: str | None = None
    message: str = ""


@dataclass
class _KeyState:
    since: int | None = None      # first evaluation of the current run of "condition holds"
    firing: bool = False
    last_fired: int | None = None


@dataclass
class AlertTracker:
    rule: str
    policy: AlertPolicy
    keys: dict[str, _KeyState] = field(default_factory=dict)
    fired: int = 0
    suppressed: int = 0

    def dump(self) -> dict:
        return {k: [st.since, st.firing, st.last_fired] for k, st in self.keys.items()}

    def load(self, saved: dict) -> None:
        self.keys = {k: _KeyState(*v) for k, v in saved.items()}

    def observe(self, ok: bool, ts: int, row: dict, source: dict | None) -> dict | None:
        """One evaluation; returns the alert to send, if one fires now."""
        values = {**{k: v for k, v in (source or {}).items() if k[:1] != "\x00"}, **row, "rule": self.rule}
        key = fill(self.policy.dedup, values)
        st = self.keys.get(key)
        if st is None:
            if not ok:
                return None
            st = self.keys[key] = _KeyState()
        if not ok:
            st.since = None
            st.firing = False
            return None
        if st.since is None:
            st.since = ts
        if st.firing:
            self.suppressed += 1
            return None
        if ts - st.since < self.policy.for_ms:
            return None
        if st.last_fired is not None and ts - st.last_fired < self.policy.cooldown_ms:
            self.suppressed += 1
            return None
        st.firing = True
        st.last_fired = ts
        self.fired += 1
        alert_id = hashlib.sha256(f"{self.rule}\x00{key}\x00{st.since}".encode()).hexdigest()[:16]
        body = {"id": alert_id, "rule": self.rule, "key": key, "severity": self.policy.severity,
                "since": st.since, "time": ts, "values": row}
        if self.policy.message:
            body["message"] = fill(self.policy.message, values)
        return body


class AlertDispatcher:
    """Durable, escalating delivery of one rule's alerts (MQTT QoS 1 → webhook → pending queue)."""

    def __init__(self, rule: str, policy: AlertPolicy, outbox: Outbox, bus, *, publish_timeout: float = 2.0,
                 webhook_timeout: float = 2.0, max_backoff: float = 5.0):
        self.rule = rule
        self.policy = policy
        self.outbox = outbox
        self.bus = bus
        self.name = f"alerts:{rule}"
        self.publish_timeout = publish_timeout
        self.webhook_timeout = webhook_timeout
        self.via_mqtt = 0
        self.via_webhook = 0
        self.failures = 0
        self.forwarder = Forwarder(outbox, self.name, self._submit, batch=20, windows=1,
                                   max_backoff=max_backoff)

    def start(self) -> None:
        self.forwarder.start()

    async def stop(self, drain_timeout: float = 0.0) -> None:
        await self.forwarder.stop(drain_timeout)

    async def raise_alerts(self, alerts: list[dict]) -> None:
        items = []
        for a in alerts:
            values = {**a.get("values", {}), "rule": self.rule, "severity": a["severity"], "key": a["key"]}
            items.append((fill(self.policy.topic, values), json.dumps(a, separators=(",", ":")).encode()))
        await asyncio.to_thread(self.outbox.append, self.name, items)
        self.forwarder.notify()

    def pending(self) -> int:
        return self.outbox.backlog(self.name)

    async def _submit(self, items: list[tuple[str, bytes]]):
        """The forwarder's window: alerts one after the other, each escalated on its own;
        the first that cannot go anywhere stops the window (it and the rest stay pending)."""
        return settled(await send_in_order(self._deliver, items))

    async def _deliver(self, topic: str, payload: bytes) -> None:
        first: Exception | None = None
        if self.bus is not None:
            try:
                await asyncio.wait_for(self.bus.publish(topic, payload, qos=1), self.publish_timeout)
                self.via_mqtt += 1
                return
            except (IotwasmError, asyncio.TimeoutError) as e:
                first = e
        webhook = self.policy.webhook
        if webhook:
            try:
                await asyncio.to_thread(self._post, webhook, topic, payload)
                self.via_webhook += 1
                return
            except IotwasmError as e:
                self.failures += 1
                raise IotwasmError(f"alert {self.rule}: MQTT failed ({first}); webhook failed ({e}); "
                                   f"kept pending") from None
        self.failures += 1
        raise IotwasmError(f"alert {self.rule}: MQTT failed ({first}); kept pending")

    def _post(self, webhook: str, topic: str, payload: bytes) -> None:
        body = json.dumps({"topic": topic, "alert": json.loads(payload)}).encode()
        req = urllib.request.Request(webhook, body, {"Content-Type": "application/json"},
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.webhook_timeout) as resp:
                if resp.status >= 300:
                    raise IotwasmError(f"webhook answered {resp.status}")
        except urllib.error.HTTPError as e:
            raise IotwasmError(f"webhook {webhook} answered {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            raise IotwasmError(f"webhook {webhook} unreachable: {getattr(e, 'reason', e)}") from None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


__all__ = ["AlertDispatcher", "AlertPolicy", "AlertTracker", "fill"]
