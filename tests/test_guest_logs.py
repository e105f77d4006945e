"""Guest log capture: bounded by a rate limit, a line cap and a ring, and honest about drops."""

from __future__ import annotations

from iotwasm.node.logs import GuestLogs


def test_rate_limit_counts_drops_and_reports_them_in_the_next_line():
    logs = GuestLogs(rate=0.0, burst=2)  # no refill: exactly the burst gets through
    kept = [logs.add("d", 1, f"l{i}") for i in range(5)]
    assert kept == [True, True, False, False, False]
    assert [ln.text for ln in logs.lines("d")] == ["l0", "l1"]
    assert logs.suppressed_total == 3
    logs._buckets["d"].tokens = 1  # time passed: one more token
    assert logs.add("d", 2, "later")
    last = logs.lines("d")[-1]
    assert last.text == "[3 line(s) dropped by the log rate limit] later" and last.level == "warning"


def test_long_lines_are_cut_and_only_the_last_lines_are_kept_per_deployment():
    logs = GuestLogs(keep=3, max_line=10, burst=100)
    logs.add("a", 1, "x" * 25)
    assert logs.lines("a")[0].text == "x" * 10 + "… (15 characters cut)"
    for i in range(5):
        logs.add("a", 1, str(i))
        logs.add("b", 1, f"b{i}")
    assert [ln.text for ln in logs.lines("a")] == ["2", "3", "4"]
    assert len(logs.lines()) == 6  # both deployments, in sequence order
    seqs = [ln.seq for ln in logs.lines()]
    assert seqs == sorted(seqs)
    since = logs.lines("a")[0].seq
    assert [ln.text for ln in logs.lines("a", since=since)] == ["3", "4"]


def test_a_broken_follower_does_not_stop_capture():
    logs = GuestLogs()
    seen = []
    logs.followers.append(lambda ln: 1 / 0)
    logs.followers.append(seen.append)
    assert logs.add("d", 1, "hello")
    assert [ln.text for ln in seen] == ["hello"] and logs.lines("d")[0].text == "hello"
