"""Aggregates of the rule language and the running state of one window group.

Each aggregate function is a small accumulator class whose state is a JSON-able list, so open
windows can be checkpointed to SQLite and restored after a restart. An accumulator folds in
one value at a time (`add`), gives its value so far (`result`), and takes in another
accumulator of the same call (`merge`) when two session windows become one.

A `Group` is one open window of one GROUP BY key: an accumulator per aggregate call of the
rule and the last message row (fields that are not aggregated take its values).
`Aggregates` makes, merges and checkpoints the groups of one rule.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .functions import EvalError

Fn = Callable[[dict], Any]


class Acc(abc.ABC):
    """An aggregate's running state; `state` is a JSON-able list (checkpointed to SQLite).
    Each aggregate function subclasses it with its own `add`, `merge` and `result`."""

    __slots__ = ("state",)
    nargs = 1

    def __init__(self, state: list | None = None, param: Any = None):
        self.state = state if state is not None else self.empty()

    @staticmethod
    def empty() -> list:
        return []

    @abc.abstractmethod
    def add(self, v: Any, ts: int) -> None:
        """Fold in one value (with its event time)."""

    @abc.abstractmethod
    def merge(self, other: Acc) -> None:
        """Fold in another accumulator of the same call, over a stretch of event time that
        does not overlap this one's (two sessions that become one)."""

    @abc.abstractmethod
    def result(self) -> Any:
        """The aggregate's value so far."""


class Count(Acc):
    __slots__ = ()

    @staticmethod
    def empty() -> list:
        return [0]

    def add(self, v: Any, ts: int) -> None:
        if v is not None:
            self.state[0] += 1

    def merge(self, other: Acc) -> None:
        self.state[0] += other.state[0]

    def result(self) -> Any:
        return self.state[0]


class CountStar(Count):
    __slots__ = ()
    nargs = 0

    def add(self, v: Any, ts: int) -> None:
        self.state[0] += 1


class Sum(Acc):
    __slots__ = ()

    @staticmethod
    def empty() -> list:
        return [None]

    def add(self, v: Any, ts: int) -> None:
        if v is not None:
            s = self.state
            try:
                s[0] = v if s[0] is None else s[0] + v
            except TypeError:
                raise EvalError(f"sum: {v!r} is not a number") from None

    def merge(self, other: Acc) -> None:
        self.add(other.state[0], 0)

    def result(self) -> Any:
        return self.state[0]


class Avg(Acc):
    __slots__ = ()

    @staticmethod
    def empty() -> list:
        return [0, 0]

    def add(self, v: Any, ts: int) -> None:
        if v is not None:
            s = self.state
            try:
                s[0] += v
            except TypeError:
                raise EvalError(f"avg: {v!r} is not a number") from None
            s[1] += 1

    def merge(self, other: Acc) -> None:
        self.state[0] += other.state[0]
        self.state[1] += other.state[1]

    def result(self) -> Any:
        return self.state[0] / self.state[1] if self.state[1] else None


class Min(Acc):
    __slots__ = ()

    @staticmethod
    def empty() -> list:
        return [None]

    def add(self, v: Any, ts: int) -> None:
        if v is not None and (self.state[0] is None or v < self.state[0]):
            self.state[0] = v

    def merge(self, other: Acc) -> None:
        self.add(other.state[0], 0)

    def result(self) -> Any:
        return self.state[0]


class Max(Min):
    __slots__ = ()

    def add(self, v: Any, ts: int) -> None:
        if v is not None and (self.state[0] is None or v > self.state[0]):
            self.state[0] = v


class Stddev(Acc):
    """Population standard deviation (Welford's online algorithm: stable, O(1) state; two
    states merge with Chan's formula)."""

    __slots__ = ()

    @staticmethod
    def empty() -> list:
        return [0, 0.0, 0.0]

    def add(self, v: Any, ts: int) -> None:
        if v is None:
            return
        s = self.state
        try:
            s[0] += 1
            d = v - s[1]
            s[1] += d / s[0]
            s[2] += d * (v - s[1])
        except TypeError:
            raise EvalError(f"stddev: {v!r} is not a number") from None

    def merge(self, other: Acc) -> None:
        s, (nb, mb, m2b) = self.state, other.state
        if not nb:
            return
        na, ma, m2a = s
        n = na + nb
        d = mb - ma
        s[0], s[1], s[2] = n, ma + d * nb / n, m2a + m2b + d * d * na * nb / n

    def result(self) -> Any:
        return math.sqrt(self.state[2] / self.state[0]) if self.state[0] else None


class Percentile(Acc):
    """percentile(x, p), p in [0, 1], linear interpolation between closest ranks (as numpy)."""

    __slots__ = ("p",)
    nargs = 2

    def __init__(self, state: list | None = None, param: Any = 0.5):
        super().__init__(state)
        self.p = param

    def add(self, v: Any, ts: int) -> None:
        if v is not None:
            self.state.append(v)

    def merge(self, other: Acc) -> None:
        self.state.extend(other.state)

    def result(self) -> Any:
        vals = sorted(self.state)
        if not vals:
            return None
        k = (len(vals) - 1) * self.p
        lo = math.floor(k)
        hi = min(lo + 1, len(vals) - 1)
        return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


class First(Acc):
    """The value with the earliest event time (the first arrived among equal times)."""

    __slots__ = ()

    @staticmethod
    def empty() -> list:
        return [None, None]

    def add(self, v: Any, ts: int) -> None:
        if self.state[0] is None or ts < self.state[0]:
            self.state[0], self.state[1] = ts, v

    def merge(self, other: Acc) -> None:
        if other.state[0] is not None:
            self.add(other.state[1], other.state[0])

    def result(self) -> Any:
        return self.state[1]


class Last(First):
    __slots__ = ()

    def add(self, v: Any, ts: int) -> None:
        if self.state[0] is None or ts >= self.state[0]:
            self.state[0], self.state[1] = ts, v


def _distinct(v: Any) -> str | tuple[str]:
    """A value's identity for count(DISTINCT): a string as it is, anything else as its JSON
    in a tuple (so the string "1" and the number 1 stay two values)."""
    return v if isinstance(v, str) else (json.dumps(v, sort_keys=True),)


class DistinctCount(Acc):
    __slots__ = ("_seen",)

    def __init__(self, state: list | None = None, param: Any = None):
        super().__init__(state)
        self._seen = {_distinct(v) for v in self.state}

    def add(self, v: Any, ts: int) -> None:
        if v is None:
            return
        key = _distinct(v)
        if key not in self._seen:
            self._seen.add(key)
            self.state.append(v)

    def merge(self, other: Acc) -> None:
        for v in other.state:
            self.add(v, 0)

    def result(self) -> Any:
        return len(self.state)


class Collect(Acc):
    """Every value: the input of a WASM aggregate function."""

    __slots__ = ()

    def add(self, v: Any, ts: int) -> None:
        self.state.append(v)

    def merge(self, other: Acc) -> None:
        self.state.extend(other.state)

    def result(self) -> Any:
        return self.state


AGGREGATES: dict[str, type[Acc]] = {
    "count": Count, "count_star": CountStar, "sum": Sum, "avg": Avg, "min": Min, "max": Max,
    "stddev": Stddev, "percentile": Percentile, "first": First, "last": Last,
    "distinct_count": DistinctCount, "count_distinct": DistinctCount,
}


@dataclass
class AggSpec:
    """One aggregate call of a rule; `signature` keys its state across rule updates."""

    signature: str
    cls: type[Acc]
    arg: Fn
    param: Any = None
    udf: Any = None   # a WasmFunction for aggregate UDFs

    def new(self, state: list | None = None) -> Acc:
        return self.cls(state, self.param) if self.cls is Percentile else self.cls(state)


class Group:
    """One open window of one GROUP BY key: its accumulators and its last message row.
    `start` and `last` are the event times of its first and last message where the window
    kind keeps them (sessions)."""

    __slots__ = ("accs", "feeds", "last", "row", "start")

    def __init__(self, accs: list[Acc], args: tuple[Fn, ...], row: dict, start: int = 0, last: int = 0):
        self.accs, self.row, self.start, self.last = accs, row, start, last
        # (argument closure, bound add) pairs: one loop, no attribute lookups per message
        self.feeds = tuple(zip(args, [a.add for a in accs]))

    def add(self, row: dict, ts: int) -> None:
        """Fold one message into every accumulator and keep its row. Every argument is
        evaluated first: one that fails must not leave the others half-added."""
        feeds = self.feeds
        if len(feeds) == 1:
            feeds[0][1](feeds[0][0](row), ts)
        else:
            vals = [arg(row) for arg, _ in feeds]
            for (_, add), v in zip(feeds, vals):
                add(v, ts)
        self.row = row


class Aggregates:
    """The aggregate calls of one rule: new groups, groups merged, and their state."""

    def __init__(self, specs: list[AggSpec]):
        self.specs = specs
        self._args = tuple(a.arg for a in specs)

    def group(self, row: dict, start: int = 0, last: int = 0, saved: dict | None = None) -> Group:
        """A group with empty accumulators, or restored from `state()`: an aggregate that
        has no saved state (a call added by a rule update) starts empty."""
        if saved is None:
            accs = [a.new() for a in self.specs]
        else:
            accs = [a.new(_copy(saved[a.signature])) if a.signature in saved else a.new() for a in self.specs]
        return Group(accs, self._args, row, start, last)

    @staticmethod
    def merge(into: Group, other: Group) -> None:
        """Fold `other`'s accumulators into `into`'s (their event times do not overlap)."""
        for a, b in zip(into.accs, other.accs):
            a.merge(b)

    def state(self, g: Group) -> dict:
        """The group's accumulators, JSON-able, keyed by the calls' signatures."""
        return {s.signature: a.state for s, a in zip(self.specs, g.accs)}


def _copy(v: Any) -> Any:
    return json.loads(json.dumps(v))
