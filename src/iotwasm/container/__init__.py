"""Container layer: WasmContainer (lifecycle, instances on demand, load balancing, stats,
restarts) and the node-wide instance budget."""

from .balancing import STRATEGIES, make_strategy
from .container import WasmContainer
from .lifecycle import TRANSITIONS, Lifecycle, State, Transition
from .policy import RestartPolicy
from .scaling import BudgetSpent, InstanceBudget, Scaling
from .stats import ContainerStats, InstanceStats, ScalingStats

__all__ = ["STRATEGIES", "TRANSITIONS", "BudgetSpent", "ContainerStats", "InstanceBudget", "InstanceStats",
           "Lifecycle", "RestartPolicy", "Scaling", "ScalingStats", "State", "Transition", "WasmContainer",
           "make_strategy"]
