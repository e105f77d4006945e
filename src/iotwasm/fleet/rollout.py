"""Staged rollouts of a new fleet-deployment version: canary, gate, waves, automatic rollback.

A rollout is a record in the ``iotwasm-rollouts`` KV bucket (key = deployment name) that the
controller advances one step per pass. It is kept apart from the desired state on purpose: the
fleet deployment says *what* should run, the rollout says *which nodes run it yet*. Every node
bound to the deployment runs either the `stable` version (the one being replaced) or, once it
is in `updated`, the `target`. The step function below is pure (record, rollout spec, bound
nodes, their health, the time → the record changed in place), so its rules can be tested
without NATS and every controller (a new leader after a failover, too) continues a rollout from
the record alone.

Stages: `canary` nodes first, then `waves` waves over the rest (cumulative sizes from
`RolloutSpec.stage_sizes`). A stage passes when every one of its nodes serves the target
(ready) and the gate has held for `gate.observe` with at least `gate.minMessages` messages.
A node fails the gate when its artifact is refused, the version does not start or is rolled
back by the node's own update gate, or its trap or error rate is over the limit; it goes back
to the stable version, and another node takes its place in the stage. More than
`maxFailedNodes` failures roll every updated node back. A stage that has not passed within
`stageTimeout` rolls back too, with the reason (which node is not serving, or how little traffic
was seen), so a rollout can never hang; a newer version of the deployment supersedes a rollout
in progress or paused.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from ..errors import IotwasmError
from .model import RolloutSpec

ACTIVE = ("progressing", "paused")
FINISHED = ("succeeded", "rolled-back", "aborted", "superseded")
#: judge a node's rates during observation once it has handled this many messages
JUDGE_AFTER = 10
MAX_EVENTS = 30


class RolloutStateError(IotwasmError, ValueError):
    """An operator action that does not apply to the rollout's state (resume what is not paused)."""

    kind = "conflict"


class NoRollout(IotwasmError):
    """The deployment has no rollout record."""

    kind = "not_found"


@dataclass
class Rollout:
    deployment: str
    revision: int                 # the fleet deployment revision being rolled out
    target: dict                  # its Deployment document
    stable: dict                  # the Deployment document it replaces
    state: str = "progressing"
    stage: int = 0                # index into RolloutSpec.stage_sizes
    stages: int = 1
    updated: list[str] = field(default_factory=list)      # nodes assigned the target
    failed: dict[str, str] = field(default_factory=dict)  # node → why it failed the gate
    baseline: dict[str, dict] = field(default_factory=dict)  # node → counters when it joined
    started: float = field(default_factory=time.time)
    stage_started: float = field(default_factory=time.time)
    observing_since: float | None = None
    finished: float | None = None
    reason: str = ""
    events: list[list] = field(default_factory=list)     # [wall time, text], newest last

    # -- serialisation ---------------------------------------------------------------------
    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Rollout":
        d = json.loads(data)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    # -- views -----------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def target_digest(self) -> str:
        return self.target["spec"]["module"]

    def doc_for(self, node_id: str) -> dict:
        """The Deployment document `node_id` should run while this record is current."""
        if self.state == "succeeded" or (self.active and node_id in self.updated):
            return self.target
        return self.stable

    def stage_name(self, spec: RolloutSpec | None = None, total: int = 0) -> str:
        canary = spec is None or spec.canary_nodes(max(total, 1)) > 0
        if canary and self.stage == 0:
            return "canary"
        return f"wave {self.stage + (0 if canary else 1)}"

    def note(self, text: str, now: float | None = None) -> None:
        self.events.append([round(now if now is not None else time.time(), 3), text])
        del self.events[:-MAX_EVENTS]

    def finish(self, state: str, reason: str, now: float) -> None:
        self.state, self.reason, self.finished = state, reason, now
        if state != "succeeded":
            self.updated = []      # every node goes back to the stable version
        self.observing_since = None
        self.note(f"{state}: {reason}", now)


def control(r: Rollout, action: str, now: float | None = None, who: str = "an operator") -> None:
    """An operator's `pause`, `resume` or `abort` (the controller acts on it next pass). Raises
    RolloutStateError, saying why, when the rollout is not in a state the action applies to."""
    now = time.time() if now is None else now
    if action == "pause":
        if r.state != "progressing":
            raise RolloutStateError(f"rollout of {r.deployment} is {r.state}; only a progressing one can be paused")
        r.state = "paused"
        r.note(f"paused by {who} at {r.stage_name()}", now)
    elif action == "resume":
        if r.state != "paused":
            raise RolloutStateError(f"rollout of {r.deployment} is {r.state}; only a paused one can be resumed")
        r.state, r.stage_started, r.observing_since = "progressing", now, None   # the stage clock restarts
        r.note(f"resumed by {who}", now)
    elif action == "abort":
        if not r.active:
            raise RolloutStateError(f"rollout of {r.deployment} is already {r.state}")
        r.finish("aborted", f"aborted by {who}; every node runs the previous version", now)
    else:
        raise RolloutStateError(f"unknown rollout action {action!r} (pause, resume, abort)")


def start(name: str, revision: int, target: dict, stable: dict, now: float | None = None) -> Rollout:
    now = time.time() if now is None else now
    r = Rollout(name, revision, target, stable, started=now, stage_started=now)
    r.note(f"rolling out revision {revision} ({target['spec']['module'][:19]}) over "
           f"{stable['spec']['module'][:19]}", now)
    return r


def counters(h: dict) -> dict:
    return {k: h.get(k, 0) for k in ("messages", "dead_letters", "traps")}


def step(r: Rollout, spec: RolloutSpec, bound: list[str], health: dict[str, dict], now: float) -> bool:
    """Advance `r` by what `health` (node → its health entry for this deployment) shows; `bound`
    are the nodes the deployment is placed on. Returns whether the record changed."""
    if r.state != "progressing":
        return False
    before = r.to_json()
    bound = sorted(bound)
    for n in [n for n in r.updated if n not in bound]:    # moved away or dead: out of the rollout
        r.updated.remove(n)
        r.baseline.pop(n, None)
        r.note(f"{n} left the rollout (no longer bound)", now)
    sizes = spec.stage_sizes(len(bound))
    r.stages = len(sizes)
    r.stage = min(r.stage, len(sizes) - 1)
    label = r.stage_name(spec, len(bound))
    # fill the stage (a node that failed is replaced by the next one)
    eligible = [n for n in bound if n not in r.updated and n not in r.failed]
    added = []
    while len(r.updated) < sizes[r.stage] and eligible:
        n = eligible.pop(0)
        r.updated.append(n)
        r.baseline[n] = {"rollbacks": (health.get(n) or {}).get("rollbacks", 0)}
        added.append(n)
    if added:
        r.observing_since = None
        r.note(f"{label}: new version to {', '.join(added)}", now)

    target = r.target_digest
    gate = spec.gate
    waiting: list[str] = []
    for n in list(r.updated):
        h = health.get(n) or {}
        base = r.baseline.setdefault(n, {"rollbacks": h.get("rollbacks", 0)})
        why = _failure(h, base, target, gate)
        if why:
            r.updated.remove(n)
            r.baseline.pop(n, None)
            r.failed[n] = why
            r.observing_since = None
            r.note(f"{label}: {n} failed the gate: {why}", now)
            continue
        if h.get("digest") != target or h.get("state") != "running":
            waiting.append(_not_serving(n, h, target))
            continue
        if "messages" not in base:          # serving the target from now on: count from here
            base.update(counters(h), since=now)
    if len(r.failed) > spec.max_failed_nodes:
        first = next(iter(r.failed.items()))
        r.finish("rolled-back", f"gate failed on {len(r.failed)} node(s), more than maxFailedNodes "
                                f"{spec.max_failed_nodes}: {first[0]}: {first[1]}", now)
        return True
    if not waiting and r.updated:
        if r.observing_since is None:
            r.observing_since = now
            r.note(f"{label}: serving on {len(r.updated)} node(s); observing for {gate.observe}", now)
        seen = sum(health.get(n, {}).get("messages", 0) - r.baseline[n].get("messages", 0) for n in r.updated)
        if now - r.observing_since >= gate.observe_s and seen >= gate.min_messages:
            failing = [(n, w) for n in r.updated
                       if (w := _rates(health.get(n) or {}, r.baseline[n], gate, final=True))]
            if failing:
                for n, w in failing:
                    r.updated.remove(n)
                    r.failed[n] = w
                    r.note(f"{label}: {n} failed the gate: {w}", now)
                r.observing_since = None
                if len(r.failed) > spec.max_failed_nodes:
                    r.finish("rolled-back", f"gate failed on {len(r.failed)} node(s), more than "
                                            f"maxFailedNodes {spec.max_failed_nodes}: {failing[0][0]}: "
                                            f"{failing[0][1]}", now)
                return True
            r.note(f"{label} passed the gate ({seen} message(s) on {len(r.updated)} node(s))", now)
            if r.stage + 1 >= len(sizes) and len(r.updated) >= len([n for n in bound if n not in r.failed]):
                r.finish("succeeded", f"revision {r.revision} runs on {len(r.updated)} node(s)"
                         + (f"; {len(r.failed)} node(s) failed the gate and kept the old version"
                            if r.failed else ""), now)
                return True
            r.stage = min(r.stage + 1, len(sizes) - 1)
            r.stage_started, r.observing_since = now, None
            return True
    if now - r.stage_started > spec.stage_timeout_s:
        if waiting:
            detail = "; ".join(waiting[:3]) + (f"; and {len(waiting) - 3} more" if len(waiting) > 3 else "")
        elif not r.updated:
            detail = "no node to put the new version on"
        else:
            seen = sum(health.get(n, {}).get("messages", 0) - r.baseline[n].get("messages", 0)
                       for n in r.updated)
            detail = f"{seen} of the {gate.min_messages} message(s) the gate needs were seen"
        r.finish("rolled-back", f"{label} timed out after {spec.stage_timeout}: {detail}", now)
    return r.to_json() != before


def _failure(h: dict, base: dict, target: str, gate) -> str | None:
    """Why a node that was given the target has certainly failed, or None."""
    if h.get("assigned") != target:
        return None                                    # not applied yet
    if h.get("problem"):
        return h["problem"]
    if h.get("rollbacks", 0) > base.get("rollbacks", 0):
        return f"the node's update gate rolled it back: {h.get('rollback_reason') or 'no reason given'}"
    rates = _rates(h, base, gate, final=False) if h.get("digest") == target and "messages" in base else None
    if rates:            # the clearer reason when the version trapped its way into an error state
        return rates
    if h.get("digest") == target and h.get("state") in ("error", "terminated"):
        return f"the new version is {h['state']}: {h.get('error') or 'no error recorded'}"
    return None


def _rates(h: dict, base: dict, gate, final: bool) -> str | None:
    """Trap and error rates since the node started serving the target, over the gate's limits.
    Judged once the node has handled JUDGE_AFTER messages (or at the end of observation); a
    limit of 0 fails on the first trap or error."""
    n = h.get("messages", 0) - base.get("messages", 0)
    if n <= 0:
        return None
    traps = h.get("traps", 0) - base.get("traps", 0)
    errors = h.get("dead_letters", 0) - base.get("dead_letters", 0)
    for what, count, limit in (("trap", traps, gate.max_trap_rate), ("error", errors, gate.max_error_rate)):
        if count <= 0:
            continue
        if (limit == 0 or final or n >= JUDGE_AFTER) and count / n > limit:
            return f"{what} rate {count / n:.2f} > {limit:.2f} ({count} of {n} messages)"
    return None


def _not_serving(n: str, h: dict, target: str) -> str:
    if not h:
        return f"{n} has not reported the deployment"
    if h.get("assigned") != target:
        return f"{n} has not applied the new version yet"
    if h.get("digest") != target:
        return f"{n} still serves {str(h.get('digest'))[:19]}" + (f" ({h['error']})" if h.get("error") else "")
    return f"{n}: the new version is {h.get('state')}" + (f" ({h['error']})" if h.get("error") else "")
