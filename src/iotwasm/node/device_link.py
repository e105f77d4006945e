"""The node's side of the conversation with devices over its bus: desired state delivered,
reported state taken from routes, commands sent and acknowledged, silent devices flagged.

Topics (``{root}`` is empty for namespace ``default`` and ``<namespace>/`` for any other, the
same prefix a tenant's own topics carry):

* ``{root}devices/{id}/desired`` — the desired state, published **retained** (QoS 1) whenever it
  changes, so a device that is offline gets it as soon as it subscribes again, and published
  once more when a device speaks after being silent (or for the first time) while its delta is
  not empty: a device that never re-subscribes still gets it. The body is
  ``{"version": n, "desired": {...}, "delta": {...}}``.
* ``{root}devices/{id}/commands/{name}`` — a command: ``{"id": "<correlation id>", "command":
  name, "payload": ..., "reply_to": "{root}devices/{id}/acks"}``, QoS 1.
* ``{root}devices/{id}/acks`` — the device's acknowledgement: ``{"id": "<correlation id>",
  "ok": true|false, "result": ..., "error": "..."}``. An ack is taken only from the topic of
  the device the command went to: a device cannot settle another device's command.

A command that gets no acknowledgement within its timeout is published again (same id, so a
device that did get it can answer without doing it twice), after a delay that grows with
`Backoff`, up to its number of retries. Each attempt and the outcome — ``acked``,
``rejected`` (the device answered ``ok: false``), ``timed-out``, ``undeliverable`` (the bus
refused every attempt) or ``interrupted`` (the node stopped first) — are in the command's
history (`DeviceRegistry.commands`).

Reported state comes from a route's ``twin`` sink (`TwinSink`): each message, a JSON object,
is merged into the reported state of the device the sink's template names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import Any

from ..backoff import Backoff
from ..errors import ConfigError, IotwasmError, StorageError
from ..message import Message
from ..messaging.bus import Bus
from ..pipeline.connectors import Connector, registry
from ..pipeline.sinks import SinkError
from ..pipeline.templates import TopicTemplate
from .devices import (
    COMMAND_NAME,
    MAX_COMMAND_PAYLOAD,
    MAX_DOCUMENT,
    DeviceRegistry,
    Report,
    Twin,
    check_device,
    check_document,
)
from .manifests import TwinSink as TwinSinkSpec

log = logging.getLogger("iotwasm.node.devices")

#: what a command waits for its acknowledgement, and how often it is sent again, by default
COMMAND_TIMEOUT_S = 10.0
COMMAND_RETRIES = 3
#: silence is looked for at most every this share of `silent_after_s`
SWEEP_SHARE = 1 / 60
#: the largest acknowledgement read
MAX_ACK = 64 * 1024
ACK_FILTERS = ("devices/+/acks", "+/devices/+/acks")
FINAL = frozenset({"acked", "rejected", "timed-out", "undeliverable", "interrupted"})


def topic_root(namespace: str) -> str:
    return "" if namespace == "default" else f"{namespace}/"


def desired_topic(namespace: str, device: str) -> str:
    return f"{topic_root(namespace)}devices/{device}/desired"


def command_topic(namespace: str, device: str, name: str) -> str:
    return f"{topic_root(namespace)}devices/{device}/commands/{name}"


def ack_topic(namespace: str, device: str) -> str:
    return f"{topic_root(namespace)}devices/{device}/acks"


def _from_ack_topic(topic: str) -> tuple[str, str] | None:
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "devices":
        return "default", parts[1]
    if len(parts) == 4 and parts[1] == "devices" and parts[0] != "default":
        return parts[0], parts[2]
    return None


class DeviceLink:
    """Desired-state delivery, commands and silence for one node's devices.

    `bus` is the node's bus (None until it exists); `on_event(kind, twin, message)` records an
    event about a device. `backoff` makes the delay between command attempts (a factory, so
    each command has its own; tests pass one without jitter)."""

    def __init__(self, registry: DeviceRegistry, on_event: Callable[[str, Twin, str], None], *,
                 backoff: Callable[[], Backoff] | None = None):
        self.registry = registry
        self.bus: Bus | None = None
        self._on_event = on_event
        self._backoff = backoff or (lambda: Backoff(1.0, 30.0, rng=random.Random()))
        #: command id → (namespace, device, future of the ack) while it runs
        self._waiting: dict[str, tuple[str, str, asyncio.Future]] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._subs: list = []
        self._deliveries: set[asyncio.Task] = set()
        self._swept = float("-inf")   # the registry's clock at the last sweep
        #: called on the event loop with each twin that changed (the fleet mirror, fleet/devices.py)
        self.listeners: list[Callable[[Twin], None]] = []

    def _changed(self, twins: list[Twin]) -> None:
        for listener in list(self.listeners):
            for t in twins:
                try:
                    listener(t)
                except Exception:   # a listener never breaks the node's work
                    log.exception("device listener %r failed", listener)

    async def _event(self, kind: str, twin: Twin, message: str) -> None:
        # recording an event writes the node database: off the loop
        await asyncio.to_thread(self._on_event, kind, twin, message)

    async def start(self, bus: Bus) -> None:
        self.bus = bus
        for cid in await asyncio.to_thread(self.registry.unfinished_commands):
            await asyncio.to_thread(self.registry.update_command, cid, status="interrupted",
                                    error="the node stopped before an outcome", note="interrupted")
        for f in ACK_FILTERS:
            self._subs.append(await bus.subscribe(f, self._ack, qos=1))

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *self._deliveries]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in self._subs:
            try:
                await s.unsubscribe()
            except IotwasmError:
                pass
        self._subs.clear()

    # -- desired state ----------------------------------------------------------------------
    async def deliver_desired(self, twin: Twin) -> bool:
        """Publish the device's desired state (retained); False when the bus refused it."""
        if self.bus is None:
            return False
        body = {"version": twin.desired_version, "desired": twin.desired, "delta": twin.delta}
        try:
            await self.bus.publish(desired_topic(twin.namespace, twin.device), json.dumps(body).encode(),
                                   qos=1, retain=True, timeout=5.0)
        except IotwasmError as e:
            log.warning("desired state of %s/%s not published: %s (sent again when it next returns)",
                        twin.namespace, twin.device, e)
            return False
        return True

    async def set_desired(self, namespace: str, device: str, patch: dict, expect_version: int | None) -> Twin:
        twin = await asyncio.to_thread(self.registry.set_desired, namespace, device, patch, expect_version)
        self._changed([twin])
        await self.deliver_desired(twin)
        return twin

    async def reported(self, namespace: str, updates: list[tuple[str, dict]], *,
                       checked: bool = False) -> list[Report]:
        """Merge reports (from a twin sink); a device speaking after silence gets its desired
        state again when something is still to be done."""
        reports = await asyncio.to_thread(self.registry.report, namespace, updates, checked=checked)
        self._changed(list({id(r.twin): r.twin for r in reports}.values()))
        for r in reports:
            if r.returned:
                if not r.first:
                    await self._event("returned", r.twin, "device speaks again after being silent")
                if r.twin.delta:   # in the background: a broker that is down never holds the route
                    task = asyncio.create_task(self.deliver_desired(r.twin))
                    self._deliveries.add(task)
                    task.add_done_callback(self._deliveries.discard)
        return reports

    async def sweep(self) -> list[Twin]:
        """Flag devices silent for longer than the registry's `silent_after_s`, looking at
        most every `SWEEP_SHARE` of that time by the registry's clock (the node asks every
        second; with the default 600 s a look every 10 s flags a device within 1.7 % of its
        silence, and a quiet node does not hand the database a transaction each second)."""
        now = self.registry.clock()
        if now - self._swept < self.registry.silent_after_s * SWEEP_SHARE:
            return []
        self._swept = now
        found = await asyncio.to_thread(self.registry.sweep)
        self._changed(found)
        for t in found:
            await self._event("silent", t, f"no message for more than {self.registry.silent_after_s:g}s")
        return found

    # -- commands ---------------------------------------------------------------------------
    async def command(self, twin: Twin, name: str, payload: Any, by: str, *,
                      timeout_s: float = COMMAND_TIMEOUT_S, retries: int = COMMAND_RETRIES) -> dict:
        """Record a command and start sending it; returns its record (status ``pending``)."""
        if not COMMAND_NAME.match(name):
            raise ConfigError(f"command name {name[:80]!r}: must be 1-64 letters, digits or '_.-'")
        if len(json.dumps(payload)) > MAX_COMMAND_PAYLOAD:
            raise ConfigError(f"command payload: larger than {MAX_COMMAND_PAYLOAD} bytes as JSON")
        if not 0 < timeout_s <= 600 or not 0 <= retries <= 20:
            raise ConfigError(f"command timeout {timeout_s}s must be within (0, 600] and retries "
                              f"{retries} within [0, 20]")
        rec = await asyncio.to_thread(self.registry.add_command, twin, name, payload, by)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rec["id"]] = (twin.namespace, twin.device, fut)
        task = asyncio.create_task(self._run(rec["id"], twin, name, payload, fut, timeout_s, retries))
        self._tasks[rec["id"]] = task
        task.add_done_callback(lambda _t: self._done(rec["id"]))
        return rec

    def _done(self, cid: str) -> None:
        self._tasks.pop(cid, None)
        self._waiting.pop(cid, None)

    async def wait(self, cid: str, timeout_s: float) -> None:
        """Until the command `cid` has its outcome, or `timeout_s`."""
        task = self._tasks.get(cid)
        if task is not None:
            await asyncio.wait([task], timeout=timeout_s)

    async def _run(self, cid: str, twin: Twin, name: str, payload: Any, fut: asyncio.Future,
                   timeout_s: float, retries: int) -> None:
        update = self.registry.update_command
        topic = command_topic(twin.namespace, twin.device, name)
        body = json.dumps({"id": cid, "command": name, "payload": payload,
                           "reply_to": ack_topic(twin.namespace, twin.device)}).encode()
        backoff = self._backoff()
        published = False
        try:
            for attempt in range(1, retries + 2):
                try:
                    if self.bus is None:
                        raise SinkError("the node has no bus yet")
                    await self.bus.publish(topic, body, qos=1, timeout=timeout_s)
                except IotwasmError as e:
                    await asyncio.to_thread(update, cid, status="pending", attempts=attempt, error=str(e),
                                            note=f"attempt {attempt}: not published: {e}")
                else:
                    published = True
                    await asyncio.to_thread(update, cid, status="sent", attempts=attempt,
                                            note=f"attempt {attempt}: published to {topic}")
                    try:
                        ack = await asyncio.wait_for(asyncio.shield(fut), timeout_s)
                    except TimeoutError:
                        await asyncio.to_thread(update, cid, status="sent", attempts=attempt,
                                                error=f"no acknowledgement within {timeout_s:g}s",
                                                note=f"attempt {attempt}: no acknowledgement within {timeout_s:g}s")
                    else:
                        return await self._settle(cid, attempt, ack)
                if attempt <= retries:
                    delay = backoff.next()
                    try:   # an ack to an earlier attempt ends the wait early
                        ack = await asyncio.wait_for(asyncio.shield(fut), delay)
                    except TimeoutError:
                        continue
                    return await self._settle(cid, attempt, ack)
            status = "timed-out" if published else "undeliverable"
            await asyncio.to_thread(update, cid, status=status, attempts=retries + 1,
                                    error=(f"no acknowledgement after {retries + 1} attempt(s)" if published
                                           else f"not published in {retries + 1} attempt(s)"),
                                    note=status)
            await self._event("command-" + status, twin, f"command {name} ({cid}) {status}")
        except asyncio.CancelledError:
            await asyncio.to_thread(update, cid, status="interrupted", error="the node stopped before an outcome",
                                    note="interrupted")
            raise
        except StorageError as e:   # the history could not be written: said once, the next start marks it
            log.warning("command %s (%s) to %s/%s: history not recorded: %s", name, cid, twin.namespace,
                        twin.device, e)

    async def _settle(self, cid: str, attempt: int, ack: dict) -> None:
        ok = ack.get("ok", True) is not False
        error = "" if ok else str(ack.get("error") or "the device refused the command")[:1000]
        await asyncio.to_thread(self.registry.update_command, cid, status="acked" if ok else "rejected",
                                attempts=attempt, result=ack.get("result"), error=error,
                                note="acknowledged" if ok else f"refused: {error}")

    async def _ack(self, msg: Message) -> None:
        where = _from_ack_topic(msg.topic)
        if where is None or len(msg.payload) > MAX_ACK:
            log.debug("ack on %s ignored (not a device ack topic, or over %d bytes)", msg.topic, MAX_ACK)
            return
        try:
            ack = json.loads(msg.payload)
        except ValueError:
            ack = None
        if not isinstance(ack, dict) or not isinstance(ack.get("id"), str):
            log.debug("ack on %s ignored: not a JSON object with an id", msg.topic)
            return
        waiting = self._waiting.get(ack["id"])
        if waiting is None or (waiting[0], waiting[1]) != where or waiting[2].done():
            log.debug("ack on %s for %s matches no command of that device", msg.topic, ack["id"][:64])
            return
        waiting[2].set_result(ack)


class TwinSink:
    """A route sink that merges each message (a JSON object) into the reported state of the
    device its `device` template names (default ``{device}``, the source topic's capture), in
    the route's namespace; with `key`, the message goes under that key of the reported state.
    A message that is not a bounded JSON object is a dead letter naming why."""

    def __init__(self, name: str, link: DeviceLink, namespace: str, device: str = "{device}",
                 key: str | None = None):
        self.name = name
        self.link = link
        self.namespace = namespace
        self.template = TopicTemplate(device)
        self.key = key

    async def deliver(self, messages: list[Message], variables: list[dict]) -> list[tuple[int, IotwasmError]]:
        failures: list[tuple[int, IotwasmError]] = []
        updates: list[tuple[str, dict]] = []
        for i, (m, v) in enumerate(zip(messages, variables)):
            try:
                device = self.template.fill(v, m.payload, m.topic)
                check_device(self.namespace, device)
                if len(m.payload) > MAX_DOCUMENT:
                    raise ConfigError(f"message of {len(m.payload)} bytes is larger than a twin "
                                      f"({MAX_DOCUMENT} bytes)")
                try:
                    doc = json.loads(m.payload)
                except ValueError as e:
                    raise ConfigError(f"message is not JSON ({e})") from None
                if self.key is not None:
                    doc = {self.key: doc}
                # its size is bounded by the payload's, and checked again once merged
                check_document(doc, f"reported state of {self.namespace}/{device}", measure=False)
            except (KeyError, IotwasmError) as e:
                failures.append((i, SinkError(f"twin sink {self.name}: {e.args[0] if e.args else e}")))
                continue
            updates.append((device, doc))
        if updates:
            await self.link.reported(self.namespace, updates, checked=True)
        return failures


async def _build_twin_sink(ctx: Any, cfg: TwinSinkSpec, name: str, outbox: Any) -> TwinSink:
    """The `twin` sink kind: a node's sink (it writes the node's device registry), so it is
    built from the node's context, in the namespace that owns the route."""
    link = getattr(ctx, "device_link", None)
    if link is None:
        raise ConfigError("a twin sink needs the node's device registry")
    return TwinSink(name, link, ctx.namespace, cfg.device, cfg.key)


#: the `twin` sink on the connector interface, next to the kinds of pipeline/connectors
TWIN_CONNECTOR = registry.register(Connector(
    "twin", "sink", TwinSinkSpec, _build_twin_sink,
    "A batch is taken once the reported states are merged into the node's state database; a "
    "message that is not a JSON object (or names no valid device) is a dead letter at once. No "
    "outbox: the node's own disk is the only thing it waits on."))
