"""Scalar functions of the rule language (the aggregates are in `aggregates.py`).

Scalars are plain Python callables taking already evaluated arguments; NULL (None) in gives
NULL out unless the function says otherwise (coalesce, isnull).
"""

from __future__ import annotations

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


WINDOW_FUNCTIONS = {"tumblingwindow", "hoppingwindow", "slidingwindow", "sessionwindow", "countwindow"}
CONTEXT_FUNCTIONS = {"topic", "event_time", "window_start", "window_end"}
