"""The Rule kind: SQL over the bus's streams (docs/rules.md) with the deployments it calls as
functions, its event time, its actions and its alert.

The SQL is compiled when the manifest is validated, so a rule that cannot run is refused with
the others' problems. An action may be any route sink, hence the import of `Sink`. Split from
`manifests` (reading documents into the kinds); `manifests` re-exports `Rule`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from ..pipeline.connectors.config import Strict
from .manifest_metadata import Metadata
from .manifest_route import Sink

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class RuleFunction(Strict):
    """A deployment's module offered to the rule as a function (docs/rules.md, WASM functions)."""

    name: str
    deployment: str
    kind: Literal["scalar", "aggregate"] = "scalar"

    @field_validator("name")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not IDENT.match(v):
            raise ValueError("must be a plain identifier")
        return v.lower()


class EventTimeSpec(Strict):
    field: str | None = Field(None, description="payload field with the event time; default: arrival time")
    unit: Literal["ms", "s"] = "ms"
    lateness: str = Field("0s", description="allowed lateness: the watermark trails the latest event time by it")
    idle_timeout: str | None = Field(None, alias="idleTimeout",
                                     description="after this long without a newer event, event time "
                                                 "follows the clock so open windows close (default: "
                                                 "wait for the next event)")

    @field_validator("lateness", "idle_timeout")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        from ..engine.limits import parse_duration_ms
        if v is None:
            return v
        try:
            parse_duration_ms(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v


class PublishAction(Strict):
    topic: str = Field(..., description="template: {name} from the output row, then the message")
    payload: str = Field("", description="template; empty: the output row as JSON")
    qos: Literal[0, 1] = 1


class CommandAction(Strict):
    topic: str = "devices/{device}/commands"
    payload: str = ""
    qos: Literal[0, 1] = 1


class WebhookAction(Strict):
    url: str


class StoreAction(Strict):
    table: str = "rules"

    @field_validator("table")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not IDENT.match(v):
            raise ValueError("must be a plain identifier")
        return v


class InvokeAction(Strict):
    deployment: str
    topic: str = Field("", description="where the deployment's outputs go when it names no topic")


class RuleAction(Strict):
    publish: PublishAction | None = None
    command: CommandAction | None = None
    webhook: WebhookAction | None = None
    store: StoreAction | None = None
    invoke: InvokeAction | None = None
    sink: Sink | None = Field(None, description="any route sink (docs/connectors.md), e.g. postgres: "
                                                "each output row as a JSON message")

    @model_validator(mode="after")
    def _one(self) -> "RuleAction":
        given = [k for k in ACTION_TYPES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"an action needs exactly one of {', '.join(ACTION_TYPES)} (got {given or 'none'})")
        return self

    @property
    def type(self) -> str:
        return next(k for k in ACTION_TYPES if getattr(self, k) is not None)


ACTION_TYPES = ("publish", "command", "webhook", "store", "invoke", "sink")


class AlertSpec(Strict):
    severity: Literal["info", "warning", "critical"] = "warning"
    dedup: str = Field("{rule}", description="template of the deduplication key, e.g. {device}")
    cooldown: str = "0s"
    for_: str = Field("0s", alias="for", description="the condition must hold this long before it fires")
    topic: str = "alerts/{rule}"
    webhook: str | None = Field(None, description="second channel when MQTT fails")
    message: str = ""

    @model_validator(mode="after")
    def _durations(self) -> "AlertSpec":
        from ..engine.limits import parse_duration_ms
        for name in ("cooldown", "for_"):
            try:
                parse_duration_ms(getattr(self, name))
            except ConfigError as e:
                raise ValueError(f"{name.rstrip('_')}: {e}") from None
        if self.webhook and not self.webhook.startswith(("http://", "https://")):
            raise ValueError("webhook must start with http:// or https://")
        return self


class RuleManifestSpec(Strict):
    functions: list[RuleFunction] = []   # before sql: compiling the SQL needs them
    sql: str = Field(..., description='SELECT … FROM "topic/filter" [WHERE …] [GROUP BY …] [HAVING …]')
    enabled: bool = True
    tags: list[str] = []
    event_time: EventTimeSpec = Field(EventTimeSpec(), alias="eventTime")
    actions: list[RuleAction] = []
    alert: AlertSpec | None = None

    @field_validator("sql")
    @classmethod
    def _compiles(cls, sql: str, info) -> str:
        from ..pipeline.rules import CompiledRule, RuleSpec, RuleSyntaxError

        class _Sig:  # a function's signature is all compiling needs
            def __init__(self, kind: str):
                self.kind = kind
        funcs = {f.name: _Sig(f.kind) for f in info.data.get("functions", [])}
        try:
            CompiledRule(RuleSpec("sql", sql, functions=funcs))
        except RuleSyntaxError as e:
            raise ValueError(str(e).removeprefix("rule sql ")) from None
        return sql


class Rule(Strict):
    api_version: Literal["iotwasm.io/v1"] = Field(alias="apiVersion")
    kind: Literal["Rule"]
    metadata: Metadata
    spec: RuleManifestSpec

    @property
    def name(self) -> str:
        return self.metadata.name
