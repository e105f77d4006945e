"""The Route kind: a source, steps with their traffic splits, and sinks with their breakers
and retries, plus batching, queueing and injected faults.

A source and a sink each name exactly one connector kind: a built-in kind's model comes from
`pipeline/connectors`, a plugin's configuration is checked by the model it registered. Split
from `manifests` (reading documents into the kinds); `manifests` re-exports the names its
callers use.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from ..engine.limits import parse_duration_ms
from ..errors import ConfigError, IotwasmError
from ..pipeline import connectors
from ..pipeline.connectors.base import Role
from ..pipeline.connectors.config import (BusEndpoint, ConnectorRef, HttpSource, LogSink, MqttEndpoint,
                                          NatsEndpoint, SensorsSource, StoreSink, Strict, WebhookSink)
from ..pipeline.connectors.coap import CoapSource
from ..pipeline.connectors.modbus import ModbusSource
from ..pipeline.connectors.opcua import OpcUaSource
from ..pipeline.connectors.postgres import PostgresSink
from .manifest_deployment import HealthGate
from .manifest_metadata import Metadata


class Source(Strict):
    """Where a route's messages come from: exactly one connector kind (docs/connectors.md)."""

    mqtt: MqttEndpoint | None = None
    nats: NatsEndpoint | None = None
    http: HttpSource | None = None
    sensors: SensorsSource | None = None
    bus: BusEndpoint | None = None
    modbus: ModbusSource | None = None
    opcua: OpcUaSource | None = None
    coap: CoapSource | None = None
    connector: ConnectorRef | None = None
    _config: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one(self) -> "Source":
        self._config = _one_kind(self, "source", SOURCE_KINDS)
        return self

    @property
    def type(self) -> str:
        return _kind_of(self, SOURCE_KINDS)

    @property
    def config(self) -> BaseModel:
        """The chosen kind's configuration (a plugin's validated by its own model)."""
        return self._config


class BreakerSpec(Strict):
    """The circuit breaker in front of an uplink sink (docs/node.md, circuit breakers)."""

    enabled: bool = True
    failures: int = Field(5, ge=1, le=100_000, description="consecutive failures that open it")
    failure_rate: float | None = Field(None, alias="failureRate", gt=0, le=1,
                                       description="or: this share of failures over the last `window` calls")
    window: int = Field(20, ge=1, le=100_000)
    open_for: str = Field("1s", alias="openFor", description="first open period before a probe")
    max_open_for: str = Field("5s", alias="maxOpenFor", description="open periods double up to this")

    @model_validator(mode="after")
    def _check(self) -> "BreakerSpec":
        if parse_duration_ms(self.open_for) <= 0 or parse_duration_ms(self.max_open_for) < parse_duration_ms(self.open_for):
            raise ValueError(f"need 0 < openFor ({self.open_for}) <= maxOpenFor ({self.max_open_for})")
        return self


class RetrySpec(Strict):
    """Attempts per message of a sink without an outbox (with one, the outbox retries)."""

    attempts: int = Field(3, ge=1, le=100, description="tries per message, the first included")
    backoff: str = "100ms"
    max_backoff: str = Field("2s", alias="maxBackoff")

    @model_validator(mode="after")
    def _check(self) -> "RetrySpec":
        if parse_duration_ms(self.backoff) <= 0 or parse_duration_ms(self.max_backoff) < parse_duration_ms(self.backoff):
            raise ValueError(f"need 0 < backoff ({self.backoff}) <= maxBackoff ({self.max_backoff})")
        return self


class TwinSink(Strict):
    """Merge each message (a JSON object) into a device's reported state (docs/devices.md)."""

    device: str = Field("{device}", description="template naming the device: source-topic captures, "
                        "{payload.field}")
    key: str | None = Field(None, description="put the message under this key of the reported state")


class Sink(Strict):
    """Where a route's results go: exactly one connector kind (docs/connectors.md)."""

    mqtt: MqttEndpoint | None = None
    nats: NatsEndpoint | None = None
    store: StoreSink | None = None
    webhook: WebhookSink | None = None
    log: LogSink | None = None
    bus: BusEndpoint | None = None
    twin: TwinSink | None = None
    postgres: PostgresSink | None = None
    connector: ConnectorRef | None = None
    store_and_forward: bool = Field(True, alias="storeAndForward",
                                    description="uplink sinks keep unsent messages in SQLite")
    circuit_breaker: BreakerSpec = Field(BreakerSpec(), alias="circuitBreaker",
                                         description="uplink sinks (mqtt, nats, bus, webhook)")
    retry: RetrySpec | None = Field(None, description="webhook sinks without storeAndForward")
    _config: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one(self) -> "Sink":
        self._config = _one_kind(self, "sink", SINK_KINDS)
        if self.mqtt is not None and self.mqtt.queue is not None:
            raise ValueError("queue shares a source's messages between nodes; a sink has none")
        return self

    @property
    def type(self) -> str:
        return _kind_of(self, SINK_KINDS)

    @property
    def config(self) -> BaseModel:
        return self._config


SOURCE_KINDS = ("mqtt", "nats", "http", "sensors", "bus", "modbus", "opcua", "coap", "connector")
SINK_KINDS = ("mqtt", "nats", "store", "webhook", "log", "bus", "twin", "postgres", "connector")


def _one_kind(m: Source | Sink, role: Role, kinds: tuple[str, ...]) -> BaseModel:
    """Exactly one kind is given; returns its configuration. A plugin's kind must be known
    (built in or an installed entry point) and its configuration is checked by its model."""
    given = [k for k in kinds if getattr(m, k) is not None]
    if len(given) != 1:
        raise ValueError(f"a {role} needs exactly one of {', '.join(kinds)} (got {given or 'none'})")
    if given[0] != "connector":
        return getattr(m, given[0])
    ref = m.connector
    assert ref is not None  # given says it is set
    try:
        conn = connectors.registry.get(role, ref.kind)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    try:
        return conn.config.model_validate(ref.config)
    except ValidationError as e:
        err = e.errors()[0]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        where = ".".join(str(p) for p in ("config", *err["loc"]))
        raise ValueError(f"{role} connector {ref.kind!r} {where}: "
                         f"{err['msg'].removeprefix('Value error, ')}{more}") from None


def _kind_of(m: Source | Sink, kinds: tuple[str, ...]) -> str:
    k = next(k for k in kinds if getattr(m, k) is not None)
    return m.connector.kind if m.connector is not None and k == "connector" else k


class BatchSpec(Strict):
    max_size: int = Field(100, alias="maxSize", ge=1, le=100_000)
    max_linger: str = Field("2ms", alias="maxLinger")


class QueueSpec(Strict):
    capacity: int = Field(10_000, ge=1)
    overflow: Literal["block", "drop-oldest"] = "block"


class SplitMatch(Strict):
    topic: str | None = Field(None, description="a topic filter: matching messages go to the canary")
    field: str | None = Field(None, description="a top-level JSON payload field ...")
    equals: str | int | float | bool | None = Field(None, description="... holding this value")

    @model_validator(mode="after")
    def _check(self) -> "SplitMatch":
        if self.topic is None and self.field is None:
            raise ValueError("a match needs a topic, a field, or both")
        if self.topic is not None:
            from ..messaging.topics import validate_filter

            try:
                validate_filter(self.topic)
            except IotwasmError as e:
                raise ValueError(str(e)) from None
        return self


class SplitSpec(Strict):
    """Part of a step's traffic to a second deployment (docs/node.md, traffic splits)."""

    deployment: str = Field(..., description="the canary deployment")
    weight: float = Field(0, ge=0, le=100, description="percent of the step's messages to the canary")
    match: SplitMatch | None = Field(None, description="messages the canary always gets")
    seed: int | None = Field(None, description="seed of the weighted choice (the same choices every run)")
    health_gate: HealthGate | None = Field(None, alias="healthGate", description=(
        "roll the canary back by itself when more than maxTrapRate of its first messages fail"))


class FaultSpec(Strict):
    """Injected delays and failures for testing a pipeline (docs/node.md, fault injection)."""

    step: str | None = Field(None, description="a step of the route, or ...")
    sink: int | None = Field(None, ge=0, description="... a sink, by its index in sinks")
    delay: str = Field("0ms", description="how long a delayed call waits")
    delay_percent: float = Field(0, alias="delayPercent", ge=0, le=100, description="percent of calls delayed")
    fail_percent: float = Field(0, alias="failPercent", ge=0, le=100,
                                description="percent of a step's messages, or of a sink's batches, failed")
    seed: int | None = None

    @model_validator(mode="after")
    def _check(self) -> "FaultSpec":
        if (self.step is None) == (self.sink is None):
            raise ValueError("a fault names exactly one of step or sink")
        if not self.fail_percent and not (self.delay_percent and parse_duration_ms(self.delay) > 0):
            raise ValueError("a fault needs failPercent, or delayPercent with a positive delay")
        return self


class RouteSpec(Strict):
    source: Source
    steps: list[str] = Field(default_factory=list, description="deployment names, in order")
    split: dict[str, SplitSpec] = Field({}, description="step name -> part of its traffic to a canary")
    sinks: list[Sink] = Field(min_length=1)
    batch: BatchSpec = BatchSpec()
    queue: QueueSpec = QueueSpec()
    order_by: str = Field("device", alias="orderBy",
                          description="source-topic variable that keys per-device ordering")
    dead_letter: str = Field("deadletter/{route}", alias="deadLetter")
    faults: list[FaultSpec] = Field([], max_length=64, description="off unless given: injected delays "
                                    "and failures for testing; the node records an event when it starts such a route")

    @model_validator(mode="after")
    def _check_split(self) -> "RouteSpec":
        for i, f in enumerate(self.faults):
            if f.step is not None and f.step not in self.steps:
                raise ValueError(f"faults[{i}]: {f.step!r} is not a step of this route (steps: {self.steps})")
            if f.sink is not None and f.sink >= len(self.sinks):
                raise ValueError(f"faults[{i}]: sink {f.sink} does not exist ({len(self.sinks)} sink(s))")
        for step, sp in self.split.items():
            if step not in self.steps:
                raise ValueError(f"split {step!r} is not a step of this route (steps: {self.steps})")
            if sp.deployment == step:
                raise ValueError(f"split {step!r} sends to its own deployment")
            if sp.weight == 0 and sp.match is None:
                raise ValueError(f"split {step!r} has neither a weight nor a match")
        return self

    def deployments(self) -> list[str]:
        """Every deployment the route runs: its steps and their canaries."""
        return [*self.steps, *(sp.deployment for sp in self.split.values())]


class Route(Strict):
    api_version: Literal["iotwasm.io/v1"] = Field(alias="apiVersion")
    kind: Literal["Route"]
    metadata: Metadata
    spec: RouteSpec

    @property
    def name(self) -> str:
        return self.metadata.name
