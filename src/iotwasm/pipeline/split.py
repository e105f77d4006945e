"""Traffic split: one step of a route shared between a stable and a canary deployment.

A route step names its stable deployment; a split sends part of that step's messages to a
second deployment instead — a new revision tried on live traffic inside one node:

- by weight: each message goes to the canary with probability ``weight`` percent, drawn from
  a random generator of the split's own (seeded: a seed gives the same choices every run);
- by match: messages whose topic matches a filter, or whose JSON payload has a field equal to
  a value, always go to the canary (e.g. the test devices of one site).

To the route the split is one step (`Step`): it partitions each batch, calls each deployment
with its share on the lane's worker thread, and hands back one result with the outputs in
input order, so per-device ordering holds within each deployment's share. What a message may
carry in and out is what *both* deployments are granted (a canary never widens a route).

A canary that is unavailable (stopped, crash-looping) does not hold the route: its share goes
to the stable deployment and is counted as `fallback`. Each deployment keeps its own metrics
(calls, traps, latency), and `stats` counts the messages each one was given, so the canary is
judged on its own numbers; promoting it (or rolling it back) is a route edit — set the weight
to 100 or remove the split — and the route's hand-over moves queued messages losslessly.

With a health gate (`gate=(messages, max_trap_rate)`) the split rolls the canary back by
itself: once the canary has handled `messages` messages — or sooner, when the allowed number
of failures is certainly exceeded — a share of traps and limit hits above `max_trap_rate`
sends every message to the stable deployment from then on (until the route is applied again)
and reports it through `on_event`; below it, the gate reports the canary healthy.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from ..errors import SANDBOX_FAULTS, ContainerUnavailable
from ..message import BatchResult, DeadLetter, Message, Output
from ..messaging.topics import matches


class _Step(Protocol):
    name: str
    acl: object

    def process(self, messages: Sequence[Message]) -> BatchResult: ...


@dataclass(frozen=True)
class Match:
    """Messages the canary always gets: topic filter and/or a top-level JSON field's value."""

    topic: str | None = None
    field: str | None = None
    equals: object = None

    def __call__(self, m: Message) -> bool:
        if self.topic is not None and not matches(self.topic, m.topic):
            return False
        if self.field is not None:
            try:
                doc = json.loads(m.payload)
            except ValueError:
                return False
            if not isinstance(doc, dict) or self.field not in doc or doc[self.field] != self.equals:
                return False
        return self.topic is not None or self.field is not None


class _BothACL:
    """Grants of two deployments taken together: allowed only where both allow."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        self.subscribe = a.subscribe
        self.publish = a.publish
        self.stats = a.stats

    def can_subscribe(self, topic: str) -> bool:
        return self.a.can_subscribe(topic) and self.b.can_subscribe(topic)

    def can_publish(self, topic: str) -> bool:
        return self.a.can_publish(topic) and self.b.can_publish(topic)


class SplitStep:
    """A route step whose messages are shared between `stable` and `canary`."""

    def __init__(self, stable: _Step, canary: _Step, *, weight: float = 0.0,
                 match: Match | None = None, rng: random.Random | None = None,
                 gate: tuple[int, float] | None = None,
                 on_event: Callable[[str, str], None] | None = None):
        if not 0 <= weight <= 100:
            raise ValueError(f"split weight {weight} is not a percentage")
        self.stable, self.canary = stable, canary
        self.name = stable.name
        self.weight = weight / 100
        self.match = match
        self.rng = rng or random.Random()
        self._acl_key: tuple | None = None
        self._acl: _BothACL | None = None
        #: messages given to each deployment, and the canary's share that went to the stable
        #: one because the canary was unavailable
        self.stats = {stable.name: 0, canary.name: 0, "fallback": 0}
        self.gate = gate
        self.on_event = on_event or (lambda kind, msg: None)
        #: "watching", "healthy" or "rolled-back" with a gate; None without
        self.verdict: str | None = "watching" if gate else None
        self.reason: str | None = None
        self._seen = self._failed = 0

    @property
    def acl(self) -> _BothACL:
        key = (self.stable.acl, self.canary.acl)
        if self._acl is None or self._acl_key is None or \
                self._acl_key[0] is not key[0] or self._acl_key[1] is not key[1]:
            self._acl_key, self._acl = key, _BothACL(*key)
        return self._acl

    def choose(self, m: Message) -> bool:
        """True: this message goes to the canary."""
        if self.match is not None and self.match(m):
            return True
        return self.weight > 0 and self.rng.random() < self.weight

    def process(self, messages: Sequence[Message]) -> BatchResult:
        to_canary = [self.choose(m) for m in messages]
        stable_idx = [i for i, c in enumerate(to_canary) if not c]
        canary_idx = [i for i, c in enumerate(to_canary) if c]
        result = BatchResult()
        # the stable share first: if the stable deployment is unavailable, nothing has run yet
        # when the route holds the batch and tries the step again
        if stable_idx:
            _merge(result, self.stable.process([messages[i] for i in stable_idx]), stable_idx)
            self.stats[self.stable.name] += len(stable_idx)
        if canary_idx:
            share = [messages[i] for i in canary_idx]
            try:
                part = self.canary.process(share)
                self.stats[self.canary.name] += len(canary_idx)
                if self.verdict == "watching":
                    self._judge(part, len(share))
            except ContainerUnavailable:
                part = self.stable.process(share)
                self.stats["fallback"] += len(canary_idx)
            _merge(result, part, canary_idx)
        if canary_idx and stable_idx:
            result.outputs.sort(key=lambda o: o.index)   # stable: each input's outputs keep their order
        return result

    def _judge(self, part: BatchResult, n: int) -> None:
        """The health gate's count; runs on the lane's worker thread, one batch at a time per
        lane — several lanes may count at once, and a lost update only delays the verdict."""
        messages, max_rate = self.gate  # type: ignore[misc]
        self._seen += n
        self._failed += sum(1 for d in part.dead_letters if isinstance(d.error, SANDBOX_FAULTS))
        doomed = self._failed > max_rate * messages
        if self._seen < messages and not doomed:
            return
        rate = self._failed / self._seen
        if doomed or rate > max_rate:
            self.weight, self.match = 0.0, None
            self.verdict = "rolled-back"
            self.reason = (f"canary {self.canary.name} of step {self.name} failed its health gate: "
                           f"{self._failed} of {self._seen} messages trapped or hit limits "
                           f"({rate:.0%} > {max_rate:.0%}); all traffic back to {self.stable.name}")
            self.on_event("canary-rolled-back", self.reason)
        else:
            self.verdict = "healthy"
            self.reason = (f"canary {self.canary.name} of step {self.name} passed its health gate "
                           f"({self._failed} of {self._seen} failed)")
            self.on_event("canary-healthy", self.reason)

    def describe(self) -> dict:
        out = {"stable": self.stable.name, "canary": self.canary.name,
               "weight": round(self.weight * 100, 3), "messages": dict(self.stats)}
        if self.verdict is not None:
            out["gate"] = {"verdict": self.verdict, "seen": self._seen, "failed": self._failed,
                           "reason": self.reason}
        return out


def _merge(into: BatchResult, part: BatchResult, index: list[int]) -> None:
    """Add a share's result, its indices mapped back to the whole batch's."""
    into.outputs.extend(Output(index[o.index], o.topic, o.payload) for o in part.outputs)
    into.dead_letters.extend(DeadLetter(index[d.index], d.message, d.error) for d in part.dead_letters)
    into.fuel_used += part.fuel_used
