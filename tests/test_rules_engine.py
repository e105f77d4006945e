"""The rules engine against hand-computed results: every window type (boundaries, late data),
aggregates, scalar functions, parse errors with positions, state kept across restarts and
updates, WASM functions (a real module in wasmtime) and a trapping one isolated."""

from __future__ import annotations

import json

import pytest

from iotwasm.container import WasmContainer
from iotwasm.engine import Capabilities
from iotwasm.message import Message
from iotwasm.pipeline.rules import (EventTime, RuleEngine, RuleSpec, RuleStateStore, RuleSyntaxError,
                                    WasmFunction, parse)

from conftest import EXAMPLES, TEST_MODULES

ET = EventTime("ts")


def msgs(*readings, topic="s/a"):
    """(ts, v) or (ts, v, extra-dict) → messages on `topic`."""
    out = []
    for r in readings:
        body = {"ts": r[0], "v": r[1], **(r[2] if len(r) > 2 else {})}
        out.append(Message(body.pop("topic", topic), json.dumps(body).encode(), 0))
    return out


def engine(sql, et=ET, **kw):
    e = RuleEngine(**kw)
    e.add(RuleSpec("r", sql, et))
    return e


def rows(emissions):
    return [em.row for em in emissions]


def feed(e, *readings, topic="s/a"):
    out = []
    for m in msgs(*readings, topic=topic):
        out += rows(e.process([m]))
    return out


W = "window_start() AS ws, window_end() AS we"


def test_tumbling_boundaries_and_late_data():
    e = engine(f'SELECT sum(v) AS s, count(*) AS n, {W} FROM "s/a" GROUP BY TUMBLINGWINDOW(ss, 10)')
    assert feed(e, (0, 1), (5000, 2), (9999, 3)) == []          # nothing closed yet
    # 10000 belongs to the next window and moves the watermark to its start: [0, 10000) closes
    assert feed(e, (10000, 10)) == [{"s": 6, "n": 3, "ws": 0, "we": 10000}]
    assert feed(e, (15000, 20), (25000, 5)) == [{"s": 30, "n": 2, "ws": 10000, "we": 20000}]
    assert feed(e, (9000, 100)) == []                          # older than the watermark: late
    assert e.stats()["r"]["late"] == 1
    assert feed(e, (30000, 1)) == [{"s": 5, "n": 1, "ws": 20000, "we": 30000}]  # 100 not counted


def test_tumbling_allowed_lateness():
    e = engine(f'SELECT sum(v) AS s, {W} FROM "s/a" GROUP BY TUMBLINGWINDOW(ss, 10)',
               EventTime("ts", "ms", lateness_ms=2000))
    assert feed(e, (0, 1), (11000, 5)) == []     # watermark 9000: [0,10000) still open
    assert feed(e, (9500, 2)) == []              # out of order but within lateness: counted
    assert feed(e, (12500, 7)) == [{"s": 3, "ws": 0, "we": 10000}]   # watermark 10500
    assert feed(e, (8000, 50)) == []             # 8000 < 10500: late
    assert e.stats()["r"]["late"] == 1
    assert feed(e, (40000, 0)) == [{"s": 12, "ws": 10000, "we": 20000}]


def test_a_quiet_event_time_stream_closes_its_windows_after_the_idle_timeout():
    sql = f'SELECT sum(v) AS s, {W} FROM "s/a" GROUP BY TUMBLINGWINDOW(ss, 10)'
    waits = engine(sql, EventTime("ts"))
    idles = engine(sql, EventTime("ts", idle_ms=5000))
    for e in (waits, idles):
        assert feed(e, (0, 1), (4000, 2)) == []
    for now in (100_000, 103_000, 104_900):             # the clock at which ticks run
        assert rows(waits.tick(now)) == [] and rows(idles.tick(now)) == []
    assert rows(waits.tick(200_000)) == []              # without idleTimeout: open until the next event
    # quiet for 5 s of processing time since the tick that saw 4000: event time goes on from it
    assert rows(idles.tick(105_000)) == []              # watermark 4000 + 5000 = 9000 < 10000
    assert rows(idles.tick(106_000)) == [{"s": 3, "ws": 0, "we": 10000}]
    assert feed(idles, (8000, 50)) == []                # behind the watermark now: late
    assert idles.stats()["r"]["late"] == 1
    assert feed(idles, (31000, 4)) == []                # the stream resumes: event time rules again
    assert rows(idles.tick(107_000)) == []              # a newer event: quiet again from this tick


def test_tumbling_event_time_in_seconds_and_groups():
    e = engine(f'SELECT d, max(v) AS m, {W} FROM "s/+" GROUP BY d, TUMBLINGWINDOW(ss, 10)',
               EventTime("ts", "s"))
    out = feed(e, (1, 5, {"d": "x"}), (2, 7, {"d": "y"}), (3, 6, {"d": "x"}), (11, 0, {"d": "x"}))
    assert sorted(out, key=lambda r: r["d"]) == [{"d": "x", "m": 6, "ws": 0, "we": 10000},
                                                 {"d": "y", "m": 7, "ws": 0, "we": 10000}]


def test_hopping_windows_overlap():
    e = engine(f'SELECT sum(v) AS s, {W} FROM "s/a" GROUP BY HOPPINGWINDOW(ss, 10, 5)')
    assert feed(e, (1000, 1), (6000, 2)) == [{"s": 1, "ws": -5000, "we": 5000}]
    # 12000: windows ending at or before it close — [0, 10000) has 1 and 2
    assert feed(e, (12000, 4)) == [{"s": 3, "ws": 0, "we": 10000}]
    assert feed(e, (30000, 0)) == [{"s": 6, "ws": 5000, "we": 15000}, {"s": 4, "ws": 10000, "we": 20000}]


def test_sliding_window_emits_per_message_over_the_last_size():
    e = engine(f'SELECT sum(v) AS s, count(*) AS n, {W} FROM "s/a" GROUP BY SLIDINGWINDOW(ss, 10)')
    assert feed(e, (1000, 1)) == [{"s": 1, "n": 1, "ws": -9000, "we": 1000}]
    assert feed(e, (5000, 2)) == [{"s": 3, "n": 2, "ws": -5000, "we": 5000}]
    # (1000, 11000]: the reading at exactly 1000 has left the window
    assert feed(e, (11000, 4)) == [{"s": 6, "n": 2, "ws": 1000, "we": 11000}]
    assert feed(e, (4000, 9)) == []  # late
    assert e.stats()["r"]["late"] == 1


def test_session_window_closes_after_the_gap():
    e = engine(f'SELECT sum(v) AS s, count(*) AS n, {W} FROM "s/a" GROUP BY SESSIONWINDOW(ss, 5)')
    assert feed(e, (0, 1), (3000, 2), (7000, 3)) == []       # gaps of 3 s and 4 s: one session
    # 13000 is 6 s after 7000: a new session; the watermark passes 7000+5000, the first closes
    assert feed(e, (13000, 4)) == [{"s": 6, "n": 3, "ws": 0, "we": 12000}]
    assert feed(e, (17999, 1)) == []   # 4999 ms after 13000: same session
    assert feed(e, (40000, 0)) == [{"s": 5, "n": 2, "ws": 13000, "we": 22999}]


def test_count_windows():
    e = engine('SELECT sum(v) AS s FROM "s/a" GROUP BY COUNTWINDOW(3)')
    assert feed(e, *[(i, i) for i in range(1, 8)]) == [{"s": 6}, {"s": 15}]
    e = engine('SELECT sum(v) AS s, first(v) AS f, last(v) AS l FROM "s/a" GROUP BY COUNTWINDOW(3, 2)')
    assert feed(e, *[(i, i) for i in range(1, 8)]) == [{"s": 6, "f": 1, "l": 3}, {"s": 12, "f": 3, "l": 5},
                                                       {"s": 18, "f": 5, "l": 7}]


def test_aggregates_by_hand():
    e = engine('SELECT count(*) AS n, count(x) AS nx, sum(v) AS s, avg(v) AS a, min(v) AS lo, '
               'max(v) AS hi, stddev(v) AS sd, percentile(v, 0.5) AS p50, percentile(v, 0.9) AS p90, '
               'first(v) AS f, last(v) AS l, count(DISTINCT c) AS dc, distinct_count(c) AS dc2 '
               'FROM "s/a" GROUP BY TUMBLINGWINDOW(ss, 10)', EventTime("ts", lateness_ms=10_000))
    # out of order: first/last follow event time, not arrival
    data = [(3000, 4, {"c": "a", "x": 1}), (1000, 2, {"c": "b"}), (2000, 4, {"c": "a"}),
            (4000, 5, {"c": "b", "x": None}), (5000, 5, {"c": "c"}), (6000, 7, {"c": "a"}),
            (7000, 9, {"c": "a"}), (500, 4, {"c": "c"})]
    assert feed(e, *data) == []
    [out] = feed(e, (20000, 0))
    # values 4 2 4 5 5 7 9 4: n 8, sum 40, mean 5, squared deviations 1+9+1+0+0+4+16+1 = 32
    assert out == {"n": 8, "nx": 1, "s": 40, "a": 5.0, "lo": 2, "hi": 9, "sd": pytest.approx(2.0), "p50": 4.5,
                   "p90": pytest.approx(7.6), "f": 4, "l": 9, "dc": 3, "dc2": 3}


def test_where_having_case_and_scalar_functions():
    e = engine("""SELECT d, avg(v) AS t,
                   CASE WHEN avg(v) > 30 THEN 'hot' WHEN avg(v) > 20 THEN 'warm' ELSE 'cool' END AS level,
                   upper(d) || '-' || string(round(avg(v) * 10) / 10) AS label
                  FROM "s/+" WHERE v BETWEEN -50 AND 150 AND d LIKE 'dev%' AND d NOT IN ('dev9')
                  GROUP BY d, TUMBLINGWINDOW(ss, 10) HAVING t > 20""")
    out = feed(e, (0, 31, {"d": "dev1"}), (1, 200, {"d": "dev1"}), (2, 25, {"d": "dev2"}),
               (3, 10, {"d": "dev3"}), (4, 40, {"d": "dev9"}), (5, 20.55, {"d": "dev2"}),
               (20000, 0, {"d": "x"}))
    assert sorted(out, key=lambda r: r["d"]) == [
        {"d": "dev1", "t": 31, "level": "hot", "label": "DEV1-31.0"},
        {"d": "dev2", "t": 22.775, "level": "warm", "label": "DEV2-22.8"}]


def test_stateless_rule_projections_json_path_time_and_topic_captures():
    e = engine("""SELECT dev, json_path(meta, '$.loc[1]') AS room, meta.fw AS fw, topic() AS t,
                  format_time(ts, '%H:%M') AS hm, abs(v) + sqrt(16) AS x, coalesce(y, 'none') AS y
                  FROM "site/{dev}/climate" WHERE v < 0 OR meta.fw = '1.2'""", EventTime())
    m = [Message("site/d7/climate", json.dumps({"ts": 3_600_000 * 5 + 60_000 * 7, "v": -2,
                                                "meta": {"loc": ["b1", "r3"], "fw": "1.0"}}).encode()),
         Message("site/d8/climate", json.dumps({"ts": 0, "v": 2, "meta": {"fw": "1.0"}}).encode()),
         Message("other/d8/climate", json.dumps({"ts": 0, "v": -1}).encode())]
    assert rows(e.process(m)) == [{"dev": "d7", "room": "r3", "fw": "1.0", "t": "site/d7/climate",
                                   "hm": "05:07", "x": 6.0, "y": "none"}]


def test_evaluation_errors_are_counted_and_the_rule_goes_on():
    e = engine('SELECT v / z AS q FROM "s/a" WHERE v > 0', EventTime())
    out = rows(e.process(msgs((0, 1, {"z": 0}), (0, "x", {"z": 1}), (0, 4, {"z": 2})) +
                         [Message("s/a", b"not json")]))
    assert out == [{"q": 2.0}]
    st = e.stats()["r"]
    assert st["errors"] == 2 and st["decode_errors"] == 1
    assert "division by zero" in st["last_error"] or "compare" in st["last_error"]


def test_processing_time_windows_close_on_tick():
    e = RuleEngine()
    e.add(RuleSpec("r", 'SELECT count(*) AS n FROM "s/a" GROUP BY TUMBLINGWINDOW(ss, 1)'))
    ms = [Message("s/a", b"{}", t) for t in (1_000_100, 1_000_200, 1_000_900)]
    assert e.process(ms) == []
    # the clock trails by a second (queued messages are not made late by it)
    assert rows(e.tick(1_001_999)) == []
    assert rows(e.tick(1_002_000)) == [{"n": 3}]


@pytest.mark.parametrize("sql, line, column, words", [
    ("SELECT a FROM", 1, 14, "ends too early"),
    ("SELECT a,\nFROM x", 2, 1, "unexpected 'FROM'"),
    ("SELECT a\nFROM \"s/a\"\nWHERE a > > 1", 3, 11, "unexpected '>'"),
    ("SELECT a FROM x WHERE b = #", 1, 27, "unexpected character '#'"),
    ("SELECT avgg(a) FROM x GROUP BY TUMBLINGWINDOW(ss, 1)", 1, 8, "unknown function avgg()"),
    ("SELECT avg(a) FROM x", 1, 8, "aggregates need a window"),
    ("SELECT a FROM x\n  GROUP BY TUMBLINGWINDOW(parsecs, 1)", 2, 27, "time unit"),
    ("SELECT a FROM x GROUP BY HOPPINGWINDOW(ss, 1, 5)", 1, 26, "hop must not be larger"),
    ("SELECT percentile(a, 2) FROM x GROUP BY COUNTWINDOW(5)", 1, 22, "between 0 and 1"),
    ("SELECT a FROM \"s/#/x\"", 1, 15, "FROM 's/#/x'"),
    ("SELECT window_end() FROM x", 1, 8, "needs a window"),
])
def test_parse_errors_point_at_line_and_column(sql, line, column, words):
    with pytest.raises(RuleSyntaxError) as info:
        RuleEngine().add(RuleSpec("bad", sql))
    e = info.value
    assert (e.line, e.column) == (line, column), str(e)
    assert words in str(e)
    assert str(e).startswith(f"rule bad line {line}, column {column}: ")


def test_parse_keeps_structure():
    q = parse('select a AS b, count(*) from "x/+" where not (a = 1) group by a, countwindow(2) having b > 1')
    assert q.source == "x/+" and [alias for _, alias in q.items] == ["b", None]
    assert q.where.kind == "not" and len(q.group_by) == 2 and q.having.kind == "cmp"


def test_window_state_survives_a_restart(tmp_path):
    sql = f'SELECT d, sum(v) AS s, count(*) AS n, {W} FROM "s/+" GROUP BY d, TUMBLINGWINDOW(ss, 10)'
    store = RuleStateStore(tmp_path / "rules.db")
    e = RuleEngine(store)
    e.add(RuleSpec("r", sql, ET))
    assert feed(e, (1000, 1, {"d": "x"}), (2000, 2, {"d": "y"}), (3000, 3, {"d": "x"})) == []
    e.checkpoint()
    store.close()
    store = RuleStateStore(tmp_path / "rules.db")   # a new process, the same database
    e2 = RuleEngine(store)
    e2.add(RuleSpec("r", sql, ET))
    # 500 is older than the restored watermark (3000): late
    assert feed(e2, (4000, 10, {"d": "x"}), (500, 1, {"d": "x"})) == []
    assert e2.stats()["r"]["late"] == 1
    out = feed(e2, (12000, 0, {"d": "x"}))
    assert sorted(out, key=lambda r: r["d"]) == [{"d": "x", "s": 14, "n": 3, "ws": 0, "we": 10000},
                                                 {"d": "y", "s": 2, "n": 1, "ws": 0, "we": 10000}]
    # the watermark survived too: a message older than it is late after the restart
    e2.checkpoint()
    store.close()
    e3 = RuleEngine(RuleStateStore(tmp_path / "rules.db"))
    e3.add(RuleSpec("r", sql, ET))
    assert feed(e3, (9000, 1, {"d": "x"})) == [] and e3.stats()["r"]["late"] == 1


def test_sliding_and_count_state_survive_a_restart(tmp_path):
    for sql, first, second in [
        ('SELECT sum(v) AS s FROM "s/a" GROUP BY SLIDINGWINDOW(ss, 10)', [(1000, 1), (2000, 2)], [{"s": 7}]),
        ('SELECT sum(v) AS s FROM "s/a" GROUP BY COUNTWINDOW(3)', [(1000, 1), (2000, 2)], [{"s": 7}]),
        ('SELECT sum(v) AS s FROM "s/a" GROUP BY SESSIONWINDOW(ss, 5)', [(1000, 1), (2000, 2)], []),
    ]:
        path = tmp_path / f"{abs(hash(sql))}.db"
        e = RuleEngine(RuleStateStore(path))
        e.add(RuleSpec("r", sql, ET))
        feed(e, *first)
        e.checkpoint()
        e2 = RuleEngine(RuleStateStore(path))
        e2.add(RuleSpec("r", sql, ET))
        assert feed(e2, (3000, 4)) == second, sql
        if "SESSION" in sql:
            assert feed(e2, (60000, 0)) == [{"s": 7}]


def test_updating_a_rule_keeps_the_state_that_still_applies():
    e = engine(f'SELECT sum(v) AS s, {W} FROM "s/a" GROUP BY TUMBLINGWINDOW(ss, 10)')
    feed(e, (1000, 1), (2000, 2))
    # same window, another HAVING and one more aggregate: the open window and sum(v) carry on
    e.add(RuleSpec("r", f'SELECT sum(v) AS s, max(v) AS m, {W} FROM "s/a" '
                        f'GROUP BY TUMBLINGWINDOW(ss, 10) HAVING s > 0', ET))
    assert feed(e, (3000, 4), (10000, 0)) == [{"s": 7, "m": 4, "ws": 0, "we": 10000}]
    assert e.stats()["r"]["received"] == 4   # counters carry on too
    # another window size: the old windows do not apply and are dropped
    feed(e, (11000, 5))
    e.add(RuleSpec("r", f'SELECT sum(v) AS s, {W} FROM "s/a" GROUP BY TUMBLINGWINDOW(ss, 5)', ET))
    assert feed(e, (12000, 1), (15000, 0)) == [{"s": 1, "ws": 10000, "we": 15000}]


def test_a_bad_update_changes_nothing():
    e = engine('SELECT v FROM "s/a"', EventTime())
    with pytest.raises(RuleSyntaxError):
        e.add(RuleSpec("r", 'SELECT v FROM "s/a" WHERE', EventTime()))
    assert rows(e.process(msgs((0, 1)))) == [{"v": 1}]


def test_rules_are_indexed_by_topic_and_share_the_decode():
    e = RuleEngine()
    e.add(RuleSpec("a", 'SELECT v FROM "s/+"', EventTime()))
    e.add(RuleSpec("b", 'SELECT v * 10 AS w FROM "s/b"', EventTime()))
    e.add(RuleSpec("c", 'SELECT v FROM "t/#"', EventTime()))
    out = e.process(msgs((0, 1), (0, 2, {"topic": "s/b"}), (0, 3, {"topic": "t/x/y"})))
    assert sorted((em.rule, json.dumps(em.row)) for em in out) == sorted(
        [("a", '{"v": 1}'), ("a", '{"v": 2}'), ("b", '{"w": 20}'), ("c", '{"v": 3}')])
    e.set_enabled("a", False)
    assert [em.rule for em in e.process(msgs((0, 1)))] == []


# --- WASM functions ----------------------------------------------------------------------

@pytest.fixture
def to_fahrenheit(runtime):
    c = WasmContainer("to-f", EXAMPLES / "unit_convert.wasm", runtime=runtime,
                      capabilities=Capabilities.grant("config", config={"to": "F"})).start()
    yield WasmFunction("to_f", c, "scalar", deployment="to-f")
    c.stop()


@pytest.fixture
def trapping(runtime):
    c = WasmContainer("echo", TEST_MODULES / "udf_trap_negative.wat", runtime=runtime).start()
    yield c
    c.stop()


def test_wasm_function_in_the_condition_and_the_projection(to_fahrenheit):
    e = RuleEngine()
    e.add(RuleSpec("hot", """SELECT d, json_path(to_f(object('value', v, 'unit', 'C')), '$.value') AS f
                             FROM "s/+" WHERE json_path(to_f(object('value', v, 'unit', 'C')), '$.value') > 80""",
                   EventTime(), functions={"to_f": to_fahrenheit}))
    out = rows(e.process(msgs((0, 20, {"d": "a"}), (0, 30, {"d": "b"}), (0, 100, {"d": "c"}))))
    assert out == [{"d": "b", "f": 86}, {"d": "c", "f": 212}]
    # the WHERE call ran once for the whole batch of 3, the projection once for the 2 that passed
    assert to_fahrenheit.calls == 5 and to_fahrenheit.errors == 0


def test_a_trapping_function_fails_only_that_evaluation(trapping):
    f = WasmFunction("check", trapping, "scalar")
    e = RuleEngine()
    e.add(RuleSpec("r", 'SELECT v FROM "s/a" WHERE check(v) > 1', EventTime(), functions={"check": f}))
    out = rows(e.process(msgs((0, 5), (0, -1), (0, 7), (0, -3), (0, 0))))
    assert out == [{"v": 5}, {"v": 7}]
    st = e.stats()["r"]
    assert st["udf_errors"] == 2 and st["errors"] == 2 and "trap" in st["last_error"].lower()
    # the rule and the function are still there for the next batch
    assert rows(e.process(msgs((0, 9)))) == [{"v": 9}]


def test_rules_calling_one_wasm_function_share_one_guest_call_per_batch(trapping):
    # as the node builds them: one WasmFunction per rule, over the same deployment
    fs = [WasmFunction("check", trapping, "scalar", deployment="echo") for _ in range(3)]
    e = RuleEngine()
    for i, f in enumerate(fs):
        e.add(RuleSpec(f"r{i}", f'SELECT v FROM "s/a" WHERE check(v) > {i}', EventTime(), functions={"check": f}))
    before = trapping.stats().totals()["messages"]
    out = e.process(msgs((0, 5), (0, -1), (0, 2), (0, 5), (0, 1)))
    by_rule = {}
    for em in out:
        by_rule.setdefault(em.rule, []).append(em.row["v"])
    assert by_rule == {"r0": [5, 2, 5, 1], "r1": [5, 2, 5], "r2": [5, 5]}
    # one guest call for the batch, each distinct argument sent once (5 twice → once)
    assert sum(f.guest_calls for f in fs) == 1
    assert trapping.stats().totals()["messages"] - before == 4
    # the trap still fails the evaluation in every rule, counted per rule
    assert all(e.stats()[f"r{i}"]["udf_errors"] == 1 for i in range(3))
    assert all(f.calls == 5 and f.errors == 1 for f in fs)
    # the next batch asks again (the reuse lasts one batch)
    e.process(msgs((0, 5)))
    assert sum(f.guest_calls for f in fs) == 2


def test_wasm_aggregate_function(trapping):
    f = WasmFunction("collect", trapping, "aggregate")
    e = RuleEngine()
    e.add(RuleSpec("r", f'SELECT d, collect(v) AS vs, {W} FROM "s/+" GROUP BY d, TUMBLINGWINDOW(ss, 10)',
                   ET, functions={"collect": f}))
    out = feed(e, (0, 3, {"d": "x"}), (1, 4, {"d": "y"}), (2, 5, {"d": "x"}), (10000, 0, {"d": "x"}))
    assert sorted(out, key=lambda r: r["d"]) == [{"d": "x", "vs": [3, 5], "ws": 0, "we": 10000},
                                                 {"d": "y", "vs": [4], "ws": 0, "we": 10000}]
    assert f.calls == 2   # both groups in one call


def test_wasm_function_over_an_aggregate_and_inside_one(trapping):
    f = WasmFunction("check", trapping, "scalar")
    e = RuleEngine()
    e.add(RuleSpec("r", 'SELECT d, check(avg(v)) AS a, sum(check(v)) AS s FROM "s/+" '
                        'GROUP BY d, TUMBLINGWINDOW(ss, 10)', ET, functions={"check": f}))
    out = feed(e, (0, 3, {"d": "x"}), (1, 5, {"d": "x"}), (2, -1, {"d": "x"}), (10000, 0, {"d": "y"}))
    # -1 traps inside sum(check(v)): that evaluation fails as a whole (avg does not see it
    # either); the window keeps the others
    assert out == [{"d": "x", "a": 4, "s": 8}]
    assert e.stats()["r"]["udf_errors"] == 1


def test_a_function_over_its_time_limit_fails_that_evaluation_only(runtime):
    from iotwasm.engine import Limits

    c = WasmContainer("spin", TEST_MODULES / "infinite_loop.wat", runtime=runtime,
                      limits=Limits(timeout_ms=30)).start()
    try:
        f = WasmFunction("spin", c, "scalar")
        e = RuleEngine()
        e.add(RuleSpec("r", 'SELECT v FROM "s/a" WHERE spin(v) > 0 OR v > 5', EventTime(),
                       functions={"spin": f}))
        assert rows(e.process(msgs((0, 9)))) == []
        st = e.stats()["r"]
        assert st["udf_errors"] == 1 and st["errors"] == 1 and "timeout 30ms exceeded" in st["last_error"]
        assert f.errors == 1
    finally:
        c.stop()


def test_hopping_session_and_count_windows_with_late_data():
    # hopping, lateness 3 s: a reading 2 s out of order still counts in both its windows
    e = engine(f'SELECT sum(v) AS s, {W} FROM "s/a" GROUP BY HOPPINGWINDOW(ss, 10, 5)',
               EventTime("ts", lateness_ms=3000))
    assert feed(e, (6000, 1), (9000, 2)) == []            # watermark 6000
    assert feed(e, (7000, 4)) == []                       # 7000 ≥ 6000: on time
    assert feed(e, (12000, 8)) == []                      # watermark 9000
    assert feed(e, (5500, 100)) == []                     # 5500 < 9000: late
    assert feed(e, (13000, 0)) == [{"s": 7, "ws": 0, "we": 10000}]           # watermark 10000
    assert feed(e, (30000, 0)) == [{"s": 15, "ws": 5000, "we": 15000}, {"s": 8, "ws": 10000, "we": 20000}]
    assert e.stats()["r"]["late"] == 1
    # session: an out-of-order reading inside the lateness joins its session; an older one is late
    e = engine(f'SELECT count(*) AS n, {W} FROM "s/a" GROUP BY SESSIONWINDOW(ss, 5)',
               EventTime("ts", lateness_ms=2000))
    assert feed(e, (10000, 1), (12000, 1), (11000, 1), (7000, 1)) == []   # 7000 < watermark 10000
    assert feed(e, (19001, 1)) == [{"n": 3, "ws": 10000, "we": 17000}]    # watermark 17001
    assert e.stats()["r"]["late"] == 1
    # count windows: a late reading never reaches the window
    e = engine('SELECT sum(v) AS s FROM "s/a" GROUP BY COUNTWINDOW(2)')
    assert feed(e, (1000, 1), (500, 50), (2000, 2)) == [{"s": 3}]
    assert e.stats()["r"]["late"] == 1


def test_a_late_event_that_bridges_two_sessions_merges_them():
    # gap 10 s: 0 and 18 are two sessions until 9 arrives, less than 10 s from both
    e = engine(f'SELECT count(*) AS n, sum(v) AS s, first(v) AS f, last(v) AS l, {W} FROM "s/a" '
               f'GROUP BY SESSIONWINDOW(ss, 10)', EventTime("ts", lateness_ms=20_000))
    assert feed(e, (0, 1), (18000, 2), (9000, 3)) == []
    assert e.stats()["r"]["open_windows"] == 1
    assert feed(e, (60000, 0)) == [{"n": 3, "s": 6, "f": 1, "l": 2, "ws": 0, "we": 28000}]
    # a chain: each event bridges the sessions on either side of it, in any order
    e = engine(f'SELECT count(*) AS n, {W} FROM "s/a" GROUP BY SESSIONWINDOW(ss, 5)',
               EventTime("ts", lateness_ms=60_000))
    assert feed(e, (0, 1), (8000, 1), (16000, 1), (24000, 1), (12000, 1), (4000, 1), (20000, 1)) == []
    assert e.stats()["r"]["open_windows"] == 1
    assert feed(e, (90000, 0)) == [{"n": 7, "ws": 0, "we": 29000}]


def test_count_distinct_carries_on_across_a_restart(tmp_path):
    sql = f'SELECT count(DISTINCT c) AS dc, {W} FROM "s/a" GROUP BY TUMBLINGWINDOW(ss, 10)'
    e = RuleEngine(RuleStateStore(tmp_path / "rules.db"))
    e.add(RuleSpec("r", sql, ET))
    assert feed(e, (1000, 0, {"c": "x"}), (2000, 0, {"c": 1})) == []
    e.checkpoint()
    e2 = RuleEngine(RuleStateStore(tmp_path / "rules.db"))
    e2.add(RuleSpec("r", sql, ET))
    assert feed(e2, (3000, 0, {"c": "x"}), (4000, 0, {"c": 1})) == []   # seen before the restart
    assert feed(e2, (10000, 0)) == [{"dc": 2, "ws": 0, "we": 10000}]
    # the string "1" is another value than the number 1
    assert feed(e2, (11000, 0, {"c": 1}), (12000, 0, {"c": "1"}), (20000, 0)) == [{"dc": 2, "ws": 10000, "we": 20000}]
