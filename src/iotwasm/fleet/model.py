"""What the fleet stores: a node's registration and a fleet deployment (manifest + placement)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field

from typing import Literal

from pydantic import Field, ValidationError, model_validator

from ..engine.limits import parse_duration_ms, parse_size
from ..errors import ConfigError
from ..node.manifests import REVEAL_SECRETS, Deployment, Route, Strict


@dataclass
class NodeInfo:
    """One node as it announces itself in every heartbeat."""

    id: str
    labels: dict[str, str] = field(default_factory=dict)
    memory: int = 1 << 30            # bytes of linear memory the node offers to modules
    instances: int = 64              # module instances the node offers
    time: float = field(default_factory=time.time)   # wall clock of the heartbeat
    assignment_revision: int = 0     # the assignment the node has applied
    running: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    taints: list[str] = field(default_factory=list)   # "key=value:Effect"; absent in older heartbeats
    #: per fleet deployment: the module digest assigned and running, state, and counters of the
    #: running version (messages, dead letters, traps, local rollbacks): what rollout gates read
    health: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "NodeInfo":
        d = json.loads(data)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# Taints and tolerations follow Kubernetes: a tainted node repels deployments that do not
# tolerate the taint. Keys are label-like (letters, digits, - _ . /), values may be empty.
TAINT_KEY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]{0,251}[A-Za-z0-9])?$")
TAINT_VALUE = re.compile(r"^[-A-Za-z0-9_.]{0,63}$")
EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class Taint:
    """`NoSchedule`: no new copy is bound to the node unless tolerated; copies already there
    stay. `NoExecute`: besides, copies already there that do not tolerate it are moved away."""

    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"

    @classmethod
    def parse(cls, text: str, where: str = "taint") -> "Taint":
        """`key=value:Effect` or `key:Effect`."""
        head, sep, effect = text.rpartition(":")
        key, _, value = head.partition("=")
        if not sep or effect not in EFFECTS or not TAINT_KEY.match(key) or not TAINT_VALUE.match(value):
            raise ConfigError(f"{where} {text!r} must look like KEY=VALUE:EFFECT or KEY:EFFECT with EFFECT "
                              f"{' or '.join(EFFECTS)} (key: letters, digits, - _ . /; value: letters, "
                              "digits, - _ .)")
        return cls(key, value, effect)


class Toleration(Strict):
    """Lets a deployment onto nodes with a matching taint. No `effect` matches every effect;
    `Exists` matches any value; `Exists` without a key tolerates every taint."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = ""
    effect: Literal["NoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Toleration":
        self.key, self.value = self.key or None, self.value or ""
        if self.key is not None and not TAINT_KEY.match(self.key):
            raise ValueError(f"key {self.key!r}: letters, digits and - _ . / only")
        if not TAINT_VALUE.match(self.value):
            raise ValueError(f"value {self.value!r}: at most 63 letters, digits and - _ . only")
        if self.operator == "Equal" and not self.key:
            raise ValueError("operator Equal needs a key (a key-less toleration must use operator Exists)")
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists takes no value")
        return self

    def tolerates(self, taint: Taint) -> bool:
        if self.effect is not None and self.effect != taint.effect:
            return False
        if self.key is None:
            return True          # Exists without a key (Equal needs one)
        return self.key == taint.key and (self.operator == "Exists" or self.value == taint.value)


class Placement(Strict):
    """Where a fleet deployment runs. `replicas` copies (one per node), or one on every
    matching node with `perNode`; `spreadBy` names a label whose values share the copies;
    `tolerations` let it onto tainted nodes."""

    node_selector: dict[str, str] = Field({}, alias="nodeSelector")
    replicas: int | None = Field(None, ge=0, le=10_000)
    per_node: bool = Field(False, alias="perNode")
    spread_by: str | None = Field(None, alias="spreadBy")
    tolerations: list[Toleration] = []

    def untolerated(self, taints: list[Taint]) -> list[Taint]:
        return [t for t in taints if not any(tol.tolerates(t) for tol in self.tolerations)]

    @model_validator(mode="after")
    def _one_mode(self) -> "Placement":
        if self.per_node and self.replicas is not None:
            raise ValueError("give either replicas or perNode, not both")
        if not self.per_node and self.replicas is None:
            self.replicas = 1
        return self


class Gate(Strict):
    """What a rollout stage must show before the next one starts. Rates are judged per node on
    the traffic the new version handled since it started serving there."""

    observe: str = "10s"                 # how long every node of a stage is watched once it serves
    min_messages: int = Field(0, alias="minMessages", ge=0)    # traffic the stage must have seen
    max_error_rate: float = Field(0.05, alias="maxErrorRate", ge=0, le=1)   # dead letters / messages
    max_trap_rate: float = Field(0.0, alias="maxTrapRate", ge=0, le=1)      # traps, limit hits / messages

    @property
    def observe_s(self) -> float:
        return parse_duration_ms(self.observe) / 1000


class RolloutSpec(Strict):
    """How a new version of a fleet deployment replaces the running one: a canary stage, then
    `waves` stages over the rest, each passing the gate; more than `maxFailedNodes` nodes failing
    it (or a stage not passing within `stageTimeout`) rolls every updated node back."""

    canary: int | str = 1                # nodes, or a percentage such as "10%"; 0 skips the canary
    waves: int = Field(1, ge=1, le=100)
    gate: Gate = Gate()
    max_failed_nodes: int = Field(0, alias="maxFailedNodes", ge=0)
    stage_timeout: str = Field("2m", alias="stageTimeout")

    @model_validator(mode="after")
    def _check(self) -> "RolloutSpec":
        if isinstance(self.canary, str):
            pct = self._percent()
            if pct is None or pct > 100:
                raise ValueError(f"canary {self.canary!r}: give a node count or a percentage like '10%'")
        elif self.canary < 0:
            raise ValueError("canary must not be negative")
        for what, text in (("gate.observe", self.gate.observe), ("stageTimeout", self.stage_timeout)):
            try:
                parse_duration_ms(text)
            except (ValueError, ConfigError) as e:
                raise ValueError(f"{what}: {e}") from None
        return self

    @property
    def stage_timeout_s(self) -> float:
        return parse_duration_ms(self.stage_timeout) / 1000

    def _percent(self) -> float | None:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", self.canary) if isinstance(self.canary, str) else None
        return float(m.group(1)) if m else None

    def canary_nodes(self, total: int) -> int:
        """How many of `total` nodes form the canary stage."""
        if isinstance(self.canary, str):
            pct = self._percent() or 0.0
            return min(total, max(1, -(-int(pct * total) // 100))) if pct > 0 and total else 0
        return min(total, self.canary)

    def stage_sizes(self, total: int) -> list[int]:
        """Cumulative node counts after each stage: [canary, wave 1, …, all]."""
        first = self.canary_nodes(total)
        rest = total - first
        sizes = ([first] if first else []) + [first + -(-rest * w // self.waves) for w in range(1, self.waves + 1)]
        out: list[int] = []
        for s in sizes:
            if not out or s > out[-1]:
                out.append(s)
        return out or [0]


class FleetDeployment(Strict):
    deployment: Deployment
    #: routes that run on every node the deployment is placed on (the fleet's pipelines); their
    #: steps may name this deployment and any other the node runs
    routes: list[Route] = []
    placement: Placement = Placement()
    #: staged replacement of a running version; without it a new version goes to every node at once
    rollout: RolloutSpec | None = None

    @model_validator(mode="after")
    def _pinned(self) -> "FleetDeployment":
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"routes: names must be unique (got {', '.join(names)})")
        # a digest names the same bytes on every node; a path or name:version would not
        if not re.match(r"^sha256:[0-9a-f]{64}$", self.deployment.spec.module):
            raise ValueError(f"deployment.spec.module {self.deployment.spec.module!r} must be a "
                             "sha256:<64 hex> digest (upload the module to the fleet object store)")
        return self

    @property
    def name(self) -> str:
        return self.deployment.name

    def demand(self) -> tuple[int, int]:
        """(memory bytes, instances) one copy takes on a node."""
        spec = self.deployment.spec
        return parse_size(spec.resources.memory) * spec.replicas, spec.replicas

    def to_json(self) -> bytes:
        """The stored form, for the fleet's JetStream bucket: with secret config and env values,
        which the nodes need (the bucket is readable only with the fleet's NATS credentials;
        every view of a deployment hides them)."""
        return self.model_dump_json(by_alias=True, context=REVEAL_SECRETS).encode()

    @classmethod
    def parse(cls, data: bytes | str | dict, where: str = "fleet deployment") -> "FleetDeployment":
        try:
            if isinstance(data, dict):
                return cls.model_validate(data)
            return cls.model_validate_json(data)
        except ValidationError as e:
            problems = [f"{where}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
            raise ConfigError("; ".join(problems)) from None
