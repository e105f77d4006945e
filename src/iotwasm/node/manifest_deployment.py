"""The Deployment kind: a module with its resources, capabilities, config, replicas, and
restart and update policies, turned into the engine's limits and capabilities and the
container's scaling and restart policy.

The secret values of its config and environment live here too: a dump hides them unless it
asks for them with `REVEAL_SECRETS`, so no view can forget to. Split from `manifests`
(reading documents into the kinds); `manifests` re-exports the names its callers use.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import (Discriminator, Field, FieldSerializationInfo, PrivateAttr, Tag, field_serializer,
                      field_validator, model_validator)

from ..container import RestartPolicy, Scaling
from ..engine import Capabilities, Limits, Preopen
from ..engine.http_client import HttpGrant
from ..engine.limits import parse_duration_ms, parse_timeout_ms
from ..errors import ConfigError
from ..pipeline.connectors.config import Strict
from .manifest_metadata import Metadata

#: `context` of a dump that keeps secret values (see `to_document`); every other dump hides them
REVEAL_SECRETS = {"reveal_secrets": True}


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
