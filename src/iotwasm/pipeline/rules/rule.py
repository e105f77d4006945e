"""A compiled rule: a rule's query made into closures once, evaluated over decoded rows.

Evaluating a message is a few Python calls, no tree walking: WHERE, the GROUP BY keys, then
for a rule without a window the projection, for one with a window its `Windows` (windows.py),
which fold the message into its window groups and say which windows close. Event time comes
from a payload field when configured, else the arrival time. The watermark is the largest
event time seen minus the allowed lateness; a message older than the watermark is late:
counted and left out. Processing-time rules also advance by `tick()`.

`dump_state` / `load_state` are what the engine checkpoints to SQLite and hands from a rule to
its update: the watermark and the open windows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ...errors import ConfigError
from ...messaging.errors import InvalidTopic
from ...messaging.topics import validate_filter
from ..templates import TopicPattern
from .aggregates import Aggregates, AggSpec
from .compiler import AGG, TS, WE, WS, Compiler, contains_aggregate
from .functions import WINDOW_FUNCTIONS, EvalError
from .parser import Node, Query, RuleSyntaxError, parse
from .windows import Closed, WindowSpec, open_windows, window_spec

CLOCK_GRACE_MS = 1000


@dataclass(frozen=True)
class EventTime:
    """Where event time comes from: a payload field (in `unit`) or, without one, arrival time."""

    field: str | None = None
    unit: str = "ms"             # ms or s
    lateness_ms: int = 0
    #: after this much processing time without a newer event, event time is taken to go on with
    #: the clock, so a stream that goes quiet still closes its windows (None: wait for events)
    idle_ms: int | None = None


@dataclass
class RuleSpec:
    name: str
    sql: str
    event_time: EventTime = EventTime()
    functions: dict[str, Any] = field(default_factory=dict)   # name → WasmFunction
    alert: bool = False       # emit also when the condition does not hold (ok=False), for alerts


class Emission(NamedTuple):
    rule: str
    row: dict        # the projected output
    ts: int          # event time of the emission (ms)
    ok: bool = True  # False: an alert rule's condition did not hold for this row
    source: dict | None = None  # the message row (stateless) or group's last row (windowed)


@dataclass
class RuleCounters:
    received: int = 0
    matched: int = 0
    emitted: int = 0
    errors: int = 0
    udf_errors: int = 0
    late: int = 0
    decode_errors: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _hidden(k: str) -> bool:
    return k[:1] == "\x00"


def _key_of(values: list) -> Any:
    out = []
    for v in values:
        if isinstance(v, (dict, list)):
            v = json.dumps(v, sort_keys=True)
        out.append(v)
    return out[0] if len(out) == 1 else tuple(out)


class CompiledRule:
    """One rule, compiled once; `evaluate()` runs it over decoded rows."""

    def __init__(self, spec: RuleSpec):
        self.spec = spec
        self.name = spec.name
        q: Query = parse(spec.sql, spec.name)
        self.query = q
        self.counters = RuleCounters()
        try:
            self.pattern = TopicPattern.parse(q.source)
            validate_filter(self.pattern.filter)
        except (ConfigError, InvalidTopic) as e:
            raise RuleSyntaxError(f"FROM {q.source!r}: {e}", *q.source_pos, spec.name) from None
        self.filter = self.pattern.filter
        udfs = spec.functions
        # the window and GROUP BY keys
        self.window: WindowSpec | None = None
        key_nodes: list[Node] = []
        for g in q.group_by:
            if g.kind == "call" and g.args[0] in WINDOW_FUNCTIONS:
                if self.window is not None:
                    raise RuleSyntaxError("only one window per rule", g.line, g.column, spec.name)
                self.window = window_spec(g, spec.name)
            else:
                key_nodes.append(g)
        aggregating = self.window is not None or any(contains_aggregate(e, udfs) for e, _ in q.items) or \
            (q.having is not None and contains_aggregate(q.having, udfs))
        if aggregating and self.window is None:
            first = next((e for e, _ in q.items if e is not None and contains_aggregate(e, udfs)), q.having)
            assert first is not None  # aggregating without a window means an item or HAVING aggregates
            raise RuleSyntaxError("aggregates need a window: add GROUP BY …, TUMBLINGWINDOW(ss, 10) "
                                  "(or HOPPING/SLIDING/SESSION/COUNT window)",
                                  first.line, first.column, spec.name)
        if q.having is not None and self.window is None:
            raise RuleSyntaxError("HAVING needs GROUP BY with a window", q.having.line, q.having.column,
                                  spec.name)
        row_c = Compiler(spec.name, udfs)
        self.where = row_c.expr(q.where) if q.where is not None else None
        self.keys = [row_c.expr(k) for k in key_nodes]
        self.key_names = [self._name(k) for k in key_nodes]
        out_c = Compiler(spec.name, udfs, allow_aggregates=aggregating, stage="out")
        out_c.udf_slots = row_c.udf_slots  # one list: slot keys stay unique within the rule
        self.items: list[tuple[str, Any]] = []
        self.star = False
        for item, alias in q.items:
            if item is None:
                self.star = True
                continue
            self.items.append((alias or self._name(item), out_c.expr(item)))
        self.having = out_c.expr(q.having) if q.having is not None else None
        self.aggs: list[AggSpec] = out_c.aggs
        # WASM calls in WHERE, keys and aggregate arguments are fetched for the whole batch
        # before WHERE; those in SELECT of a rule without a window, for the rows that passed;
        # those over aggregates are called at emission
        self.row_slots = [s for s in row_c.udf_slots if s.stage == "row"]
        self.out_slots = [s for s in row_c.udf_slots if s.stage == "out"] if not aggregating else []
        self.udf_aggs = [i for i, a in enumerate(self.aggs) if a.udf is not None]
        self.event_time = spec.event_time
        self.lateness = spec.event_time.lateness_ms
        self.watermark: int | None = None
        self.max_ts: int | None = None
        self._ticked_ts: int | None = None   # max_ts at the last tick that saw it change
        self._quiet_since = 0                # processing time (ms) of that tick
        self.enabled = True
        self.windows = open_windows(self.window, Aggregates(self.aggs)) if self.window is not None else None
        self.shape = hashlib.sha256(json.dumps(
            [self.window and self.window.text, [k.text.lower() for k in key_nodes],
             spec.event_time.field, spec.event_time.unit]).encode()).hexdigest()[:16]

    @staticmethod
    def _name(e: Node) -> str:
        if e.kind == "col":
            return e.args[-1]
        return e.text.replace(" ", "") if e.text else e.kind

    # -- evaluation --------------------------------------------------------------------------
    def _fail(self, e: Exception) -> None:
        c = self.counters
        c.errors += 1
        c.last_error = str(e)

    def _prefetch(self, slots, rows: list[dict]) -> None:
        for slot in slots:
            args, live = [], []
            for r in rows:
                try:
                    args.append([f(r) for f in slot.args])
                    live.append(r)
                except EvalError as e:
                    r[slot.key] = e
            results = slot.func.call_many(args)
            key = slot.key
            for r, v in zip(live, results):
                if isinstance(v, EvalError):
                    self.counters.udf_errors += 1
                r[key] = v

    def _ts(self, r: dict) -> int | None:
        f = self.event_time.field
        if f is None:
            return r[TS]
        v = r.get(f)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return int(v * 1000) if self.event_time.unit == "s" else int(v)

    def evaluate(self, rows: list[dict], out: list[Emission]) -> None:
        if not self.enabled:
            return
        c = self.counters
        c.received += len(rows)
        if self.row_slots:
            self._prefetch(self.row_slots, rows)
        where = self.where
        windows = self.windows
        if windows is None:
            self._stateless(rows, out)
            return
        add = windows.add
        alert = self.spec.alert
        tfield = self.event_time.field
        seconds = self.event_time.unit == "s"
        for r in rows:
            if tfield is None:
                ts = r[TS]
            else:
                ts = r.get(tfield)
                if type(ts) is not int:
                    ts = self._ts(r)
                elif seconds:
                    ts *= 1000
            if ts is None:
                self._fail(EvalError(f"event time field {self.event_time.field!r} is missing or not a number"))
                continue
            wm = self.watermark
            if wm is not None and ts < wm:
                c.late += 1
                continue
            try:
                if where is not None and not where(r):
                    if alert:
                        out.append(Emission(self.name, {}, ts, False, r))
                else:
                    keys = self.keys
                    if len(keys) == 1:
                        key = keys[0](r)
                        if isinstance(key, (dict, list)):
                            key = _key_of([key])
                    else:
                        key = _key_of([k(r) for k in keys]) if keys else None
                    c.matched += 1
                    closed = add(key, ts, r, wm)
                    if closed:
                        self._emit(closed, out)
            except EvalError as e:
                self._fail(e)
            # the stream's clock: every message moves it, whether or not it passed WHERE
            if self.max_ts is None or ts > self.max_ts:
                self.max_ts = ts
                nwm = ts - self.lateness
                if wm is None or nwm > wm:
                    self.watermark = nwm
                    if nwm >= windows.due:
                        self._emit(windows.close(nwm), out)

    def _stateless(self, rows: list[dict], out: list[Emission]) -> None:
        c = self.counters
        where = self.where
        passing = rows if where is None else []
        if where is not None:
            alert = self.spec.alert
            for r in rows:
                try:
                    if where(r):
                        passing.append(r)
                    elif alert:
                        out.append(Emission(self.name, {}, r[TS], False, r))
                except EvalError as e:
                    self._fail(e)
        c.matched += len(passing)
        if self.out_slots and passing:
            self._prefetch(self.out_slots, passing)
        items = self.items
        star = self.star
        name = self.name
        for r in passing:
            try:
                row = {k: v for k, v in r.items() if not _hidden(k)} if star else {}
                for n, f in items:
                    row[n] = f(r)
            except EvalError as e:
                self._fail(e)
                continue
            out.append(Emission(name, row, r[TS], True, r))
        c.emitted += len(passing)

    def tick(self, now_ms: int, out: list[Emission]) -> None:
        """Processing time moves on without messages: close windows that are due. The clock
        trails by CLOCK_GRACE_MS, so messages that waited in a queue are not made late by it."""
        if self.windows is None or not self.enabled:
            return
        if self.event_time.field is not None:
            self._idle(int(now_ms), out)
            return
        self._advance(int(now_ms) - self.lateness - CLOCK_GRACE_MS, out)

    def _idle(self, now_ms: int, out: list[Emission]) -> None:
        """An event-time stream with `idle_ms`: once no newer event has come for that long, the
        watermark follows processing time from the last event time (events behind it are late)."""
        idle = self.event_time.idle_ms
        if idle is None or self.max_ts is None:
            return
        if self.max_ts != self._ticked_ts:          # newer events since the last tick
            self._ticked_ts, self._quiet_since = self.max_ts, now_ms
            return
        quiet = now_ms - self._quiet_since
        if quiet < idle:
            return
        self._advance(self.max_ts + quiet - self.lateness, out)

    def _advance(self, watermark: int, out: list[Emission]) -> None:
        """Move the watermark on without a message; emit the windows it closes."""
        windows = self.windows
        if windows is not None and (self.watermark is None or watermark > self.watermark):
            self.watermark = watermark
            if watermark >= windows.due:
                self._emit(windows.close(watermark), out)

    def _emit(self, closed: list[Closed], out: list[Emission]) -> None:
        """Project closed windows into output rows (HAVING decides which are emitted)."""
        if not closed:
            return
        results = [[a.result() for a in c.group.accs] for c in closed]
        for i in self.udf_aggs:   # one guest call per aggregate function for all groups
            f = self.aggs[i].udf
            values = f.call_many([[res[i]] for res in results])
            for res, v in zip(results, values):
                res[i] = v
        c = self.counters
        for (_, g, start, end), aggs in zip(closed, results):
            env = dict(g.row)
            env[AGG] = aggs
            env[WS] = start
            env[WE] = end
            try:
                for v in aggs:
                    if isinstance(v, EvalError):
                        c.udf_errors += 1
                        raise v
                row = {k: v for k, v in g.row.items() if not _hidden(k)} if self.star else {}
                for n, f in self.items:
                    row[n] = env[n] = f(env)
                ok = True if self.having is None else bool(self.having(env))
            except EvalError as e:
                self._fail(e)
                continue
            if ok:
                c.emitted += 1
                out.append(Emission(self.name, row, end, True, g.row))
            elif self.spec.alert:
                out.append(Emission(self.name, row, end, False, g.row))

    # -- state -------------------------------------------------------------------------------
    def open_windows(self) -> int:
        return self.windows.open() if self.windows is not None else 0

    def dump_state(self) -> dict:
        """The watermark and the open windows, JSON-able (checkpoints, rule updates)."""
        state: dict = {"wm": self.watermark, "max_ts": self.max_ts}
        if self.windows is not None:
            state.update(self.windows.dump())
        return state

    def load_state(self, state: dict) -> None:
        """Continue from `dump_state()` of a rule of the same shape."""
        self.watermark, self.max_ts = state.get("wm"), state.get("max_ts")
        if self.windows is not None:
            self.windows.load(state)
