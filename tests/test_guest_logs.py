"""Guest log capture: bounded by a rate limit, a line cap and a ring, and honest about drops."""

from __future__ import annotations

import os
import subprocess
import sys

import wasmtime

from apinode import ApiNode, deployment, http_route, wait_for
from conftest import TEST_MODULES
from iotwasm.node.logs import GuestLogs, printable


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


#: what tests/modules/hostile_log.wat logs, and how it must reach people
HOSTILE = "\x1b[2J\x1b]0;owned\x07[red]boom\x00\rgone\u202eevil"
SHOWN = "\\x1b[2J\\x1b]0;owned\\x07[red]boom\\x00\\x0dgone\\u202eevil"


def test_control_characters_are_kept_as_visible_escapes():
    logs = GuestLogs()
    assert logs.add("d", 1, HOSTILE)
    assert logs.lines("d")[0].text == SHOWN
    assert printable(SHOWN) == SHOWN                     # escaping twice changes nothing
    assert printable("tab\tand \\x1b stay") == "tab\tand \\x1b stay"
    logs = GuestLogs(max_line=10)                        # the cap counts what is shown
    logs.add("d", 1, "\x00" * 20)
    assert logs.lines("d")[0].text == "\\x00\\x00\\x… (70 characters cut)"


def test_a_module_s_log_line_reaches_the_api_and_the_node_log_escaped(tmp_path, caplog):
    n = ApiNode(tmp_path).start()
    try:
        wasm = bytes(wasmtime.wat2wasm((TEST_MODULES / "hostile_log.wat").read_text()))
        assert n.admin.post("/v1/modules", content=wasm, params={"name": "loud", "version": "1"}).status_code == 201
        r = n.admin.post("/v1/apply", content=deployment("loud", "loud:1")
                         + "---\n" + http_route("r", "loud", "/in", "in/{device}", "out"))
        assert r.status_code == 200 and r.json()["problems"] == [], r.text
        with caplog.at_level("INFO", logger="iotwasm.guest"):
            n.ingest("/in", "d1", [b"x"])
            lines = wait_for(lambda: n.admin.get("/v1/deployments/loud/logs").json(), what="the log line")
            wait_for(lambda: any(rec.name == "iotwasm.guest.loud" for rec in caplog.records), what="the node log")
        assert lines[0]["text"] == SHOWN
        logged = [rec.getMessage() for rec in caplog.records if rec.name == "iotwasm.guest.loud"]
        assert logged == [SHOWN]
        # and iotwasm logs prints it as text: escapes shown, rich markup not interpreted
        env = {**os.environ, "IOTWASM_URL": n.url, "IOTWASM_TOKEN": n.admin_token, "COLUMNS": "300",
               "IOTWASM_CONFIG": str(tmp_path / "cli.yaml")}
        r = subprocess.run([sys.executable, "-m", "iotwasm.cli.main", "logs", "loud"], capture_output=True,
                           timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        assert SHOWN in r.stdout.decode() and b"\x1b" not in r.stdout, r.stdout
    finally:
        n.stop()


def test_iotwasm_run_prints_a_module_s_log_line_escaped(tmp_path):
    r = subprocess.run([sys.executable, "-m", "iotwasm.cli.main", "run", str(TEST_MODULES / "hostile_log.wat"),
                        "--allow", "log"], input=b"x\n", capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert not any(c in err for c in "\x1b\x00\x07\r\u202e"), repr(err)
    assert SHOWN in err.replace("\n", ""), repr(err)     # markup shown as text: [red] is still there
