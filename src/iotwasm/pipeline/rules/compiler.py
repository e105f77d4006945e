"""Expressions → Python closures, built once per rule.

Every expression node becomes a closure `f(row) -> value`; evaluation never walks the tree.
A message row is the decoded JSON payload (a dict) plus two hidden keys: TOPIC and TS (its
event time in ms). In the output stage of an aggregating rule, the row is the group's last
message row plus AGG (the aggregate values), WS/WE (window bounds) and the aliases computed so
far, so HAVING and later items can name earlier aliases (`HAVING t > 30`).

SQL NULL is None: arithmetic and comparisons with NULL give NULL, which is not true.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .aggregates import AGGREGATES, AggSpec, Collect, Percentile
from .functions import CONTEXT_FUNCTIONS, SCALARS, WINDOW_FUNCTIONS, EvalError
from .parser import Node, RuleSyntaxError

TOPIC, TS, AGG, WS, WE = "\x00topic", "\x00ts", "\x00agg", "\x00ws", "\x00we"

Fn = Callable[[dict], Any]


@dataclass
class UdfSlot:
    """A scalar WASM function call site; its results can be fetched for a whole batch at once."""

    key: str
    func: Any
    args: list[Fn]
    stage: str = "row"   # row: over message rows, before WHERE; out: over output rows


@dataclass
class Compiler:
    rule: str
    udfs: dict[str, Any] = field(default_factory=dict)   # name → WasmFunction
    aggs: list[AggSpec] = field(default_factory=list)
    udf_slots: list[UdfSlot] = field(default_factory=list)
    allow_aggregates: bool = False
    uses_window_bounds: bool = False
    stage: str = "row"

    def error(self, node: Node, message: str) -> RuleSyntaxError:
        return RuleSyntaxError(message, node.line, node.column, self.rule)

    def expr(self, n: Node) -> Fn:
        k = n.kind
        if k == "lit":
            v = n.args[0]
            return lambda r: v
        if k == "col":
            return self._column(n.args)
        if k == "binop":
            return self._binop(n)
        if k == "cmp":
            return self._cmp(n)
        if k == "neg":
            a = self.expr(n.args[0])

            def neg(r):
                v = a(r)
                try:
                    return None if v is None else -v
                except TypeError:
                    raise EvalError(f"-{v!r}: not a number") from None
            return neg
        if k == "and":
            a, b = self.expr(n.args[0]), self.expr(n.args[1])
            return lambda r: a(r) and b(r)
        if k == "or":
            a, b = self.expr(n.args[0]), self.expr(n.args[1])
            return lambda r: a(r) or b(r)
        if k == "not":
            a = self.expr(n.args[0])

            def not_(r):
                v = a(r)
                return None if v is None else not v
            return not_
        if k == "isnull":
            a = self.expr(n.args[0])
            return lambda r: a(r) is None
        if k == "in":
            a = self.expr(n.args[0])
            opts = n.args[1]
            if all(o.kind == "lit" for o in opts):
                values = [o.args[0] for o in opts]
                try:
                    fixed = frozenset(values)
                except TypeError:
                    fixed = None
                if fixed is not None:
                    def in_set(r):
                        v = a(r)
                        try:
                            return None if v is None else v in fixed
                        except TypeError:
                            return False
                    return in_set
            fs = [self.expr(o) for o in opts]

            def in_list(r):
                v = a(r)
                return None if v is None else any(v == f(r) for f in fs)
            return in_list
        if k == "between":
            a, lo, hi = (self.expr(x) for x in n.args)

            def between(r):
                v, low, h = a(r), lo(r), hi(r)
                if v is None or low is None or h is None:
                    return None
                try:
                    return low <= v <= h
                except TypeError:
                    raise EvalError(f"{v!r} BETWEEN {low!r} AND {h!r}: incomparable types") from None
            return between
        if k == "like":
            return self._like(n)
        if k == "case":
            return self._case(n)
        if k == "call":
            return self._call(n)
        raise self.error(n, f"cannot evaluate {k}")  # pragma: no cover

    # -- pieces ----------------------------------------------------------------------------
    def _column(self, parts: tuple) -> Fn:
        first = parts[0]
        if len(parts) == 1:
            return lambda r: r.get(first)
        rest = parts[1:]

        def path(r):
            v = r.get(first)
            for p in rest:
                if not isinstance(v, dict):
                    return None
                v = v.get(p)
            return v
        return path

    _ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
              "%": operator.mod}

    def _binop(self, n: Node) -> Fn:
        op, left, right = n.args
        a, b = self.expr(left), self.expr(right)
        if op == "||":
            def concat(r):
                x, y = a(r), b(r)
                return None if x is None or y is None else f"{x}{y}"
            return concat
        fn = self._ARITH[op]
        text = n.text or op

        def arith(r):
            x, y = a(r), b(r)
            if x is None or y is None:
                return None
            try:
                return fn(x, y)
            except ZeroDivisionError:
                raise EvalError(f"{text}: division by zero") from None
            except TypeError:
                raise EvalError(f"{text}: cannot apply {op} to {x!r} and {y!r}") from None
        return arith

    _CMP = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
            ">": operator.gt, ">=": operator.ge}

    def _cmp(self, n: Node) -> Fn:
        op, left, right = n.args
        a = self.expr(left)
        fn = self._CMP[op]
        text = n.text or op
        if right.kind == "lit" and right.args[0] is not None:
            c = right.args[0]

            def cmp_const(r):
                x = a(r)
                if x is None:
                    return None
                try:
                    return fn(x, c)
                except TypeError:
                    raise EvalError(f"{text}: cannot compare {x!r} with {c!r}") from None
            return cmp_const
        b = self.expr(right)

        def cmp(r):
            x, y = a(r), b(r)
            if x is None or y is None:
                return None
            try:
                return fn(x, y)
            except TypeError:
                raise EvalError(f"{text}: cannot compare {x!r} with {y!r}") from None
        return cmp

    @staticmethod
    def _like_regex(pattern: str) -> re.Pattern:
        out = []
        for ch in pattern:
            out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        return re.compile("".join(out), re.S)

    def _like(self, n: Node) -> Fn:
        a = self.expr(n.args[0])
        p = n.args[1]
        if p.kind == "lit" and isinstance(p.args[0], str):
            rx = self._like_regex(p.args[0])
            return lambda r: None if (v := a(r)) is None else rx.fullmatch(str(v)) is not None
        b = self.expr(p)
        like_regex = self._like_regex
        return lambda r: None if (v := a(r)) is None or (q := b(r)) is None else \
            like_regex(str(q)).fullmatch(str(v)) is not None

    def _case(self, n: Node) -> Fn:
        subject, whens, default = n.args
        conds = [(self.expr(c), self.expr(v)) for c, v in whens]
        other = self.expr(default) if default is not None else (lambda r: None)
        if subject is not None:
            s = self.expr(subject)

            def case_simple(r):
                x = s(r)
                for c, v in conds:
                    if x is not None and x == c(r):
                        return v(r)
                return other(r)
            return case_simple

        def case(r):
            for c, v in conds:
                if c(r):
                    return v(r)
            return other(r)
        return case

    def _call(self, n: Node) -> Fn:
        name, args, star = n.args
        if name in WINDOW_FUNCTIONS:
            raise self.error(n, f"{name.upper()} belongs in GROUP BY")
        if name in CONTEXT_FUNCTIONS:
            if args:
                raise self.error(n, f"{name}() takes no arguments")
            if name == "topic":
                return lambda r: r.get(TOPIC)
            if name == "event_time":
                return lambda r: r.get(TS)
            if not self.allow_aggregates:
                raise self.error(n, f"{name}() needs a window (GROUP BY …, TUMBLINGWINDOW(…))")
            self.uses_window_bounds = True
            key = WS if name == "window_start" else WE
            return lambda r: r.get(key)
        if star:
            if name != "count":
                raise self.error(n, f"only count(*) takes '*', not {name}(*)")
            return self._aggregate(n, "count_star", None)
        udf = self.udfs.get(name)
        if udf is not None:
            if udf.kind == "aggregate":
                return self._aggregate(n, name, args[0] if len(args) == 1 else None, udf=udf)
            return self._udf_scalar(n, udf, args)
        if name.endswith("_distinct"):
            base = name[:-9]
            if base != "count":
                raise self.error(n, f"DISTINCT is supported in count(DISTINCT x) only, not {base}")
            name = "count_distinct"
        if name in AGGREGATES:
            cls = AGGREGATES[name]
            want = cls.nargs
            if len(args) != want:
                raise self.error(n, f"{name}() takes {want} argument{'s' if want != 1 else ''}, "
                                    f"got {len(args)}")
            param = None
            if cls is Percentile:
                p = args[1]
                if p.kind != "lit" or not isinstance(p.args[0], (int, float)) or not 0 <= p.args[0] <= 1:
                    raise self.error(p, "percentile(x, p) needs a constant p between 0 and 1")
                param = float(p.args[0])
            return self._aggregate(n, name, args[0] if args else None, param)
        spec = SCALARS.get(name)
        if spec is None:
            raise self.error(n, f"unknown function {name}()")
        fn, lo, hi = spec
        if len(args) < lo or (hi is not None and len(args) > hi):
            arity = str(lo) if lo == hi else f"{lo}+" if hi is None else f"{lo}–{hi}"
            raise self.error(n, f"{name}() takes {arity} argument(s), got {len(args)}")
        fs = [self.expr(a) for a in args]
        if name == "json_path" and args[1].kind == "lit":
            from .functions import compile_json_path, walk_json
            try:
                steps = compile_json_path(str(args[1].args[0]))
            except ValueError as e:
                raise self.error(args[1], str(e)) from None
            a0 = fs[0]
            return lambda r: None if (v := a0(r)) is None else walk_json(v, steps)
        text = n.text or name

        def call(r):
            try:
                return fn(*[f(r) for f in fs])
            except EvalError:
                raise
            except (TypeError, ValueError, ArithmeticError, OverflowError) as e:
                raise EvalError(f"{text}: {e}") from None
        if len(fs) == 1:
            f0 = fs[0]

            def call1(r):
                try:
                    return fn(f0(r))
                except EvalError:
                    raise
                except (TypeError, ValueError, ArithmeticError, OverflowError) as e:
                    raise EvalError(f"{text}: {e}") from None
            return call1
        return call

    def _aggregate(self, n: Node, name: str, arg: Node | None, param: Any = None, udf: Any = None) -> Fn:
        if not self.allow_aggregates:
            raise self.error(n, f"aggregate {name.replace('_star', '')}() needs a window: "
                                f"add GROUP BY …, TUMBLINGWINDOW(ss, 10) (or another window)")
        sig = (n.text or f"{name}(…)").lower().replace(" ", "")
        for i, a in enumerate(self.aggs):
            if a.signature == sig:
                def slot(r: dict, i: int = i) -> Any:
                    return r[AGG][i]
                return slot
        if arg is not None:
            inner = Compiler(self.rule, self.udfs, allow_aggregates=False, stage="row")
            inner.udf_slots = self.udf_slots  # scalar WASM calls inside aggregate arguments batch too
            try:
                argf = inner.expr(arg)
            except RuleSyntaxError as e:
                if "needs a window" in str(e):
                    raise self.error(arg, "aggregates cannot be nested") from None
                raise
        else:
            argf = lambda r: None  # noqa: E731
        cls = Collect if udf is not None else AGGREGATES[name]
        self.aggs.append(AggSpec(sig, cls, argf, param, udf))
        i = len(self.aggs) - 1
        return lambda r: r[AGG][i]

    def _udf_scalar(self, n: Node, udf: Any, args: tuple) -> Fn:
        fs = [self.expr(a) for a in args]
        key = f"\x00u{self.rule}.{len(self.udf_slots)}"
        slot = UdfSlot(key, udf, fs, self.stage)
        self.udf_slots.append(slot)
        missing = object()

        def call(r):
            v = r.get(key, missing)
            if v is missing:  # not prefetched for this row (e.g. an output-stage call): call now
                v = udf.call_one([f(r) for f in fs])
            if isinstance(v, EvalError):
                raise v
            return v
        return call


def contains_aggregate(n: Any, udfs: dict) -> bool:
    if not isinstance(n, Node):
        if isinstance(n, tuple):
            return any(contains_aggregate(x, udfs) for x in n)
        return False
    if n.kind == "call":
        name, args, star = n.args
        if star or name in AGGREGATES or name.endswith("_distinct") or \
                (name in udfs and udfs[name].kind == "aggregate"):
            return True
    return any(contains_aggregate(a, udfs) for a in n.args)
