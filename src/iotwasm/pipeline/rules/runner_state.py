"""What a rule is to the runner and what it keeps of one, declared once for `RuleRunner` and
its message path.

Split from `runner` (`RuleRunner`: life, rule changes, views); `runner` re-exports
`RuleDefinition`. Here: a rule as it is given (`RuleDefinition`), its actions and alert
state while it runs (`RuleRuntime`), and the digest that ties saved alert state to its
policy (`policy_digest`). `RunnerWork` (`runner_work`) is a mixin of `RuleRunner`: the
state lives on the runner (set in `RuleRunner.__init__`), and `RunnerState` names what the
two share so that each file type-checks on its own; it adds nothing at run time.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

from ...errors import StorageError
from ...supervise import Repeats, StorageHold
from ..worker import Worker
from .actions import Action, ActionRunner
from .alerts import AlertDispatcher, AlertPolicy, AlertTracker
from .engine import RuleEngine, RuleSpec


@dataclass
class RuleDefinition:
    spec: RuleSpec
    actions: list[Action] = field(default_factory=list)
    alert: AlertPolicy | None = None
    tags: list[str] = field(default_factory=list)
    enabled: bool = True


def policy_digest(policy: AlertPolicy) -> str:
    """What an alert's saved tracker state is valid for: a changed policy starts afresh."""
    return json.dumps(policy.__dict__, sort_keys=True)


class RuleRuntime:
    def __init__(self, definition: RuleDefinition):
        self.definition = definition
        self.actions: list[ActionRunner] = []
        self.tracker: AlertTracker | None = None
        self.dispatcher: AlertDispatcher | None = None


class RunnerState:
    """Annotations of `RuleRunner`'s state that its parts share (see the module's doc)."""

    engine: RuleEngine
    batch: int
    checkpoint_s: float
    tick_s: float
    rules: dict[str, RuleRuntime]
    _deployed: asyncio.Event | None
    _queue: asyncio.Queue
    action_errors: int
    _busy: bool
    storage: StorageHold
    checkpoint_error: StorageError | None
    _faults: Repeats
    _lock: threading.Lock
    _worker: Worker
    _engine_stats: dict[str, dict]
