"""Windows: which window an event belongs to, when a window closes, and what a checkpoint keeps.

One class per kind of window (all per GROUP BY key; times in ms):

  TUMBLINGWINDOW(unit, size)       [k·size, (k+1)·size), closed when the watermark reaches the end
  HOPPINGWINDOW(unit, size, hop)   [k·hop, k·hop+size), idem
  SLIDINGWINDOW(unit, size)        (ts−size, ts] at each message, at once
  SESSIONWINDOW(unit, gap)         messages less than `gap` apart, [first, last+gap), closed when
                                   the watermark reaches last+gap
  COUNTWINDOW(n[, m])              every n messages (every m, over the last n)

They share one interface (`Windows`): the rule hands `add` each event that passed WHERE with
its key and event time and gets back the windows that event completed (sliding and count
windows complete at a message); when the rule's watermark reaches `due`, `close` gives back
the windows that end at or before it. `dump` and `load` are the checkpointed state, in one
JSON shape per kind that stays readable across versions.
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .aggregates import Aggregates, Group
from .parser import Node, RuleSyntaxError

UNITS = {"ms": 1, "ss": 1000, "s": 1000, "mi": 60_000, "m": 60_000, "hh": 3_600_000,
         "h": 3_600_000, "dd": 86_400_000, "d": 86_400_000}

INF = float("inf")


@dataclass(frozen=True)
class WindowSpec:
    kind: str            # tumbling hopping sliding session count
    size: int = 0        # ms, or messages for count
    hop: int = 0         # ms, or messages for count
    text: str = ""


def window_spec(g: Node, rule: str) -> WindowSpec:
    """The window of a GROUP BY item (`TUMBLINGWINDOW(ss, 10)`), checked, in ms."""
    name, args, _ = g.args

    def err(msg: str, at: Node = g) -> RuleSyntaxError:
        return RuleSyntaxError(msg, at.line, at.column, rule)

    def num(i: int) -> float:
        a = args[i]
        if a.kind != "lit" or not isinstance(a.args[0], (int, float)) or a.args[0] <= 0:
            raise err(f"{name.upper()}: argument {i + 1} must be a positive number", a)
        return a.args[0]
    text = g.text.lower().replace(" ", "")
    if name == "countwindow":
        if len(args) not in (1, 2):
            raise err("COUNTWINDOW(n) or COUNTWINDOW(n, every)")
        n = int(num(0))
        return WindowSpec("count", n, int(num(1)) if len(args) == 2 else n, text)
    shape = {"tumblingwindow": "(unit, size)", "hoppingwindow": "(unit, size, hop)",
             "slidingwindow": "(unit, size)", "sessionwindow": "(unit, gap)"}[name]
    want = shape.count(",") + 1
    if len(args) != want:
        raise err(f"{name.upper()}{shape} takes {want} arguments, got {len(args)}")
    u = args[0]
    if u.kind != "col" or len(u.args) != 1 or u.args[0].lower() not in UNITS:
        raise err(f"{name.upper()}: the first argument is a time unit (ms, ss, mi, hh, dd)", u)
    unit = UNITS[u.args[0].lower()]
    size = int(num(1) * unit)
    kind = name[:-6]
    if kind == "hopping":
        hop = int(num(2) * unit)
        if hop > size:
            raise err("HOPPINGWINDOW: the hop must not be larger than the size")
        return WindowSpec(kind, size, hop, text)
    return WindowSpec(kind, size, 0, text)


class Closed(NamedTuple):
    """A window ready to be emitted: its key, its group, its bounds (ms)."""

    key: Any
    group: Group
    start: int
    end: int


def without_udf_results(row: dict) -> dict:
    """A row to keep beyond its batch (window buffers, checkpoints): without the batch-local
    results of WASM function calls."""
    return {k: v for k, v in row.items() if not k.startswith("\x00u")}


def _key(k: Any) -> Any:
    """A GROUP BY key back from JSON (several keys are a tuple)."""
    return tuple(k) if isinstance(k, list) else k


class Windows(abc.ABC):
    """The open windows of one rule, for one kind of window."""

    #: no window can close before the watermark reaches this
    due: float = INF

    def __init__(self, spec: WindowSpec, aggs: Aggregates):
        self.size = spec.size
        self.hop = spec.hop
        self.aggs = aggs

    @abc.abstractmethod
    def add(self, key: Any, ts: int, row: dict, watermark: int | None) -> list[Closed] | None:
        """Put one event in its windows; returns the windows it completes, if any."""

    def close(self, watermark: int) -> list[Closed]:
        """Take out the windows that end at or before the watermark, in order of their end."""
        return []

    @abc.abstractmethod
    def open(self) -> int:
        """How many windows (groups) are open."""

    @abc.abstractmethod
    def dump(self) -> dict:
        """The open windows, JSON-able, for a checkpoint."""

    @abc.abstractmethod
    def load(self, state: dict) -> None:
        """Continue from a checkpoint (`dump()` of a rule of the same shape)."""


class TumblingWindows(Windows):
    """[k·size, (k+1)·size): each event is in exactly one window."""

    def __init__(self, spec: WindowSpec, aggs: Aggregates):
        super().__init__(spec, aggs)
        self.windows: dict[int, dict[Any, Group]] = {}   # start → key → group

    def add(self, key: Any, ts: int, row: dict, watermark: int | None) -> None:
        start = ts - ts % self.size
        groups = self.windows.get(start)
        if groups is None:
            groups = self.windows[start] = {}
            self.due = min(self.due, start + self.size)
        g = groups.get(key)
        if g is None:
            g = groups[key] = self.aggs.group(row)
        g.add(row, ts)

    def close(self, watermark: int) -> list[Closed]:
        size, windows = self.size, self.windows
        closed = [Closed(k, g, s, s + size) for s in sorted(s for s in windows if s + size <= watermark)
                  for k, g in windows.pop(s).items()]
        self.due = min(windows, default=INF) + size
        return closed

    def open(self) -> int:
        return sum(len(groups) for groups in self.windows.values())

    def dump(self) -> dict:
        if not self.windows:
            return {}
        state = self.aggs.state
        return {"windows": [[s, s + self.size, [[k, state(g), without_udf_results(g.row)] for k, g in groups.items()]]
                            for s, groups in self.windows.items()]}

    def load(self, state: dict) -> None:
        for start, _end, groups in state.get("windows", []):
            self.windows[start] = {_key(k): self.aggs.group(row, saved=a) for k, a, row in groups}
        self.due = min(self.windows, default=INF) + self.size


class HoppingWindows(TumblingWindows):
    """[k·hop, k·hop + size): each event is in size/hop windows (rounded up)."""

    def add(self, key: Any, ts: int, row: dict, watermark: int | None) -> None:
        size, windows = self.size, self.windows
        start = ts - ts % self.hop
        while start > ts - size:
            groups = windows.get(start)
            if groups is None:
                groups = windows[start] = {}
                self.due = min(self.due, start + size)
            g = groups.get(key)
            if g is None:
                g = groups[key] = self.aggs.group(row)
            g.add(row, ts)
            start -= self.hop


class SessionWindows(Windows):
    """Per key, events less than `gap` apart: a session [first, last + gap) closes when the
    watermark reaches last + gap. An event less than `gap` from several sessions (one that
    arrived out of order) joins them into one. A closed session cannot be joined: an event
    that would reach it is behind the watermark, hence late."""

    def __init__(self, spec: WindowSpec, aggs: Aggregates):
        super().__init__(spec, aggs)
        self.gap = spec.size
        self.sessions: dict[Any, list[Group]] = {}

    def add(self, key: Any, ts: int, row: dict, watermark: int | None) -> None:
        gap = self.gap
        sessions = self.sessions.get(key)
        if sessions is None:
            sessions = self.sessions[key] = []
        near = [g for g in sessions if g.start - gap < ts < g.last + gap]
        if not near:
            g = self.aggs.group(row, ts, ts)
            sessions.append(g)
        else:
            g = near[0] if len(near) == 1 else self._join(sessions, near)
            if ts < g.start:
                g.start = ts
            elif ts > g.last:
                g.last = ts
        self.due = min(self.due, g.last + gap)
        g.add(row, ts)

    def _join(self, sessions: list[Group], near: list[Group]) -> Group:
        """Merge sessions into the earliest of them (their times do not overlap)."""
        near.sort(key=lambda g: g.start)
        into = near[0]
        for g in near[1:]:
            self.aggs.merge(into, g)
            into.last = max(into.last, g.last)
            sessions.remove(g)
        return into

    def close(self, watermark: int) -> list[Closed]:
        gap = self.gap
        closed = []
        for key, sessions in list(self.sessions.items()):
            keep = [g for g in sessions if g.last + gap > watermark]
            closed += [Closed(key, g, g.start, g.last + gap) for g in sessions if g.last + gap <= watermark]
            if keep:
                self.sessions[key] = keep
            else:
                del self.sessions[key]
        closed.sort(key=lambda c: c.end)
        self._set_due()
        return closed

    def _set_due(self) -> None:
        self.due = min((g.last + self.gap for ss in self.sessions.values() for g in ss), default=INF)

    def open(self) -> int:
        return sum(len(s) for s in self.sessions.values())

    def dump(self) -> dict:
        if not self.sessions:
            return {}
        state = self.aggs.state
        return {"sessions": [[k, g.start, g.last, state(g), without_udf_results(g.row)]
                             for k, ss in self.sessions.items() for g in ss]}

    def load(self, state: dict) -> None:
        for k, start, last, a, row in state.get("sessions", []):
            self.sessions.setdefault(_key(k), []).append(self.aggs.group(row, start, last, saved=a))
        self._set_due()


class _BufferedWindows(Windows):
    """Windows computed from the messages they keep (sliding, count): per key, a buffer of
    (event time, row) and how many messages it has seen."""

    def __init__(self, spec: WindowSpec, aggs: Aggregates):
        super().__init__(spec, aggs)
        self.buffers: dict[Any, deque] = {}
        self.counts: dict[Any, int] = {}

    def _over(self, key: Any, entries: Iterable[tuple[int, dict]], start: int, end: int) -> Closed:
        """A window of the buffered messages `entries`."""
        g = self.aggs.group({})
        for ts, row in entries:
            g.add(row, ts)
        return Closed(key, g, start, end)

    def open(self) -> int:
        return len(self.buffers)

    def dump(self) -> dict:
        if not self.buffers:
            return {}
        return {"buffers": [[k, [[ts, without_udf_results(r)] for ts, r in buf], self.counts.get(k, 0)]
                            for k, buf in self.buffers.items()]}

    def load(self, state: dict) -> None:
        for k, entries, n in state.get("buffers", []):
            self.buffers[_key(k)] = self._buffer([(ts, r) for ts, r in entries])
            if n:
                self.counts[_key(k)] = n

    @abc.abstractmethod
    def _buffer(self, entries: list) -> deque:
        """A new buffer for one key."""


class SlidingWindows(_BufferedWindows):
    """(ts − size, ts] at each message, over the messages of its key that arrived so far.
    Messages too old for any window to come (at or before watermark − size) are dropped."""

    def _buffer(self, entries: list) -> deque:
        return deque(entries)

    def add(self, key: Any, ts: int, row: dict, watermark: int | None) -> list[Closed]:
        size = self.size
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = self._buffer([])
        entry = (ts, without_udf_results(row))
        if not buf or buf[-1][0] <= ts:
            buf.append(entry)
        else:   # out of order: into its place, after those of the same time
            items = sorted([*buf, entry], key=lambda e: e[0])
            buf.clear()
            buf.extend(items)
        floor = (watermark if watermark is not None else ts) - size
        while buf and buf[0][0] <= floor:
            buf.popleft()
        return [self._over(key, [e for e in buf if ts - size < e[0] <= ts], ts - size, ts)]


class CountWindows(_BufferedWindows):
    """COUNTWINDOW(n, m): at the n-th message of a key and every m-th after it, over its last
    n messages (n = m: every n messages, each in one window). Event time plays no part."""

    def _buffer(self, entries: list) -> deque:
        return deque(entries, maxlen=self.size)

    def add(self, key: Any, ts: int, row: dict, watermark: int | None) -> list[Closed] | None:
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = self._buffer([])
        buf.append((ts, without_udf_results(row)))
        n = self.counts.get(key, 0) + 1
        self.counts[key] = n
        if n < self.size or (n - self.size) % self.hop:
            return None
        closed = self._over(key, buf, buf[0][0], buf[-1][0])
        if self.hop == self.size:
            buf.clear()
            self.counts[key] = 0
        return [closed]


KINDS: dict[str, type[Windows]] = {"tumbling": TumblingWindows, "hopping": HoppingWindows,
                                   "sliding": SlidingWindows, "session": SessionWindows,
                                   "count": CountWindows}


def open_windows(spec: WindowSpec, aggs: Aggregates) -> Windows:
    """The windows of a rule with this window, empty."""
    return KINDS[spec.kind](spec, aggs)
