"""The rollouts a pass advances: started, stepped, stored.

Split from `controller` (`Controller`: start, stop, the loop and its passes).
`ControllerRollouts` is a mixin of `Controller`: each pass starts a rollout for a deployment
whose new revision replaces a running version (when the deployment asks for one), steps
those in progress on the health the nodes report (`rollout.step`), and stores each record
that changed with compare-and-set; the record then decides which version each node is
assigned. It stands alone as the part of a pass that stages a change rather than placing it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter

from .controller_state import ControllerState
from .model import FleetDeployment, NodeInfo
from .rollout import Rollout, start, step
from .scheduler import Plan

log = logging.getLogger("iotwasm.fleet.controller")


class ControllerRollouts(ControllerState):
    """The rollouts of `Controller` (a mixin: the state lives on the controller)."""

    @property
    def rolling(self) -> bool:
        """Whether a rollout is progressing (it needs passes as health arrives)."""
        return any(r.state == "progressing" for r, _ in self._rollouts.values())

    async def _advance_rollouts(self, deployments: dict[str, tuple[FleetDeployment, int]], docs: dict[str, dict],
                                assignments: dict[str, tuple[dict, int]], plan: Plan,
                                live: dict[str, NodeInfo]) -> dict[str, Rollout]:
        """Start a rollout for each deployment whose new revision replaces a running version
        (when it asks for one), step those in progress, store what changed; returns the record
        that decides each deployment's version per node."""
        now = time.time()
        writes: list[tuple[Rollout, int]] = []
        current: dict[str, Rollout] = {}
        for name, (fd, rev) in deployments.items():
            r, krev = self._rollouts.get(name, (None, 0))
            changed = False
            if r is None or r.revision != rev:
                if r is None and fd.rollout is None:
                    continue                     # nothing staged, nothing to supersede
                target = docs[name]
                superseded = r is not None and r.active
                stable = r.stable if r is not None and superseded else (
                    self._running_doc(name, assignments) if fd.rollout is not None else None)
                if r is not None and superseded:
                    r.finish("superseded", f"revision {rev} replaced revision {r.revision}", now)
                if fd.rollout is None or stable is None or stable == target:
                    if r is not None and superseded:
                        writes.append((r, krev))
                    continue
                note = f" (supersedes the rollout of revision {r.revision})" if r is not None and superseded else ""
                r, changed = start(name, rev, target, stable, now), True
                if note:
                    r.note(r.events[-1][1] + note, now)
            elif fd.rollout is None:
                continue
            seen = len(r.events)
            bound = [n for n, names in plan.assignments.items() if name in names]
            health = {n: live[n].health.get(name, {}) for n in bound if n in live}
            changed = step(r, fd.rollout, bound, health, now) or changed
            for _, text in r.events[seen:]:
                (log.warning if r.state == "rolled-back" else log.info)("rollout of %s: %s", name, text)
            if changed:
                writes.append((r, krev))
            current[name] = r
        gone = [name for name in self._rollouts if name not in deployments]
        for name in gone:                    # the deployment was deleted: so is its rollout
            self._rollouts.pop(name, None)
        results = await asyncio.gather(*(self._write_rollout(r, krev) for r, krev in writes),
                                       *(self._fleet.delete_rollout(n) for n in gone), return_exceptions=True)
        for (r, _), res in zip(writes, results):
            if isinstance(res, BaseException):
                # an operator paused or aborted it meanwhile: what is stored decides this pass
                log.debug("rollout of %s not stored: %s", r.deployment, res)
                stored = self._rollouts.get(r.deployment)
                if stored is not None and stored[0].revision == deployments[r.deployment][1]:
                    current[r.deployment] = stored[0]
                else:
                    current.pop(r.deployment, None)
                self._dirty.set()
        return current

    async def _write_rollout(self, r: Rollout, revision: int) -> None:
        await self._put(self._rollouts, r.deployment, r, revision,
                        lambda _, rec, rev: self._fleet.put_rollout(rec, rev), self._fleet.rollout)

    @staticmethod
    def _running_doc(name: str, assignments: dict[str, tuple[dict, int]]) -> dict | None:
        """The version of `name` most nodes are assigned now (what a new revision replaces)."""
        by_text: dict[str, dict] = {}
        counts: Counter = Counter()
        for a, _ in assignments.values():
            d = a.get("deployments", {}).get(name)
            if d is not None:
                text = json.dumps(d, sort_keys=True)
                by_text[text] = d
                counts[text] += 1
        return by_text[counts.most_common(1)[0][0]] if counts else None
