"""Scalar functions and aggregates of the rule language.

Scalars are plain Python callables taking already evaluated arguments; NULL (None) in gives
NULL out unless the function says otherwise (coalesce, isnull). Aggregates are small
accumulator classes whose state is a JSON-able list, so open windows can be checkpointed to
SQLite and restored after a restart.
"""

from __future__ import annotations

import abc
import json
import math
import re
import time
from datetime import datetime, timezone
from typing import Any, Callable

from ...errors import IotwasmError


class EvalError(IotwasmError):
    """One evaluation failed (bad types, a function error, a WASM function trap); the rule goes on."""

    kind = "rule_eval"


def _nullsafe(fn: Callable) -> Callable:
    def f(*args):
        for a in args:
            if a is None:
                return None
        return fn(*args)
    f.__name__ = fn.__name__
    return f


_PATH_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\['([^']*)'\]|\.\"([^\"]*)\"")


def compile_json_path(path: str) -> tuple:
    """`$.a.b[0]['c d']` → a tuple of keys/indices; ValueError when it is not a path."""
    if not path.startswith("$"):
        raise ValueError(f"JSON path {path!r} must start with '$'")
    steps: list = []
    pos = 1
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        if not m:
            raise ValueError(f"JSON path {path!r}: cannot read {path[pos:]!r}")
        name, index, q1, q2 = m.groups()
        steps.append(int(index) if index is not None else (name or q1 or q2 or ""))
        pos = m.end()
    return tuple(steps)


def walk_json(value: Any, steps: tuple) -> Any:
    for s in steps:
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if isinstance(s, int):
            if not isinstance(value, list) or s >= len(value):
                return None
            value = value[s]
        else:
            if not isinstance(value, dict):
                return None
            value = value.get(s)
    return value


_path_cache: dict[str, tuple] = {}


def json_path(value: Any, path: str) -> Any:
    steps = _path_cache.get(path)
    if steps is None:
        try:
            steps = _path_cache[path] = compile_json_path(path)
        except ValueError as e:
            raise EvalError(str(e)) from None
    return walk_json(value, steps)


def _round(x, n=0):
    return round(x, int(n)) if n else round(x)


def _substring(s, start, length=None):
    s = str(s)
    start = int(start)
    return s[start:] if length is None else s[start:start + int(length)]


def _to_int(x):
    try:
        return int(float(x)) if isinstance(x, str) else int(x)
    except (TypeError, ValueError):
        raise EvalError(f"int({x!r}): not a number") from None


def _to_float(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        raise EvalError(f"float({x!r}): not a number") from None


def _to_string(x):
    if isinstance(x, (dict, list)):
        return json.dumps(x, separators=(",", ":"))
    if isinstance(x, bool):
        return "true" if x else "false"
    return str(x)


def _format_time(ms, fmt="%Y-%m-%dT%H:%M:%S"):
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime(fmt)


def _utc(ms):
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _coalesce(*args):
    for a in args:
        if a is not None:
            return a
    return None


#: name → (callable, min args, max args or None for any)
SCALARS: dict[str, tuple[Callable, int, int | None]] = {
    # math
    "abs": (_nullsafe(abs), 1, 1), "ceil": (_nullsafe(math.ceil), 1, 1),
    "floor": (_nullsafe(math.floor), 1, 1), "round": (_nullsafe(_round), 1, 2),
    "sqrt": (_nullsafe(math.sqrt), 1, 1), "power": (_nullsafe(math.pow), 2, 2),
    "pow": (_nullsafe(math.pow), 2, 2), "exp": (_nullsafe(math.exp), 1, 1),
    "ln": (_nullsafe(math.log), 1, 1), "log10": (_nullsafe(math.log10), 1, 1),
    "mod": (_nullsafe(math.fmod), 2, 2), "sign": (_nullsafe(lambda x: (x > 0) - (x < 0)), 1, 1),
    "sin": (_nullsafe(math.sin), 1, 1), "cos": (_nullsafe(math.cos), 1, 1),
    "greatest": (_nullsafe(max), 1, None), "least": (_nullsafe(min), 1, None),
    # conversion
    "int": (_nullsafe(_to_int), 1, 1), "float": (_nullsafe(_to_float), 1, 1),
    "string": (_nullsafe(_to_string), 1, 1), "coalesce": (_coalesce, 1, None),
    "isnull": (lambda x: x is None, 1, 1),
    # strings
    "lower": (_nullsafe(lambda s: str(s).lower()), 1, 1),
    "upper": (_nullsafe(lambda s: str(s).upper()), 1, 1),
    "length": (_nullsafe(lambda s: len(s) if isinstance(s, (list, dict)) else len(str(s))), 1, 1),
    "concat": (lambda *a: "".join(_to_string(x) for x in a if x is not None), 1, None),
    "substring": (_nullsafe(_substring), 2, 3), "trim": (_nullsafe(lambda s: str(s).strip()), 1, 1),
    "replace": (_nullsafe(lambda s, a, b: str(s).replace(str(a), str(b))), 3, 3),
    "startswith": (_nullsafe(lambda s, p: str(s).startswith(str(p))), 2, 2),
    "endswith": (_nullsafe(lambda s, p: str(s).endswith(str(p))), 2, 2),
    "indexof": (_nullsafe(lambda s, p: str(s).find(str(p))), 2, 2),
    "split_part": (_nullsafe(lambda s, sep, i: (str(s).split(str(sep)) + [None] * (int(i) + 1))[int(i)]), 3, 3),
    # time (milliseconds since the epoch, UTC)
    "now": (lambda: time.time_ns() // 1_000_000, 0, 0),
    "format_time": (_nullsafe(_format_time), 1, 2),
    "year": (_nullsafe(lambda ms: _utc(ms).year), 1, 1),
    "month": (_nullsafe(lambda ms: _utc(ms).month), 1, 1),
    "day": (_nullsafe(lambda ms: _utc(ms).day), 1, 1),
    "hour": (_nullsafe(lambda ms: _utc(ms).hour), 1, 1),
    "minute": (_nullsafe(lambda ms: _utc(ms).minute), 1, 1),
    "second": (_nullsafe(lambda ms: _utc(ms).second), 1, 1),
    "day_of_week": (_nullsafe(lambda ms: _utc(ms).isoweekday()), 1, 1),
    # JSON
    "json_path": (_nullsafe(json_path), 2, 2),
    "json_path_exists": (lambda v, p: json_path(v, p) is not None, 2, 2),
    "object": (lambda *kv: {str(kv[i]): kv[i + 1] for i in range(0, len(kv) - 1, 2)}, 2, None),
    "to_json": (lambda v: json.dumps(v, separators=(",", ":")), 1, 1),
    "parse_json": (_nullsafe(lambda s: json.loads(s) if isinstance(s, (str, bytes)) else s), 1, 1),
}


# --- aggregates ---------------------------------------------------------------------------

class Acc(abc.ABC):
    """An aggregate's running state; `state` is a JSON-able list (checkpointed to SQLite).
    Each aggregate function subclasses it with its own `add` and `result`."""

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
    def result(self) -> Any:
        """The aggregate's value so far."""


class Count(Acc):
    __slots__ = ()

    @staticmethod
    def empty():
        return [0]

    def add(self, v, ts):
        if v is not None:
            self.state[0] += 1

    def result(self):
        return self.state[0]


class CountStar(Count):
    __slots__ = ()
    nargs = 0

    def add(self, v, ts):
        self.state[0] += 1


class Sum(Acc):
    __slots__ = ()

    @staticmethod
    def empty():
        return [None]

    def add(self, v, ts):
        if v is not None:
            s = self.state
            try:
                s[0] = v if s[0] is None else s[0] + v
            except TypeError:
                raise EvalError(f"sum: {v!r} is not a number") from None

    def result(self):
        return self.state[0]


class Avg(Acc):
    __slots__ = ()

    @staticmethod
    def empty():
        return [0, 0]

    def add(self, v, ts):
        if v is not None:
            s = self.state
            try:
                s[0] += v
            except TypeError:
                raise EvalError(f"avg: {v!r} is not a number") from None
            s[1] += 1

    def result(self):
        return self.state[0] / self.state[1] if self.state[1] else None


class Min(Acc):
    __slots__ = ()

    @staticmethod
    def empty():
        return [None]

    def add(self, v, ts):
        if v is not None and (self.state[0] is None or v < self.state[0]):
            self.state[0] = v

    def result(self):
        return self.state[0]


class Max(Min):
    __slots__ = ()

    def add(self, v, ts):
        if v is not None and (self.state[0] is None or v > self.state[0]):
            self.state[0] = v


class Stddev(Acc):
    """Population standard deviation (Welford's online algorithm: stable, O(1) state)."""

    __slots__ = ()

    @staticmethod
    def empty():
        return [0, 0.0, 0.0]

    def add(self, v, ts):
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

    def result(self):
        return math.sqrt(self.state[2] / self.state[0]) if self.state[0] else None


class Percentile(Acc):
    """percentile(x, p), p in [0, 1], linear interpolation between closest ranks (as numpy)."""

    __slots__ = ("p",)
    nargs = 2

    def __init__(self, state=None, param=0.5):
        super().__init__(state)
        self.p = param

    def add(self, v, ts):
        if v is not None:
            self.state.append(v)

    def result(self):
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
    def empty():
        return [None, None]

    def add(self, v, ts):
        if self.state[0] is None or ts < self.state[0]:
            self.state[0], self.state[1] = ts, v

    def result(self):
        return self.state[1]


class Last(First):
    __slots__ = ()

    def add(self, v, ts):
        if self.state[0] is None or ts >= self.state[0]:
            self.state[0], self.state[1] = ts, v


class DistinctCount(Acc):
    __slots__ = ("_seen",)

    def __init__(self, state=None, param=None):
        super().__init__(state)
        self._seen = {json.dumps(v, sort_keys=True) for v in self.state}

    def add(self, v, ts):
        if v is None:
            return
        key = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        if key not in self._seen:
            self._seen.add(key)
            self.state.append(v)

    def result(self):
        return len(self.state)


class Collect(Acc):
    """Every value: the input of a WASM aggregate function."""

    __slots__ = ()

    def add(self, v, ts):
        self.state.append(v)

    def result(self):
        return self.state


AGGREGATES: dict[str, type[Acc]] = {
    "count": Count, "count_star": CountStar, "sum": Sum, "avg": Avg, "min": Min, "max": Max,
    "stddev": Stddev, "percentile": Percentile, "first": First, "last": Last,
    "distinct_count": DistinctCount, "count_distinct": DistinctCount,
}

WINDOW_FUNCTIONS = {"tumblingwindow", "hoppingwindow", "slidingwindow", "sessionwindow", "countwindow"}
CONTEXT_FUNCTIONS = {"topic", "event_time", "window_start", "window_end"}
