"""Every kind of window against a brute-force reference, on random streams.

A stream is random events (keys, event times out of order within and beyond the allowed
lateness, values with NULLs, messages that WHERE rejects) cut into random batches, with
random window parameters; in some examples the engine checkpoints to SQLite in the middle and
a new engine continues from the database. The reference knows nothing of the engine's state:
it decides which events are late by replaying the stream's watermark, then computes every
window and its aggregates from the whole set of events that counted, naively (one window at a
time, every aggregate from its list of values). The engine must emit exactly those windows:
those that end at or before the last watermark for time windows, one per message for sliding
windows, every n-th (m-th) message for count windows.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from iotwasm.message import Message
from iotwasm.pipeline.rules import EventTime, RuleEngine, RuleSpec, RuleStateStore


@dataclass(frozen=True)
class Event:
    i: int            # arrival order
    ts: int           # event time (ms)
    d: str            # first GROUP BY key
    e: int            # second GROUP BY key (when the rule groups by two)
    v: int | None     # the aggregated value
    c: object         # for count(DISTINCT c): strings and numbers ("1" and 1 are two values)
    keep: bool        # WHERE keep = 1


P = 0.25   # percentile(v, P)
AGGS = ("count(*) AS n, count(v) AS nv, sum(v) AS s, min(v) AS lo, max(v) AS hi, avg(v) AS a, "
        f"stddev(v) AS sd, percentile(v, {P}) AS p, first(v) AS f, last(v) AS l, "
        "count(DISTINCT c) AS dc, window_start() AS ws, window_end() AS we, i AS last_i")


# --- the reference -----------------------------------------------------------------------

def counted(events: list[Event], lateness: int) -> tuple[list[Event], int | None, int]:
    """The events that reach the windows (not late, passed WHERE), the last watermark, and
    how many were late. Every event on time moves the watermark, WHERE or not."""
    out, max_ts, late = [], None, 0
    for ev in events:
        if max_ts is not None and ev.ts < max_ts - lateness:
            late += 1
            continue
        max_ts = ev.ts if max_ts is None else max(max_ts, ev.ts)
        if ev.keep:
            out.append(ev)
    return out, None if max_ts is None else max_ts - lateness, late


def row(keys: tuple, members: list[Event], start: int, end: int, by_e: bool) -> dict:
    """One window's output, from its events."""
    vals = [ev.v for ev in members if ev.v is not None]
    by_time = sorted(members, key=lambda ev: (ev.ts, ev.i))   # among equal times, arrival order
    first = min(by_time, key=lambda ev: ev.ts)                # the first of the earliest
    last = [ev for ev in by_time if ev.ts == by_time[-1].ts][-1]
    mean = sum(vals) / len(vals) if vals else None
    r = {"d": keys[0]}
    if by_e:
        r["e"] = keys[1]
    r.update(n=len(members), nv=len(vals), s=sum(vals) if vals else None,
             lo=min(vals) if vals else None, hi=max(vals) if vals else None, a=mean,
             sd=math.sqrt(sum((x - mean) ** 2 for x in vals) / len(vals)) if vals else None,
             p=percentile(vals), f=first.v, l=last.v,
             dc=len({(type(ev.c).__name__, ev.c) for ev in members if ev.c is not None}),
             ws=start, we=end, last_i=max(ev.i for ev in members))
    return r


def percentile(vals: list[int]):
    if not vals:
        return None
    s = sorted(vals)
    k = (len(s) - 1) * P
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def by_key(events: list[Event], by_e: bool) -> dict[tuple, list[Event]]:
    out: dict[tuple, list[Event]] = {}
    for ev in events:
        out.setdefault((ev.d, ev.e) if by_e else (ev.d,), []).append(ev)
    return out


def expect_fixed(events, wm, size, hop, by_e):
    """Tumbling (hop = size) and hopping: every window [k·hop, k·hop + size) that has events
    and ends at or before the last watermark."""
    out = []
    for keys, evs in by_key(events, by_e).items():
        lo = min(ev.ts for ev in evs) - size
        for start in range(lo - lo % hop, max(ev.ts for ev in evs) + 1, hop):
            members = [ev for ev in evs if start <= ev.ts < start + size]
            if members and start + size <= wm:
                out.append(row(keys, members, start, start + size, by_e))
    return out


def expect_session(events, wm, gap, by_e):
    """Per key, events in time order, cut where two are `gap` or more apart."""
    out = []
    for keys, evs in by_key(events, by_e).items():
        evs = sorted(evs, key=lambda ev: ev.ts)
        runs = [[evs[0]]]
        for ev in evs[1:]:
            if ev.ts - runs[-1][-1].ts < gap:
                runs[-1].append(ev)
            else:
                runs.append([ev])
        out += [row(keys, run, run[0].ts, run[-1].ts + gap, by_e) for run in runs
                if run[-1].ts + gap <= wm]
    return out


def expect_sliding(events, size, by_e):
    """At each event, (ts − size, ts] over the events of its key that arrived before it."""
    out = []
    for ev in events:
        keys = (ev.d, ev.e) if by_e else (ev.d,)
        members = [x for x in events[:events.index(ev) + 1]
                   if ((x.d, x.e) if by_e else (x.d,)) == keys and ev.ts - size < x.ts <= ev.ts]
        out.append(row(keys, members, ev.ts - size, ev.ts, by_e))
    return out


def expect_count(events, n, m, by_e):
    """At a key's n-th event and every m-th after it, over its last n events."""
    out = []
    seen: dict[tuple, list[Event]] = {}
    for ev in events:
        keys = (ev.d, ev.e) if by_e else (ev.d,)
        mine = seen.setdefault(keys, [])
        mine.append(ev)
        if len(mine) >= n and (len(mine) - n) % m == 0:
            members = mine[-n:]
            out.append(row(keys, members, members[0].ts, members[-1].ts, by_e))
    return out


# --- the engine --------------------------------------------------------------------------

def run_engine(sql: str, lateness: int, events: list[Event], cuts: list[int],
               restart_at: int | None) -> tuple[list[dict], int]:
    """The stream through a RuleEngine in batches (cut at `cuts`); at `restart_at` the engine
    checkpoints to SQLite and a new one continues from the database."""
    et = EventTime("ts", lateness_ms=lateness)
    msgs = [Message(f"s/{ev.d}", json.dumps({"ts": ev.ts, "d": ev.d, "e": ev.e, "v": ev.v, "c": ev.c,
                                             "keep": int(ev.keep), "i": ev.i}).encode(), 0)
            for ev in events]
    bounds = sorted({0, len(msgs), *(c for c in cuts if c < len(msgs)),
                     *([restart_at] if restart_at is not None else [])})
    with tempfile.TemporaryDirectory() as tmp:
        store = RuleStateStore(Path(tmp) / "rules.db")
        engine = RuleEngine(store)
        engine.add(RuleSpec("w", sql, et))
        out, late = [], 0
        for a, b in pairwise(bounds):
            if a == restart_at:
                engine.checkpoint()
                late += engine.stats()["w"]["late"]
                store.close()
                store = RuleStateStore(Path(tmp) / "rules.db")
                engine = RuleEngine(store)
                engine.add(RuleSpec("w", sql, et))
            out += [em.row for em in engine.process(msgs[a:b])]
        late += engine.stats()["w"]["late"]
        store.close()
    return out, late


# --- the properties ----------------------------------------------------------------------

@st.composite
def streams(draw, max_lateness: int = 30) -> tuple[list[Event], int, list[int], int | None, bool]:
    """Events whose times go forward by small steps and arrive up to lateness + 10 ms out of
    order (so some are late), random batches, maybe a restart in the middle."""
    lateness = draw(st.integers(0, max_lateness))
    n = draw(st.integers(0, 60))
    t, events = 0, []
    for i in range(n):
        t += draw(st.integers(0, 12))
        events.append(Event(i, max(0, t - draw(st.integers(0, lateness + 10))),
                            draw(st.sampled_from("ab")), draw(st.integers(0, 1)),
                            draw(st.none() | st.integers(-20, 20)),
                            draw(st.sampled_from(["x", "y", "1", 1, None])),
                            draw(st.integers(0, 4)) > 0))
    cuts = draw(st.lists(st.integers(1, max(1, n)), max_size=6))
    restart_at = draw(st.none() | st.integers(0, n))
    return events, lateness, cuts, restart_at, draw(st.booleans())


def check(window: str, stream, expect) -> None:
    events, lateness, cuts, restart_at, by_e = stream
    sql = f'SELECT d, {"e, " if by_e else ""}{AGGS} FROM "s/+" WHERE keep = 1 GROUP BY d, {"e, " if by_e else ""}{window}'
    got, late = run_engine(sql, lateness, events, cuts, restart_at)
    counted_events, wm, expected_late = counted(events, lateness)
    want = expect(counted_events, wm, by_e) if counted_events else []
    assert late == expected_late
    assert_same_windows(got, want, ordered=window.startswith(("SLIDING", "COUNT")))


def assert_same_windows(got: list[dict], want: list[dict], ordered: bool) -> None:
    """The same windows (stddev up to rounding); time windows come out in order of their end,
    sliding and count windows in the order of the messages that completed them."""
    if not ordered:
        ends = [r["we"] for r in got]
        assert ends == sorted(ends), "windows emitted out of order"
        def order(r: dict) -> tuple:
            return r["we"], r["ws"], r["d"], r.get("e", 0)
        got, want = sorted(got, key=order), sorted(want, key=order)
    assert [{k: v for k, v in r.items() if k != "sd"} for r in got] == \
           [{k: v for k, v in r.items() if k != "sd"} for r in want]
    for g, w in zip(got, want):
        assert (g["sd"] is None) == (w["sd"] is None)
        assert g["sd"] is None or math.isclose(g["sd"], w["sd"], rel_tol=1e-9, abs_tol=1e-9), (g, w)


PROPERTY = settings(max_examples=120, deadline=None)


@PROPERTY
@given(streams(), st.integers(1, 40))
def test_tumbling_windows_match_the_reference(stream, size):
    check(f"TUMBLINGWINDOW(ms, {size})", stream,
          lambda evs, wm, by_e: expect_fixed(evs, wm, size, size, by_e))


@PROPERTY
@given(streams(), st.integers(1, 40), st.data())
def test_hopping_windows_match_the_reference(stream, size, data):
    hop = data.draw(st.integers(1, size))
    check(f"HOPPINGWINDOW(ms, {size}, {hop})", stream,
          lambda evs, wm, by_e: expect_fixed(evs, wm, size, hop, by_e))


@PROPERTY
@given(streams(), st.integers(1, 20))   # gaps of the order of the steps: sessions to merge
def test_session_windows_match_the_reference(stream, gap):
    check(f"SESSIONWINDOW(ms, {gap})", stream,
          lambda evs, wm, by_e: expect_session(evs, wm, gap, by_e))


@PROPERTY
@given(streams(), st.integers(1, 40))
def test_sliding_windows_match_the_reference(stream, size):
    check(f"SLIDINGWINDOW(ms, {size})", stream,
          lambda evs, wm, by_e: expect_sliding(evs, size, by_e))


@PROPERTY
@given(streams(), st.integers(1, 6), st.integers(1, 6))
def test_count_windows_match_the_reference(stream, n, m):
    check(f"COUNTWINDOW({n}, {m})", stream,
          lambda evs, wm, by_e: expect_count(evs, n, m, by_e))
