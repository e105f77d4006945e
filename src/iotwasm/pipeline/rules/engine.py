"""The rules engine: compiled rules over message batches, windows, event time, checkpoints.

Hot path, per batch: each message is decoded once (JSON) and shared by every rule whose topic
filter matches it (filters are indexed; the topic → filters answer is memoised). Each rule was
compiled to closures when it was added, so evaluating it is a few Python calls per message,
no tree walking. WASM function calls of a rule are gathered over the whole batch and made in
one guest call.

Windows (all per GROUP BY key; times in ms):
  TUMBLINGWINDOW(unit, size)       [k·size, (k+1)·size), emitted when the watermark reaches the end
  HOPPINGWINDOW(unit, size, hop)   [k·hop, k·hop+size), idem
  SLIDINGWINDOW(unit, size)        emitted at each message, over (ts−size, ts]
  SESSIONWINDOW(unit, gap)         messages less than `gap` apart; emitted when the watermark
                                   reaches last+gap (window_end() = last+gap)
  COUNTWINDOW(n[, m])              every n messages (every m, over the last n)

Event time comes from a payload field when configured, else the arrival time. The watermark
is the largest event time seen minus the allowed lateness; a message older than the watermark
is late: counted and left out. Processing-time rules also advance by `tick()`.

Window state is checkpointed to SQLite (`RuleStateStore`) so a restart continues open windows.
Updating a rule keeps the state that still applies: same window and GROUP BY keep the open
windows, and each aggregate keeps its running value when the new rule has the same call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from ...errors import ConfigError
from ...message import Message
from ...messaging.topics import matches, validate_filter
from ...messaging.errors import InvalidTopic
from ...sqlite import open_db
from ..templates import TopicPattern
from .compiler import AGG, TOPIC, TS, WE, WS, AggSpec, Compiler, contains_aggregate
from .functions import WINDOW_FUNCTIONS, EvalError
from .parser import Node, Query, RuleSyntaxError, parse

log = logging.getLogger("iotwasm.rules")

CLOCK_GRACE_MS = 1000

UNITS = {"ms": 1, "ss": 1000, "s": 1000, "mi": 60_000, "m": 60_000, "hh": 3_600_000,
         "h": 3_600_000, "dd": 86_400_000, "d": 86_400_000}


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


@dataclass(frozen=True)
class WindowSpec:
    kind: str            # tumbling hopping sliding session count
    size: int = 0        # ms, or messages for count
    hop: int = 0         # ms, or messages for count
    text: str = ""


class _Group:
    __slots__ = ("accs", "row", "start", "last", "feeds")

    def __init__(self, accs, row, start=0, last=0, args=()):
        self.accs, self.row, self.start, self.last = accs, row, start, last
        # (argument closure, bound add) pairs: one loop, no attribute lookups per message
        self.feeds = tuple(zip(args, [a.add for a in accs])) if args else ()


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
                self.window = self._window(g)
            else:
                key_nodes.append(g)
        aggregating = self.window is not None or any(contains_aggregate(e, udfs) for e, _ in q.items) or \
            (q.having is not None and contains_aggregate(q.having, udfs))
        if aggregating and self.window is None:
            first = next((e for e, _ in q.items if e is not None and contains_aggregate(e, udfs)), q.having)
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
        for e, alias in q.items:
            if e is None:
                self.star = True
                continue
            self.items.append((alias or self._name(e), out_c.expr(e)))
        self.having = out_c.expr(q.having) if q.having is not None else None
        self.aggs: list[AggSpec] = out_c.aggs
        # WASM calls in WHERE, keys and aggregate arguments are fetched for the whole batch
        # before WHERE; those in SELECT of a rule without a window, for the rows that passed;
        # those over aggregates are called at emission
        self.row_slots = [s for s in row_c.udf_slots if s.stage == "row"]
        self.out_slots = [s for s in row_c.udf_slots if s.stage == "out"] if not aggregating else []
        self.udf_aggs = [i for i, a in enumerate(self.aggs) if a.udf is not None]
        self._args = tuple(a.arg for a in self.aggs)
        self.event_time = spec.event_time
        self.lateness = spec.event_time.lateness_ms
        self.watermark: int | None = None
        self.max_ts: int | None = None
        self._ticked_ts: int | None = None   # max_ts at the last tick that saw it change
        self._quiet_since = 0                # processing time (ms) of that tick
        self.enabled = True
        # window state
        self.windows: dict[tuple[int, int], dict[Any, _Group]] = {}   # tumbling / hopping
        self.sessions: dict[Any, list[_Group]] = {}
        self.buffers: dict[Any, deque] = {}                            # sliding / count: (ts, row)
        self.counts: dict[Any, int] = {}
        self._due = float("inf")   # no window can close before the watermark reaches this
        self.shape = hashlib.sha256(json.dumps(
            [self.window and self.window.text, [k.text.lower() for k in key_nodes],
             spec.event_time.field, spec.event_time.unit]).encode()).hexdigest()[:16]

    @staticmethod
    def _name(e: Node) -> str:
        if e.kind == "col":
            return e.args[-1]
        return e.text.replace(" ", "") if e.text else e.kind

    def _window(self, g: Node) -> WindowSpec:
        name, args, _ = g.args
        err = lambda msg: RuleSyntaxError(msg, g.line, g.column, self.name)  # noqa: E731

        def num(i: int) -> int:
            a = args[i]
            if a.kind != "lit" or not isinstance(a.args[0], (int, float)) or a.args[0] <= 0:
                raise RuleSyntaxError(f"{name.upper()}: argument {i + 1} must be a positive number",
                                      a.line, a.column, self.name)
            return a.args[0]
        text = g.text.lower().replace(" ", "")
        if name == "countwindow":
            if len(args) not in (1, 2):
                raise err("COUNTWINDOW(n) or COUNTWINDOW(n, every)")
            n = int(num(0))
            m = int(num(1)) if len(args) == 2 else n
            return WindowSpec("count", n, m, text)
        want = {"tumblingwindow": (2, 2), "hoppingwindow": (3, 3), "slidingwindow": (2, 2),
                "sessionwindow": (2, 2)}[name]
        if not want[0] <= len(args) <= want[1]:
            shape = {"tumblingwindow": "(unit, size)", "hoppingwindow": "(unit, size, hop)",
                     "slidingwindow": "(unit, size)", "sessionwindow": "(unit, gap)"}[name]
            raise err(f"{name.upper()}{shape} takes {want[0]} arguments, got {len(args)}")
        u = args[0]
        if u.kind != "col" or len(u.args) != 1 or u.args[0].lower() not in UNITS:
            raise RuleSyntaxError(f"{name.upper()}: the first argument is a time unit "
                                  f"(ms, ss, mi, hh, dd)", u.line, u.column, self.name)
        unit = UNITS[u.args[0].lower()]
        size = int(num(1) * unit)
        kind = name[:-6]
        if kind == "hopping":
            hop = int(num(2) * unit)
            if hop > size:
                raise err("HOPPINGWINDOW: the hop must not be larger than the size")
            return WindowSpec(kind, size, hop, text)
        return WindowSpec(kind, size, 0, text)

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
        if self.window is None:
            self._stateless(rows, out)
            return
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
                    self._add(key, ts, r, out)
            except EvalError as e:
                self._fail(e)
            # the stream's clock: every message moves it, whether or not it passed WHERE
            if self.max_ts is None or ts > self.max_ts:
                self.max_ts = ts
                nwm = ts - self.lateness
                if wm is None or nwm > wm:
                    self.watermark = nwm
                    if nwm >= self._due:
                        self._fire(out)

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

    def _new_accs(self) -> list:
        return [a.new() for a in self.aggs]

    def _feed(self, accs: list, r: dict, ts: int) -> None:
        vals = [spec.arg(r) for spec in self.aggs]
        for acc, v in zip(accs, vals):
            acc.add(v, ts)

    def _add(self, key, ts: int, r: dict, out: list[Emission]) -> None:
        w = self.window
        kind = w.kind
        if kind == "tumbling":
            start = ts - ts % w.size
            groups = self.windows.get((start, start + w.size))
            if groups is None:
                groups = self.windows[(start, start + w.size)] = {}
                if start + w.size < self._due:
                    self._due = start + w.size
            g = groups.get(key)
            if g is None:
                g = groups[key] = _Group(self._new_accs(), r, args=self._args)
            feeds = g.feeds
            if len(feeds) == 1:
                feeds[0][1](feeds[0][0](r), ts)
            else:  # every argument first: a failing one must not leave the others half-added
                vals = [arg(r) for arg, _ in feeds]
                for (_, add), v in zip(feeds, vals):
                    add(v, ts)
            g.row = r
        elif kind == "hopping":
            hop = w.hop
            start = ts - ts % hop
            while start > ts - w.size:
                bounds = (start, start + w.size)
                groups = self.windows.get(bounds)
                if groups is None:
                    groups = self.windows[bounds] = {}
                    if bounds[1] < self._due:
                        self._due = bounds[1]
                g = groups.get(key)
                if g is None:
                    g = groups[key] = _Group(self._new_accs(), r)
                self._feed(g.accs, r, ts)
                g.row = r
                start -= hop
        elif kind == "session":
            sessions = self.sessions.setdefault(key, [])
            gap = w.size
            for g in sessions:
                if g.start - gap < ts < g.last + gap:
                    g.start = min(g.start, ts)
                    g.last = max(g.last, ts)
                    break
            else:
                g = _Group(self._new_accs(), r, ts, ts)
                sessions.append(g)
            if g.last + gap < self._due:
                self._due = g.last + gap
            self._feed(g.accs, r, ts)
            g.row = r
        elif kind == "sliding":
            buf = self.buffers.get(key)
            if buf is None:
                buf = self.buffers[key] = deque()
            entry = (ts, self._keep(r))
            if not buf or buf[-1][0] <= ts:
                buf.append(entry)
            else:
                items = sorted([*buf, entry], key=lambda e: e[0])
                buf.clear()
                buf.extend(items)
            floor = (self.watermark if self.watermark is not None else ts) - w.size
            while buf and buf[0][0] <= floor:
                buf.popleft()
            accs = self._new_accs()
            last = None
            for ets, er in buf:
                if ts - w.size < ets <= ts:
                    self._feed(accs, er, ets)
                    last = er
            self._emit(key, _Group(accs, last or r, ts - w.size, ts), ts - w.size, ts, out)
        else:  # count
            buf = self.buffers.get(key)
            if buf is None:
                buf = self.buffers[key] = deque(maxlen=w.size)
            buf.append((ts, self._keep(r)))
            n = self.counts.get(key, 0) + 1
            self.counts[key] = n
            if n >= w.size and (n - w.size) % w.hop == 0:
                accs = self._new_accs()
                for ets, er in buf:
                    self._feed(accs, er, ets)
                self._emit(key, _Group(accs, buf[-1][1]), buf[0][0], buf[-1][0], out)
                if w.hop == w.size:
                    buf.clear()
                    self.counts[key] = 0

    @staticmethod
    def _keep(r: dict) -> dict:
        """A row kept in a window buffer: without batch-local WASM results."""
        return {k: v for k, v in r.items() if not k.startswith("\x00u")}

    def _fire(self, out: list[Emission]) -> None:
        wm = self.watermark
        kind = self.window.kind
        if kind in ("tumbling", "hopping"):
            due = sorted(b for b in self.windows if b[1] <= wm)
            for b in due:
                groups = self.windows.pop(b)
                self._emit_many([(k, g, b[0], b[1]) for k, g in groups.items()], out)
            self._due = min((b[1] for b in self.windows), default=float("inf"))
        elif kind == "session":
            gap = self.window.size
            ready = []
            for key, sessions in list(self.sessions.items()):
                keep = []
                for g in sessions:
                    (ready if g.last + gap <= wm else keep).append(g)
                    if g.last + gap <= wm:
                        ready[-1] = (key, g, g.start, g.last + gap)
                if keep:
                    self.sessions[key] = keep
                else:
                    del self.sessions[key]
            ready.sort(key=lambda t: t[3])
            self._emit_many(ready, out)
            self._due = min((g.last + gap for ss in self.sessions.values() for g in ss), default=float("inf"))

    def tick(self, now_ms: int, out: list[Emission]) -> None:
        """Processing time moves on without messages: close windows that are due. The clock
        trails by CLOCK_GRACE_MS, so messages that waited in a queue are not made late by it."""
        if self.window is None or not self.enabled:
            return
        if self.event_time.field is not None:
            self._idle(int(now_ms), out)
            return
        nwm = int(now_ms) - self.lateness - CLOCK_GRACE_MS
        if self.watermark is None or nwm > self.watermark:
            self.watermark = nwm
            self._fire(out)

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
        nwm = self.max_ts + quiet - self.lateness
        if self.watermark is None or nwm > self.watermark:
            self.watermark = nwm
            self._fire(out)

    def _emit(self, key, g: _Group, start: int, end: int, out: list[Emission]) -> None:
        self._emit_many([(key, g, start, end)], out)

    def _emit_many(self, groups: list, out: list[Emission]) -> None:
        if not groups:
            return
        results = [[a.result() for a in g.accs] for _, g, _, _ in groups]
        for i in self.udf_aggs:   # one guest call per aggregate function for all groups
            f = self.aggs[i].udf
            values = f.call_many([[res[i]] for res in results])
            for res, v in zip(results, values):
                res[i] = v
        c = self.counters
        for (key, g, start, end), aggs in zip(groups, results):
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
        return sum(len(g) for g in self.windows.values()) + sum(len(s) for s in self.sessions.values()) \
            + len(self.buffers)

    def dump_state(self) -> dict:
        sigs = [a.signature for a in self.aggs]

        def accs(g: _Group) -> dict:
            return {s: a.state for s, a in zip(sigs, g.accs)}
        state: dict = {"wm": self.watermark, "max_ts": self.max_ts}
        if self.windows:
            state["windows"] = [[b[0], b[1], [[k, accs(g), _clean(g.row)] for k, g in groups.items()]]
                                for b, groups in self.windows.items()]
        if self.sessions:
            state["sessions"] = [[k, g.start, g.last, accs(g), _clean(g.row)]
                                 for k, ss in self.sessions.items() for g in ss]
        if self.buffers:
            state["buffers"] = [[k, [[ts, _clean(r)] for ts, r in buf], self.counts.get(k, 0)]
                                for k, buf in self.buffers.items()]
        return state

    def load_state(self, state: dict) -> None:
        self.watermark, self.max_ts = state.get("wm"), state.get("max_ts")

        def accs(saved: dict) -> list:
            return [a.new(_copy(saved[a.signature])) if a.signature in saved else a.new() for a in self.aggs]

        def key(k):
            return tuple(k) if isinstance(k, list) else k
        for start, end, groups in state.get("windows", []):
            self.windows[(start, end)] = {key(k): _Group(accs(a), row, args=self._args) for k, a, row in groups}
        for k, start, last, a, row in state.get("sessions", []):
            self.sessions.setdefault(key(k), []).append(_Group(accs(a), row, start, last))
        ends = [b[1] for b in self.windows]
        if self.window is not None and self.window.kind == "session":
            ends += [g.last + self.window.size for ss in self.sessions.values() for g in ss]
        self._due = min(ends, default=float("inf"))
        w = self.window
        for k, entries, n in state.get("buffers", []):
            buf = deque([(ts, r) for ts, r in entries], maxlen=w.size if w and w.kind == "count" else None)
            self.buffers[key(k)] = buf
            if n:
                self.counts[key(k)] = n


def _clean(row: dict | None) -> dict:
    return {k: v for k, v in (row or {}).items() if not k.startswith("\x00u")}


def _copy(v):
    return json.loads(json.dumps(v))


class RuleStateStore:
    """Checkpoints of rules' window state in SQLite (WAL), keyed by rule name and shape."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = open_db(self.path, synchronous="NORMAL", what="rule checkpoints",
                           schema="CREATE TABLE IF NOT EXISTS rule_state (rule TEXT PRIMARY KEY, "
                                  "shape TEXT NOT NULL, state TEXT NOT NULL, saved REAL NOT NULL)")
        self._lock = threading.Lock()

    def save(self, items: list[tuple[str, str, dict]]) -> None:
        rows = [(name, shape, json.dumps(state, separators=(",", ":")), time.time())
                for name, shape, state in items]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO rule_state VALUES (?,?,?,?)", rows)
            self._db.execute("COMMIT")

    def load(self, rule: str) -> tuple[str, dict] | None:
        with self._lock:
            row = self._db.execute("SELECT shape, state FROM rule_state WHERE rule = ?", (rule,)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def delete(self, rule: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM rule_state WHERE rule = ?", (rule,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RuleEngine:
    """All rules of a node over the messages they subscribe to. Not thread-safe: one caller."""

    def __init__(self, store: RuleStateStore | None = None):
        self.store = store
        self.rules: dict[str, CompiledRule] = {}
        self._by_filter: dict[str, list[CompiledRule]] = {}
        self._patterns: dict[str, TopicPattern] = {}
        self._topic_memo: dict[str, tuple[str, ...]] = {}
        self._batch_functions: list | None = None   # functions told where a batch starts and ends
        self.decode_errors = 0

    # -- management --------------------------------------------------------------------------
    def add(self, spec: RuleSpec) -> CompiledRule:
        """Create or update a rule (compiles first: a bad rule changes nothing)."""
        rule = CompiledRule(spec)
        old = self.rules.get(spec.name)
        if old is not None:
            if old.shape == rule.shape:
                rule.load_state(old.dump_state())
            rule.counters = old.counters
            rule.enabled = old.enabled
            self._unindex(old)
        elif self.store is not None:
            saved = self.store.load(spec.name)
            if saved is not None and saved[0] == rule.shape:
                rule.load_state(saved[1])
        self.rules[spec.name] = rule
        self._batch_functions = None
        self._by_filter.setdefault(rule.filter, []).append(rule)
        self._patterns[rule.filter] = rule.pattern if rule.pattern.names else \
            self._patterns.get(rule.filter, rule.pattern)
        self._topic_memo.clear()
        return rule

    def _unindex(self, rule: CompiledRule) -> None:
        lst = self._by_filter.get(rule.filter, [])
        if rule in lst:
            lst.remove(rule)
        if not lst:
            self._by_filter.pop(rule.filter, None)
            self._patterns.pop(rule.filter, None)
        self._topic_memo.clear()

    def remove(self, name: str) -> None:
        rule = self.rules.pop(name, None)
        self._batch_functions = None
        if rule is not None:
            self._unindex(rule)
        if self.store is not None:
            self.store.delete(name)
            self.store.delete(f"alert:{name}")

    def set_enabled(self, name: str, enabled: bool) -> None:
        self.rules[name].enabled = enabled

    # -- evaluation --------------------------------------------------------------------------
    def filters_for(self, topic: str) -> tuple[str, ...]:
        """The filters of enabled rules that match `topic`."""
        return tuple(f for f in self._filters_for(topic) if any(r.enabled for r in self._by_filter[f]))

    def _filters_for(self, topic: str) -> tuple[str, ...]:
        hit = self._topic_memo.get(topic)
        if hit is None:
            if len(self._topic_memo) > 50_000:
                self._topic_memo.clear()
            hit = self._topic_memo[topic] = tuple(f for f in self._by_filter if matches(f, topic))
        return hit

    def process(self, messages: Sequence[Message], only: str | None = None) -> list[Emission]:
        """Run every rule over the messages it subscribes to; returns what the rules emitted.

        `only`: the messages came from this filter's subscription; rules of other filters do
        not see them (a message matching two subscriptions arrives once from each)."""
        out: list[Emission] = []
        per_filter: dict[str, list[dict]] = {}
        loads = json.loads
        fixed = (only,) if only is not None and only in self._by_filter else None
        if only is not None and fixed is None:
            return out
        for m in messages:
            filters = fixed or self._filters_for(m.topic)
            if not filters:
                continue
            try:
                row = loads(m.payload)
            except ValueError:
                self.decode_errors += 1
                for f in filters:
                    for rule in self._by_filter[f]:
                        rule.counters.decode_errors += 1
                continue
            if not isinstance(row, dict):
                row = {"value": row}
            row[TOPIC] = m.topic
            row[TS] = int(m.timestamp_ms)
            for f in filters:
                lst = per_filter.get(f)
                if lst is None:
                    lst = per_filter[f] = []
                pat = self._patterns[f]
                lst.append({**row, **pat.capture(m.topic)} if pat.names else row)
        if not per_filter:
            return out
        fns = self._batch_functions
        if fns is None:   # WASM functions reuse a result for the same argument within the batch
            fns = self._batch_functions = list({id(f): f for r in self.rules.values()
                                                for f in r.spec.functions.values()
                                                if hasattr(f, "begin_batch")}.values())
        shared: dict = {}
        for fn in fns:
            fn.begin_batch(shared)
        try:
            for f, rows in per_filter.items():
                for rule in self._by_filter[f]:
                    rule.evaluate(rows, out)
        finally:
            for fn in fns:
                fn.end_batch()
        return out

    def tick(self, now_ms: int | None = None) -> list[Emission]:
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        out: list[Emission] = []
        for rule in self.rules.values():
            rule.tick(now_ms, out)
        return out

    def checkpoint(self) -> None:
        if self.store is None:
            return
        self.store.save([(r.name, r.shape, r.dump_state()) for r in self.rules.values() if r.window])

    def stats(self) -> dict[str, dict]:
        return {n: {**r.counters.as_dict(), "enabled": r.enabled, "open_windows": r.open_windows(),
                    "watermark": r.watermark} for n, r in self.rules.items()}
