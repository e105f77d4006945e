"""A rule's actions: what each emitted row becomes (a publish, a command, a webhook, a row in
the local store, a connector's sink, or a deployment's outputs).

Split from `runner` (`RuleRunner`: the bus, the queue, the engine's thread, alerts); `runner`
re-exports `Action`. An action knows its sink and how to fill its templates from a row and
its message, and nothing of the queue or the engine: the runner hands it the emissions of
its rule, and it counts what it sent and what failed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ...errors import ConfigError
from ...message import Message
from ..sinks import BusSink, StoreSink, WebhookSink
from .alerts import fill
from .engine import Emission

if TYPE_CHECKING:
    from .runner import RuleRunner

log = logging.getLogger("iotwasm.rules")


@dataclass
class Action:
    type: str                     # publish command webhook store invoke
    topic: str = ""
    payload: str = ""             # template; empty = the output row as JSON
    qos: int = 1
    url: str = ""
    table: str = "rules"
    deployment: str = ""
    #: a ``sink`` action: makes the sink (a connector, docs/connectors.md) given its name
    build: Callable[[str], Awaitable[Any]] | None = None


class ActionRunner:
    def __init__(self, rule: str, i: int, action: Action, runner: "RuleRunner"):
        self.runner = runner
        self.action = action
        self.rule = rule
        self.sent = 0
        self.failed = 0
        name = self.name = f"rule:{rule}/{i}:{action.type}"
        self.sink: Any = None
        if action.type in ("publish", "command"):
            topic = action.topic or ("devices/{device}/commands" if action.type == "command" else "")
            if not topic:
                raise ConfigError(f"rule {rule}: action {i} ({action.type}) needs a topic")
            self.sink = BusSink(name, runner.bus, "{topic}", qos=action.qos, outbox=runner.outbox)
            self.topic = topic
        elif action.type == "webhook":
            self.sink = WebhookSink(name, action.url, outbox=runner.outbox)
            self.topic = f"rules/{rule}"
        elif action.type == "store":
            if runner.store is None:
                raise ConfigError(f"rule {rule}: action {i}: no local store on this node")
            self.sink = StoreSink(name, runner.store, action.table, f"rule:{rule}")
            self.topic = f"rules/{rule}"
        elif action.type == "sink":
            if action.build is None:
                raise ConfigError(f"rule {rule}: action {i} (sink) has no connector")
            self.topic = action.topic or f"rules/{rule}"   # the sink is made in `build_sink`
        elif action.type == "invoke":
            self.processor = runner.processors(action.deployment)
            if self.processor is None:
                raise ConfigError(f"rule {rule}: action {i}: deployment {action.deployment!r} is not on this node")
            self.sink = BusSink(name, runner.bus, "{topic}", qos=action.qos, outbox=runner.outbox)
            self.topic = action.topic or f"rules/{rule}/{action.deployment}"
        else:
            raise ConfigError(f"rule {rule}: unknown action type {action.type!r}")

    async def build_sink(self) -> None:
        if self.action.type == "sink" and self.sink is None and self.action.build is not None:
            self.sink = await self.action.build(self.name)

    async def start(self) -> None:
        if hasattr(self.sink, "start"):
            await self.sink.start()

    async def stop(self, drain: float) -> None:
        if hasattr(self.sink, "stop"):
            await self.sink.stop(drain_timeout=drain)

    def backlog(self) -> int:
        return self.sink.backlog() if hasattr(self.sink, "backlog") else 0

    async def run(self, emissions: list[Emission]) -> None:
        a = self.action
        msgs: list[Message] = []
        variables: list[dict[str, str]] = []
        for em in emissions:
            values = {**{k: v for k, v in (em.source or {}).items() if k[:1] != "\x00"}, **em.row,
                      "rule": self.rule}
            payload = fill(a.payload, values).encode() if a.payload else \
                json.dumps(em.row, separators=(",", ":")).encode()
            topic = fill(self.topic, values)
            msgs.append(Message(topic, payload, em.ts))
            variables.append({})
        if a.type == "invoke":
            result = await self.runner.offload(self.processor.process, msgs)
            self.failed += len(result.dead_letters)
            outs = [Message(o.topic or msgs[o.index].topic, o.payload, msgs[o.index].timestamp_ms)
                    for o in result.outputs]
            msgs, variables = outs, [{} for _ in outs]
            if not msgs:
                return
        failures = await self.sink.deliver(msgs, variables)
        self.failed += len(failures)
        self.sent += len(msgs) - len(failures)
        for _, err in failures[:1]:
            log.warning("rule %s: %s action failed: %s", self.rule, a.type, err)
