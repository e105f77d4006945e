"""The state `Controller` keeps, declared once for the parts that share it.

Split from `controller` (`Controller`: start, stop, the loop and its passes), whose class is
made of these parts. `ControllerWatchers` and `ControllerRollouts` are mixins of `Controller`:
the state lives on the controller (set in `Controller.__init__`), and each part reads and
writes it. `ControllerState` names what they share, so that each file type-checks on its own,
and holds what both the passes and the rollouts write through: the store (`_fleet`) and the
compare-and-set that keeps a watcher's cache in step with a write (`_put`).
"""

from __future__ import annotations

import asyncio

from .model import FleetDeployment, NodeInfo
from .rollout import Rollout
from .store import ConflictError, FleetStore


class ControllerState:
    """Annotations of `Controller`'s state that its parts share (see the module's doc)."""

    dead_after_s: float
    node_ttl_s: float
    blind_after_s: float
    store: FleetStore | None

    _nodes: dict[str, NodeInfo]
    _seen: dict[str, tuple[int, float]]
    _deployments: dict[str, tuple[FleetDeployment, int]]
    _assignments: dict[str, tuple[dict, int]]
    _rollouts: dict[str, tuple[Rollout, int]]
    _ready: dict[str, asyncio.Event]
    _dirty: asyncio.Event
    _last_heard: float
    _blind_logged: bool
    _watchers: list[asyncio.Task]

    @property
    def _fleet(self) -> FleetStore:
        """The store, which the work after start() may take as connected."""
        if self.store is None:
            raise RuntimeError("the fleet store is not connected")
        return self.store

    @staticmethod
    async def _put(cache: dict, key: str, value, revision: int, put, read) -> None:
        """Compare-and-set `value` and keep `cache` (fed by a watcher) in step: the new revision
        on success; on a conflict, what is stored now (then ConflictError goes on up)."""
        try:
            new = await put(key, value, revision)
        except ConflictError:
            got = await read(key)
            if got is not None:
                cache[key] = got
            raise
        if cache.get(key, (None, 0))[1] < new:
            cache[key] = (value, new)
