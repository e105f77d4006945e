"""The lifecycle of a WASM container as an explicit state machine.

    created → loaded → instantiated → running ⇄ suspended
       any live state → error → loaded (restart)        any state → terminated

An illegal move raises `IllegalTransition` instead of silently leaving the container in a
state nobody planned for. Every transition is recorded with its time and reason, so
"why is this container in error?" has an answer.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..errors import IllegalTransition


class State(str, enum.Enum):
    CREATED = "created"
    LOADED = "loaded"
    INSTANTIATED = "instantiated"
    RUNNING = "running"
    SUSPENDED = "suspended"
    ERROR = "error"
    TERMINATED = "terminated"

    def __str__(self) -> str:
        return self.value


_T = State
TRANSITIONS: dict[State, frozenset[State]] = {
    _T.CREATED: frozenset({_T.LOADED, _T.ERROR, _T.TERMINATED}),
    _T.LOADED: frozenset({_T.INSTANTIATED, _T.ERROR, _T.TERMINATED}),
    _T.INSTANTIATED: frozenset({_T.RUNNING, _T.ERROR, _T.TERMINATED}),
    _T.RUNNING: frozenset({_T.SUSPENDED, _T.ERROR, _T.TERMINATED}),
    _T.SUSPENDED: frozenset({_T.RUNNING, _T.ERROR, _T.TERMINATED}),
    _T.ERROR: frozenset({_T.LOADED, _T.TERMINATED}),
    _T.TERMINATED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Transition:
    at: float
    source: State
    target: State
    reason: str


class Lifecycle:
    """Thread-safe current state plus a bounded history of transitions."""

    def __init__(self, owner: str, on_change: Callable[[Transition], None] | None = None,
                 history: int = 100):
        self.owner = owner
        self._state = State.CREATED
        self._lock = threading.Lock()
        self._history: deque[Transition] = deque(maxlen=history)
        self._on_change = on_change

    @property
    def state(self) -> State:
        return self._state

    @property
    def history(self) -> list[Transition]:
        return list(self._history)

    def can(self, target: State) -> bool:
        return target in TRANSITIONS[self._state]

    def move(self, target: State, reason: str = "") -> Transition:
        with self._lock:
            source = self._state
            if target not in TRANSITIONS[source]:
                allowed = ", ".join(sorted(s.value for s in TRANSITIONS[source])) or "nothing"
                raise IllegalTransition(f"cannot go from {source} to {target} (allowed: {allowed})",
                                        module=self.owner)
            self._state = target
            tr = Transition(time.time(), source, target, reason)
            self._history.append(tr)
        if self._on_change is not None:
            self._on_change(tr)
        return tr
