"""Container layer: WasmContainer (lifecycle, replicas, load balancing, stats, restarts)."""

from .balancing import STRATEGIES, make_strategy
from .container import WasmContainer
from .policy import ContainerStats, InstanceStats, RestartPolicy
from .lifecycle import TRANSITIONS, Lifecycle, State, Transition

__all__ = ["ContainerStats", "InstanceStats", "Lifecycle", "RestartPolicy", "STRATEGIES", "State",
           "TRANSITIONS", "Transition", "WasmContainer", "make_strategy"]
