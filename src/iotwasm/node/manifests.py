"""Manifests: Kubernetes-style YAML documents that describe what a node should run.

    apiVersion: iotwasm.io/v1
    kind: Deployment | Route | Rule
    metadata: {name: ..., labels: {...}}
    spec: ...

Validated with pydantic. A bad manifest is reported with the file, the document index, the
field path and the reason, and every error of a file is reported at once, e.g.::

    greenhouse.yaml#2 (Route greenhouse) spec.sinks[0].mqtt.qos: Input should be 0 or 1

The JSON Schema is published in docs/manifest.schema.json (`iotwasm schema` prints it).

Manifests come from API callers too, so reading them is bounded (node/bounded_yaml.py: nesting
and alias expansion) and a problem quotes at most a short excerpt of what it found.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, Discriminator, Field, FieldSerializationInfo, PrivateAttr, Tag,
                      TypeAdapter, ValidationError, field_serializer, field_validator, model_validator)

from ..container import RestartPolicy, Scaling
from ..engine import Capabilities, Limits, Preopen
from ..engine.capabilities import HOST_CAPABILITIES, WASI
from ..engine.http_client import HttpGrant
from ..engine.limits import parse_duration_ms, parse_timeout_ms
from ..errors import ConfigError, IotwasmError
from ..pipeline import connectors
from ..pipeline.connectors.base import Role
from ..pipeline.connectors.config import (BusEndpoint, ConnectorRef, HttpSource, LogSink, MqttEndpoint,
                                          NatsEndpoint, SensorsSource, StoreSink, Strict, WebhookSink)
from ..pipeline.connectors.coap import CoapSource
from ..pipeline.connectors.modbus import ModbusSource
from ..pipeline.connectors.opcua import OpcUaSource
from ..pipeline.connectors.postgres import PostgresSink
from .bounded_yaml import DocumentTooLarge, excerpt, load_all

API_VERSION = "iotwasm.io/v1"
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
#: the most problems one error reports (the rest are counted)
MAX_PROBLEMS = 20

#: `context` of a dump that keeps secret values (see `to_document`); every other dump hides them
REVEAL_SECRETS = {"reveal_secrets": True}


class ManifestError(ConfigError):
    """One or more manifests are invalid; `problems` lists one line per error."""

    kind = "manifest"

    def __init__(self, problems: list[str]):
        if len(problems) > MAX_PROBLEMS:
            problems = [*problems[:MAX_PROBLEMS], f"… and {len(problems) - MAX_PROBLEMS} more problem(s)"]
        self.problems = problems
        super().__init__("; ".join(problems) if len(problems) == 1 else
                         f"{len(problems)} problems:\n  " + "\n  ".join(problems))


class Metadata(Strict):
    name: str
    namespace: str = "default"
    labels: dict[str, str] = {}

    @field_validator("name", "namespace")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be lowercase letters, digits and '-', at most 63 characters")
        return v


# --- Deployment ---------------------------------------------------------------------------

class Resources(Strict):
    memory: str = "64Mi"
    fuel: str | None = None
    timeout: str = Field("1s", description="wall-clock limit per call, e.g. 50ms or 2s; at most "
                                           "the node's maximum (iotwasm up --max-timeout, 10s by "
                                           "default); 0 or none is refused")
    stack: str = "512Ki"
    max_output: str = Field("16Mi", alias="maxOutput")
    max_instances: int = Field(64, alias="maxInstances", ge=1, le=10_000)

    @field_validator("timeout", mode="before")
    @classmethod
    def _time_limit(cls, v: Any) -> str:
        """Every call has a time limit: "0", "none", null or a negative value would mean none."""
        if v is None or isinstance(v, bool):
            raise ValueError(f"timeout {v!r} is not a time limit; every call needs a positive one, "
                             f"such as 50ms or 2s (leave the field out for 1s)")
        try:
            parse_timeout_ms(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return str(v)

    @model_validator(mode="after")
    def _parse(self) -> "Resources":
        self.to_limits()  # raises ConfigError with the unit problem
        return self

    def to_limits(self) -> Limits:
        try:
            return Limits.parse(memory=self.memory, fuel=self.fuel, timeout=self.timeout,
                                stack=self.stack, max_output=self.max_output,
                                max_instances=self.max_instances)
        except ConfigError as e:
            raise ValueError(str(e)) from None


class Topics(Strict):
    subscribe: list[str] = []
    publish: list[str] = []


class FileGrant(Strict):
    host: str
    guest: str
    writable: bool = False


class SecretValue(Strict):
    """A config entry written {value: ..., secret: true}: the module gets the value; every view
    of the manifest (API, CLI, dashboard, fleet) shows {secret: true} in its place."""

    value: str | int | float | bool
    secret: bool


class SecretText(SecretValue):
    """An environment entry written {value: ..., secret: true}: the module gets the value; every
    view of the manifest shows {secret: true} in its place."""

    value: str


def _hide_secrets(entries: dict, info: FieldSerializationInfo) -> dict:
    # hidden unless the dump asks for them (`to_document`): a view can never forget to hide one
    reveal = (info.context or {}).get("reveal_secrets") is True
    out: dict = {}
    for k, v in entries.items():
        if not isinstance(v, SecretValue):
            out[k] = v
        elif reveal or not v.secret:
            out[k] = {"value": v.value, "secret": v.secret}
        else:
            out[k] = {"secret": True}
    return out


def _plain(v: Any) -> Any:
    return v.value if isinstance(v, SecretValue) else v


class HttpGrantSpec(Strict):
    """The allow-list of the `http` capability (docs/abi.md, outbound HTTP)."""

    allow: list[str] = Field([], max_length=256, description=(
        "URL patterns scheme://host[:port][/path]: host exact, *.domain or *, port a number or *, "
        "path a glob where * matches anything; nothing else is reachable"))
    max_response: str = Field("1Mi", alias="maxResponse", description="largest response body read")
    private_networks: bool = Field(False, alias="privateNetworks", description=(
        "let names resolve to loopback/private/link-local addresses (a pattern naming an address "
        "literally always may)"))

    @model_validator(mode="after")
    def _check(self) -> "HttpGrantSpec":
        try:
            self.grant()
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self

    def grant(self) -> HttpGrant:
        from ..engine.limits import parse_size

        return HttpGrant(allow=tuple(self.allow), max_response=parse_size(self.max_response),
                         private_networks=self.private_networks)


class CapabilitySpec(Strict):
    host: list[Literal["log", "clock", "random", "kv", "config", "metrics", "twin", "wasi", "http"]] = []
    http: HttpGrantSpec | None = Field(None, description="allow-list of the http capability")
    topics: Topics = Topics()
    env: dict[str, str | SecretText] = Field({}, description="environment of WASI modules; an entry "
                                              "{value: ..., secret: true} is never shown back")
    args: list[str] = []
    files: list[FileGrant] = []
    kv_quota: str = Field("1Mi", alias="kvQuota")

    @field_serializer("env")
    def _env(self, env: dict, info: FieldSerializationInfo) -> dict:
        return _hide_secrets(env, info)

    @model_validator(mode="after")
    def _http(self) -> "CapabilitySpec":
        if "http" in self.host and not (self.http and self.http.allow):
            raise ValueError("capability 'http' needs an allow-list: http: {allow: [URL patterns]}")
        if self.http is not None and "http" not in self.host:
            raise ValueError("http allow-list given but capability 'http' is not in host")
        return self


class RestartSpec(Strict):
    mode: Literal["always", "on-failure", "never"] = "on-failure"
    backoff: str = "500ms"
    max_backoff: str = Field("60s", alias="maxBackoff")
    crash_loop_batches: int = Field(10, alias="crashLoopBatches", ge=1)

    @model_validator(mode="after")
    def _check(self) -> "RestartSpec":
        self.policy()  # raises with the problem (a zero backoff, a maximum below it)
        return self

    def policy(self) -> RestartPolicy:
        try:
            return RestartPolicy(mode=self.mode, backoff_s=parse_duration_ms(self.backoff) / 1000,
                                 max_backoff_s=parse_duration_ms(self.max_backoff) / 1000,
                                 crash_loop_batches=self.crash_loop_batches)
        except ConfigError as e:
            raise ValueError(str(e)) from None


class HealthGate(Strict):
    """A new version is healthy when its first `messages` messages trap at most `max_trap_rate`."""

    messages: int = Field(100, ge=1)
    max_trap_rate: float = Field(0.2, alias="maxTrapRate", ge=0, le=1)


class UpdateSpec(Strict):
    health_gate: HealthGate = Field(HealthGate(), alias="healthGate")
    rollback: bool = True


class ReplicaRange(Strict):
    """Instances on demand: the node keeps between `min` and `max` instances as demand asks."""
    min: int = Field(0, ge=0, le=10_000, description="instances always kept; 0 idles to none at all")
    max: int = Field(..., ge=1, le=10_000, description="the most instances run at once")
    cooldown: str = Field("30s", description="how long an instance above min may idle before it is closed")

    @field_validator("cooldown")
    @classmethod
    def _duration(cls, v: str) -> str:
        try:
            parse_duration_ms(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _order(self) -> ReplicaRange:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


def _replicas_kind(v: Any) -> str:
    return "range" if isinstance(v, (dict, ReplicaRange)) else "number"


#: the two spellings of spec.replicas (their tags are left out of the field path of a problem)
REPLICA_TAGS = {"number", "range"}
Replicas = Annotated[Union[Annotated[Annotated[int, Field(ge=1, le=10_000)], Tag("number")],
                           Annotated[ReplicaRange, Tag("range")]], Discriminator(_replicas_kind)]


class DeploymentSpec(Strict):
    module: str = Field(..., description="a path, name:version, or sha256 digest")
    abi: Literal["iotwasm-v1", "wasi-command", "component"] | None = None
    replicas: Replicas = Field(1, description="a number (fixed), or {min, max, cooldown}: instances on demand")
    prewarm: int = Field(0, ge=0, le=10_000, description="instantiated spares kept beyond the instances "
                                                         "in use, so a message after idling does not "
                                                         "pay instantiation")
    strategy: Literal["round-robin", "weighted", "least-in-flight", "least-memory", "random"] = "round-robin"
    weights: list[int] = []
    resources: Resources = Resources()
    capabilities: CapabilitySpec = CapabilitySpec()
    config: dict[str, str | int | float | bool | SecretValue] = Field(
        {}, description="what the module reads with config_get; an entry {value: ..., secret: true} is "
                        "never shown back")
    restart_policy: RestartSpec = Field(RestartSpec(), alias="restartPolicy")
    update_strategy: UpdateSpec = Field(UpdateSpec(), alias="updateStrategy")

    @field_serializer("config")
    def _config(self, config: dict, info: FieldSerializationInfo) -> dict:
        return _hide_secrets(config, info)

    @model_validator(mode="after")
    def _check(self) -> "DeploymentSpec":
        top = self.max_replicas
        if self.weights and len(self.weights) != top:
            raise ValueError(f"weights has {len(self.weights)} entries for {top} replicas")
        if top > self.resources.max_instances:
            raise ValueError(f"replicas {top} exceeds resources.maxInstances "
                             f"{self.resources.max_instances}")
        if self.prewarm > top:
            raise ValueError(f"prewarm {self.prewarm} is above the most replicas, {top}")
        return self

    @property
    def min_replicas(self) -> int:
        return self.replicas if isinstance(self.replicas, int) else self.replicas.min

    @property
    def max_replicas(self) -> int:
        return self.replicas if isinstance(self.replicas, int) else self.replicas.max

    def scaling(self) -> Scaling:
        r = self.replicas
        if isinstance(r, int):
            return Scaling(r, r, self.prewarm)
        return Scaling(r.min, r.max, self.prewarm, parse_duration_ms(r.cooldown) / 1000)

    def replicas_text(self) -> str:
        r = self.replicas
        return f"{r}" if isinstance(r, int) else f"{r.min}..{r.max}"


class Deployment(Strict):
    api_version: Literal["iotwasm.io/v1"] = Field(alias="apiVersion")
    kind: Literal["Deployment"]
    metadata: Metadata
    spec: DeploymentSpec
    # the module digest `spec.module` was resolved to when this manifest was applied; kept with
    # the applied manifest so a tag that moves later never changes what runs (not part of the
    # document: a view or a file never carries it)
    _module_digest: str | None = PrivateAttr(default=None)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def bound_module(self) -> str | None:
        """The digest this deployment was bound to when applied, if it has been."""
        return self._module_digest

    def bind_module(self, digest: str | None) -> Deployment:
        self._module_digest = digest
        return self

    def limits(self) -> Limits:
        return self.spec.resources.to_limits()

    def capabilities(self) -> Capabilities:
        from ..engine.limits import parse_size

        c = self.spec.capabilities
        host = set(c.host) | {"config"}  # holds only what this manifest's author wrote
        return Capabilities(host=frozenset(host), config={k: _str(_plain(v)) for k, v in self.spec.config.items()},
                            env={k: _plain(v) for k, v in c.env.items()}, args=tuple(c.args),
                            dirs=tuple(Preopen(f.host, f.guest, f.writable) for f in c.files),
                            kv_quota=parse_size(c.kv_quota),
                            http=c.http.grant() if c.http is not None else HttpGrant())


def _str(v: Any) -> str:
    return json.dumps(v) if isinstance(v, bool) else str(v)


# --- Route --------------------------------------------------------------------------------

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
    max_linger: str = Field("1ms", alias="maxLinger")


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


# --- Rule ---------------------------------------------------------------------------------

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


Manifest = Annotated[Union[Deployment, Route, Rule], Field(discriminator="kind")]
_adapter: TypeAdapter = TypeAdapter(Manifest)
KINDS = ("Deployment", "Route", "Rule")


def to_document(m: Deployment | Route | Rule) -> dict:
    """The manifest as a JSON document *with* its secret values: for the node's database, the
    fleet's store and comparing two versions, never for showing (a plain ``model_dump`` hides
    them, so every view is safe by default)."""
    return m.model_dump(mode="json", by_alias=True, context=REVEAL_SECRETS)


def digest_of_manifest(m: Deployment | Route | Rule) -> str:
    # secret values count: changing only a secret is a change to apply
    text = json.dumps(to_document(m), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in KINDS or part in REPLICA_TAGS:
            continue  # the discriminator tag adds nothing for people
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def parse_documents(text: str, origin: str = "<text>") -> list[Deployment | Route | Rule]:
    """Parse and validate every document of a YAML text; raise ManifestError with all problems."""
    try:
        docs = [d for d in load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        what = "refused" if isinstance(e, DocumentTooLarge) else "not valid YAML"
        raise ManifestError([f"{origin}{where}: {what}: {excerpt(getattr(e, 'problem', None) or e, 200)}"]) from None
    problems: list[str] = []
    out: list[Deployment | Route | Rule] = []
    for i, doc in enumerate(docs, 1):
        label = f"{origin}#{i}"
        if isinstance(doc, dict):
            md = doc.get("metadata")
            if isinstance(md, dict) and "name" in md:
                label += f" ({excerpt(doc.get('kind', '?'))} {excerpt(md['name'])})"
        if not isinstance(doc, dict):
            problems.append(f"{label}: a manifest must be a mapping")
            continue
        if doc.get("kind") not in KINDS:
            problems.append(f"{label} kind: must be one of {', '.join(KINDS)} (got {excerpt(doc.get('kind'), quote=True)})")
            continue
        try:
            out.append(_adapter.validate_python(doc))
        except ValidationError as e:
            for err in e.errors():
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{label} {excerpt(_loc(err['loc']), 200)}: {excerpt(msg, 300)}")
    if problems:
        raise ManifestError(problems)
    return out


def load_path(path: str | Path) -> list[Deployment | Route | Rule]:
    """Load a manifest file, or every *.yaml / *.yml file of a directory (sorted).

    All problems of all files are collected before raising, so one run shows everything.
    """
    path = Path(path)
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    problems: list[str] = []
    out: list[Deployment | Route | Rule] = []
    for f in files:
        try:
            out += parse_documents(f.read_text(), str(f))
        except ManifestError as e:
            problems += e.problems
        except OSError as e:
            problems.append(f"{f}: cannot read: {e.strerror}")
    names: dict[tuple[str, str], str] = {}
    for m in out:
        key = (m.kind, m.name)
        if key in names:
            problems.append(f"{m.kind} {m.name} is defined twice")
        names[key] = m.name
    if problems:
        raise ManifestError(problems)
    return out


def json_schema() -> dict:
    schema = _adapter.json_schema(by_alias=True)
    schema["$id"] = "https://iotwasm.io/schemas/manifest-v1.json"
    schema["title"] = "iotwasm manifest (Deployment, Route or Rule)"
    return schema


__all__ = ["API_VERSION", "Deployment", "ManifestError", "REVEAL_SECRETS", "Route", "Rule", "SecretValue",
           "digest_of_manifest", "json_schema", "load_path", "parse_documents", "to_document",
           "HOST_CAPABILITIES", "WASI"]
