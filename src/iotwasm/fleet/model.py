"""What the fleet stores: a node's registration and a fleet deployment (manifest + placement)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field

from pydantic import Field, ValidationError, model_validator

from ..engine.limits import parse_size
from ..errors import ConfigError
from ..node.manifests import Deployment, Strict


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


class FleetDeployment(Strict):
    deployment: Deployment
    placement: Placement = Placement()

    @model_validator(mode="after")
    def _pinned(self) -> "FleetDeployment":
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
