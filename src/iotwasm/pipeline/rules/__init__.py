"""Streaming rules: a SQL dialect over message streams, with windows, alerts and WASM functions.

See docs/rules.md. `RuleEngine` is the synchronous core (compile, evaluate, windows,
checkpoints); `RuleRunner` wires it to a bus and to actions and alerts.
"""

from .engine import (CompiledRule, Emission, EventTime, RuleCounters, RuleEngine, RuleSpec,
                     RuleStateStore)
from .functions import EvalError
from .alerts import AlertPolicy
from .parser import RuleSyntaxError, parse
from .runner import Action, RuleDefinition, RuleRunner
from .udf import WasmFunction

__all__ = ["Action", "AlertPolicy", "RuleDefinition", "RuleRunner", "CompiledRule", "Emission", "EvalError", "EventTime", "RuleCounters", "RuleEngine",
           "RuleSpec", "RuleStateStore", "RuleSyntaxError", "WasmFunction", "parse"]
