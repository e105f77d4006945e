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
import math
import random
import threading
from operator import itemgetter
from typing import Callable, Protocol, Sequence

from ..errors import SANDBOX_FAULTS, ContainerUnavailable
from ..message import BatchResult, DeadLetter, Message, Output
from ..messaging.topics import matches


class _Step(Protocol):
    name: str
    acl: object

    def process(self, messages: Sequence[Message]) -> BatchResult: ...


class Match:
    """Messages the canary always gets: topic filter and/or a top-level JSON field's value.

    Fast paths (a split sees every message of its step): topic decisions are memoised per
    topic (devices repeat theirs); a payload is parsed only when the field's name — and, for a
    string or boolean value, the value — appear in it as written, so a payload that spells
    them with escapes (``"f\\u0077"``) does not match."""

    def __init__(self, topic: str | None = None, field: str | None = None, equals: object = None):
        self.topic, self.field, self.equals = topic, field, equals
        self._memo: dict[str, bool] = {}
        self._needles: tuple[bytes, ...] = ()
        if field is not None:
            needles = [json.dumps(field).encode()]
            if isinstance(equals, (str, bool)) or equals is None:
                needles.append(json.dumps(equals).encode())
            self._needles = tuple(needles)

    def _topic(self, topic: str) -> bool:
        hit = self._memo.get(topic)
        if hit is None:
            if len(self._memo) > 50_000:
                self._memo.clear()
            hit = self._memo[topic] = self.topic is None or matches(self.topic, topic)
        return hit

    def __call__(self, m: Message) -> bool:
        if self.topic is not None and not self._topic(m.topic):
            return False
        if self.field is not None:
            payload = m.payload
            for needle in self._needles:
                if needle not in payload:
                    return False
            try:
                doc = json.loads(payload)
            except ValueError:
                return False
            if not isinstance(doc, dict) or self.field not in doc:
                return False
            v = doc[self.field]   # true is not 1 here, nor 1 true
            if v != self.equals or (type(v) is bool) != (type(self.equals) is bool):
                return False
        return self.topic is not None or self.field is not None

    def pick(self, messages: Sequence[Message]) -> list[int]:
        """Indices of the matching messages."""
        if self.field is not None:
            return [i for i, m in enumerate(messages) if self(m)]
        get, out = self._memo.get, []
        for i, m in enumerate(messages):
            hit = get(m.topic)
            if hit is None:
                hit = self._topic(m.topic)
            if hit:
                out.append(i)
        return out


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
        #: messages to pass over before the next weighted pick (carried across batches)
        self._gap: int | None = None
        self._lock = threading.Lock()

    @property
    def acl(self) -> _BothACL:
        key = (self.stable.acl, self.canary.acl)
        if self._acl is None or self._acl_key is None or \
                self._acl_key[0] is not key[0] or self._acl_key[1] is not key[1]:
            self._acl_key, self._acl = key, _BothACL(*key)
        return self._acl

    def pick(self, messages: Sequence[Message]) -> list[int]:
        """Indices of the messages for the canary, ascending: those that match, and each of
        the others with probability `weight`. The draws are a Bernoulli process over the
        step's message stream walked by geometric gaps — one draw per canary message rather
        than one per message — and the gap carries over from batch to batch, so a seeded
        generator picks the same messages every run however the stream is cut into batches
        (on a route of one lane; lanes running at once take turns on the generator)."""
        n, w = len(messages), self.weight
        picked = self.match.pick(messages) if self.match is not None else []
        if w <= 0:
            return picked
        if w >= 1:
            return list(range(n))
        rand, log1w = self.rng.random, math.log1p(-w)
        drawn = []
        with self._lock:
            i = self._gap if self._gap is not None else int(math.log(1.0 - rand()) / log1w)
            while i < n:
                drawn.append(i)
                i += 1 + int(math.log(1.0 - rand()) / log1w)
            self._gap = i - n
        return sorted(set(picked).union(drawn)) if picked else drawn

    def _count(self, name: str, n: int) -> None:
        with self._lock:   # lanes count from their own threads
            self.stats[name] += n

    def process(self, messages: Sequence[Message]) -> BatchResult:
        canary_idx = self.pick(messages)
        if not canary_idx:   # the common case of a small canary share: no copies, no merge
            result = self.stable.process(messages)
            self._count(self.stable.name, len(messages))
            return result
        chosen = set(canary_idx)
        stable_idx = [i for i in range(len(messages)) if i not in chosen]
        result = BatchResult()
        # the stable share first: if the stable deployment is unavailable, nothing has run yet
        # when the route holds the batch and tries the step again
        if stable_idx:
            merge_share(result, self.stable.process([messages[i] for i in stable_idx]), stable_idx)
            self._count(self.stable.name, len(stable_idx))
        if canary_idx:
            share = [messages[i] for i in canary_idx]
            try:
                part = self.canary.process(share)
                self._count(self.canary.name, len(canary_idx))
                if self.verdict == "watching":
                    with self._lock:
                        self._judge(part, len(share))
            except ContainerUnavailable:
                part = self.stable.process(share)
                self._count("fallback", len(canary_idx))
            merge_share(result, part, canary_idx)
        if canary_idx and stable_idx:
            result.outputs.sort(key=itemgetter(0))   # stable: each input's outputs keep their order
        return result

    def _judge(self, part: BatchResult, n: int) -> None:
        """The health gate's count (under the lock: lanes count from their own threads)."""
        messages, max_rate = self.gate  # type: ignore[misc]
        if self.verdict != "watching":
            return
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


def merge_share(into: BatchResult, part: BatchResult, index: list[int]) -> None:
    """Add a share's result, its indices mapped back to the whole batch's (one tuple built
    per output, without the named tuple's constructor: this runs per message)."""
    new = tuple.__new__
    into.outputs.extend([new(Output, (index[i], t, p)) for i, t, p in part.outputs])
    into.dead_letters.extend(DeadLetter(index[d.index], d.message, d.error) for d in part.dead_letters)
    into.fuel_used += part.fuel_used
