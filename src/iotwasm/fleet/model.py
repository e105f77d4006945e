"""What the fleet stores: a node's registration and a fleet deployment (manifest + placement)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field

from pydantic import Field, ValidationError, model_validator

from ..engine.limits import parse_duration_ms, parse_size
from ..errors import ConfigError
from ..node.manifests import Deployment, Route, Strict


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
    #: per fleet deployment: the module digest assigned and running, state, and counters of the
    #: running version (messages, dead letters, traps, local rollbacks): what rollout gates read
    health: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "NodeInfo":
        d = json.loads(data)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class Placement(Strict):
    """Where a fleet deployment runs. `replicas` copies (one per node), or one on every
    matching node with `perNode`; `spreadBy` names a label whose values share the copies."""

    node_selector: dict[str, str] = Field({}, alias="nodeSelector")
    replicas: int | None = Field(None, ge=0, le=10_000)
    per_node: bool = Field(False, alias="perNode")
    spread_by: str | None = Field(None, alias="spreadBy")

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
            m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", self.canary)
            if not m or float(m.group(1)) > 100:
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

    def canary_nodes(self, total: int) -> int:
        """How many of `total` nodes form the canary stage."""
        if isinstance(self.canary, str):
            pct = float(self.canary.strip().rstrip("%"))
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
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def parse(cls, data: bytes | str | dict, where: str = "fleet deployment") -> "FleetDeployment":
        try:
            if isinstance(data, dict):
                return cls.model_validate(data)
            return cls.model_validate_json(data)
        except ValidationError as e:
            problems = [f"{where}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
            raise ConfigError("; ".join(problems)) from None
