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
from pydantic import (BaseModel, ConfigDict, Field, FieldSerializationInfo, PrivateAttr, TypeAdapter,
                      ValidationError, field_serializer, field_validator, model_validator)

from ..container import RestartPolicy
from ..engine import Capabilities, Limits, Preopen
from ..engine.capabilities import HOST_CAPABILITIES, WASI
from ..engine.limits import parse_duration_ms, parse_timeout_ms
from ..errors import ConfigError
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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


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


class CapabilitySpec(Strict):
    host: list[Literal["log", "clock", "random", "kv", "config", "metrics", "wasi"]] = []
    topics: Topics = Topics()
    env: dict[str, str | SecretText] = Field({}, description="environment of WASI modules; an entry "
                                              "{value: ..., secret: true} is never shown back")
    args: list[str] = []
    files: list[FileGrant] = []
    kv_quota: str = Field("1Mi", alias="kvQuota")

    @field_serializer("env")
    def _env(self, env: dict, info: FieldSerializationInfo) -> dict:
        return _hide_secrets(env, info)


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


class DeploymentSpec(Strict):
    module: str = Field(..., description="a path, name:version, or sha256 digest")
    abi: Literal["iotwasm-v1", "wasi-command", "component"] | None = None
    replicas: int = Field(1, ge=1, le=10_000)
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
        if self.weights and len(self.weights) != self.replicas:
            raise ValueError(f"weights has {len(self.weights)} entries for {self.replicas} replicas")
        if self.replicas > self.resources.max_instances:
            raise ValueError(f"replicas {self.replicas} exceeds resources.maxInstances "
                             f"{self.resources.max_instances}")
        return self


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
                            kv_quota=parse_size(c.kv_quota))


def _str(v: Any) -> str:
    return json.dumps(v) if isinstance(v, bool) else str(v)


# --- Route --------------------------------------------------------------------------------

class MqttEndpoint(Strict):
    url: str | None = Field(None, description="mqtt://host:port[?version=5]; default: the node's broker")
    topic: str
    qos: Literal[0, 1] = 1
    retain: bool = False
    queue: str | None = Field(None, description="source only: a shared subscription "
                              "($share/<queue>/<topic>): the nodes of one group share the messages")


class NatsEndpoint(Strict):
    url: str | None = None
    subject: str
    jetstream: bool = False
    durable: str | None = None
    queue: str | None = None


class HttpSource(Strict):
    path: str = "/ingest"
    topic: str = Field("http/ingest", description="topic template filled from the query parameters")


class SensorsSource(Strict):
    devices: int = Field(20, ge=1, le=100_000)
    rate: float = Field(1.0, gt=0, description="readings per second per device and sensor")
    sensors: list[Literal["temperature", "humidity", "vibration", "pressure"]] = ["temperature", "humidity"]
    anomaly_rate: float = Field(0.01, alias="anomalyRate", ge=0, le=1)
    corrupt_rate: float = Field(0.005, alias="corruptRate", ge=0, le=1)
    seed: int = 7


class BusEndpoint(Strict):
    topic: str


class Source(Strict):
    mqtt: MqttEndpoint | None = None
    nats: NatsEndpoint | None = None
    http: HttpSource | None = None
    sensors: SensorsSource | None = None
    bus: BusEndpoint | None = None

    @model_validator(mode="after")
    def _one(self) -> "Source":
        given = [k for k in ("mqtt", "nats", "http", "sensors", "bus") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a source needs exactly one of mqtt, nats, http, sensors, bus (got {given or 'none'})")
        return self

    @property
    def type(self) -> str:
        return next(k for k in ("mqtt", "nats", "http", "sensors", "bus") if getattr(self, k) is not None)


class StoreSink(Strict):
    table: str = "messages"

    @field_validator("table")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", v):
            raise ValueError("must be a plain identifier")
        return v


class WebhookSink(Strict):
    url: str
    timeout: str = "5s"


class LogSink(Strict):
    level: Literal["debug", "info", "warning"] = "info"


class Sink(Strict):
    mqtt: MqttEndpoint | None = None
    nats: NatsEndpoint | None = None
    store: StoreSink | None = None
    webhook: WebhookSink | None = None
    log: LogSink | None = None
    bus: BusEndpoint | None = None
    store_and_forward: bool = Field(True, alias="storeAndForward",
                                    description="uplink sinks keep unsent messages in SQLite")

    @model_validator(mode="after")
    def _one(self) -> "Sink":
        given = [k for k in ("mqtt", "nats", "store", "webhook", "log", "bus") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a sink needs exactly one of mqtt, nats, store, webhook, log, bus (got {given or 'none'})")
        if self.mqtt is not None and self.mqtt.queue is not None:
            raise ValueError("queue shares a source's messages between nodes; a sink has none")
        return self

    @property
    def type(self) -> str:
        return next(k for k in ("mqtt", "nats", "store", "webhook", "log", "bus") if getattr(self, k) is not None)


class BatchSpec(Strict):
    max_size: int = Field(100, alias="maxSize", ge=1, le=100_000)
    max_linger: str = Field("1ms", alias="maxLinger")


class QueueSpec(Strict):
    capacity: int = Field(10_000, ge=1)
    overflow: Literal["block", "drop-oldest"] = "block"


class RouteSpec(Strict):
    source: Source
    steps: list[str] = Field(default_factory=list, description="deployment names, in order")
    sinks: list[Sink] = Field(min_length=1)
    batch: BatchSpec = BatchSpec()
    queue: QueueSpec = QueueSpec()
    order_by: str = Field("device", alias="orderBy",
                          description="source-topic variable that keys per-device ordering")
    dead_letter: str = Field("deadletter/{route}", alias="deadLetter")


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

    @model_validator(mode="after")
    def _one(self) -> "RuleAction":
        given = [k for k in ACTION_TYPES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"an action needs exactly one of {', '.join(ACTION_TYPES)} (got {given or 'none'})")
        return self

    @property
    def type(self) -> str:
        return next(k for k in ACTION_TYPES if getattr(self, k) is not None)


ACTION_TYPES = ("publish", "command", "webhook", "store", "invoke")


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
        elif part in KINDS:
            continue  # the discriminator tag adds nothing for people
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def parse_documents(text: str, origin: str = "<text>") -> list[Deployment | Route]:
    """Parse and validate every document of a YAML text; raise ManifestError with all problems."""
    try:
        docs = [d for d in load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        what = "refused" if isinstance(e, DocumentTooLarge) else "not valid YAML"
        raise ManifestError([f"{origin}{where}: {what}: {excerpt(getattr(e, 'problem', None) or e, 200)}"]) from None
    problems: list[str] = []
    out: list[Deployment | Route] = []
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


def load_path(path: str | Path) -> list[Deployment | Route]:
    """Load a manifest file, or every *.yaml / *.yml file of a directory (sorted).

    All problems of all files are collected before raising, so one run shows everything.
    """
    path = Path(path)
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    problems: list[str] = []
    out: list[Deployment | Route] = []
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
