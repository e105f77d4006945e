"""Rules as a manifest kind on a node: created, updated, enabled and disabled by tag, deleted;
WASM functions from the node's deployments; window state surviving a node restart."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from iotwasm.node import Node, NodeConfig
from iotwasm.node.manifests import ManifestError, parse_documents

from conftest import TEST_MODULES
from waiting import wait_for

CHECK = f"""
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: check}}
spec:
  module: {TEST_MODULES / 'udf_trap_negative.wat'}
"""


def rule(name: str, sql: str, table: str, tags=("climate",), extra: str = "") -> str:
    sql = "\n".join("    " + line for line in sql.strip().splitlines())
    return f"""
apiVersion: iotwasm.io/v1
kind: Rule
metadata: {{name: {name}}}
spec:
  tags: {list(tags)}
  eventTime: {{field: ts, lateness: 0s}}
  functions: [{{name: check, deployment: check}}]
  sql: |
{sql}
  actions: [{{store: {{table: {table}}}}}]
{extra}"""


WINDOW = """
SELECT d, sum(v) AS s, count(*) AS n, window_start() AS ws
FROM "climate/{d}"
WHERE check(v) >= 0
GROUP BY d, TUMBLINGWINDOW(ss, 10)
"""


def write(mdir: Path, name: str, text: str) -> None:
    p = mdir / name
    p.write_text(text)
    t = time.time_ns() + 1_000_000
    os.utime(p, ns=(t, t))


async def send(node: Node, device: str, *readings) -> None:
    for ts, v in readings:
        await node.bus.publish(f"climate/{device}", json.dumps({"ts": ts, "v": v}).encode())


def stored(node: Node, table: str) -> list:
    return sorted((r["payload"] for r in node.store.query(table, limit=1000)), key=json.dumps)


def test_window_state_survives_a_node_restart_and_functions_come_from_deployments(tmp_path):
    mdir = tmp_path / "m"
    mdir.mkdir()
    write(mdir, "a.yaml", CHECK + "---" + rule("sums", WINDOW, "sums"))

    async def main():
        node = Node(NodeConfig(data_dir=tmp_path / "data", manifests=mdir, sync_interval_s=0.05))
        await node.start()
        # -5 traps inside the function: that evaluation fails and is counted, the rule goes on
        await send(node, "a", (1000, 1), (2000, -5), (3000, 2))
        await send(node, "b", (4000, 10))
        await wait_for(lambda: node.snapshot()["rules"]["sums"]["received"] == 4, what="4 evaluated")
        st = node.snapshot()["rules"]["sums"]
        assert st["udf_errors"] == 1 and st["errors"] == 1 and st["open_windows"] == 2
        assert st["functions"]["check"]["errors"] == 1
        await node.shutdown()

        node = Node(NodeConfig(data_dir=tmp_path / "data", manifests=mdir, sync_interval_s=0.05))
        await node.start()
        assert node.snapshot()["rules"]["sums"]["open_windows"] == 2   # continued, not empty
        await send(node, "a", (5000, 4), (11000, 0))
        await wait_for(lambda: len(stored(node, "sums")) == 2, what="the window closed")
        assert stored(node, "sums") == [{"d": "a", "s": 7, "n": 3, "ws": 0},
                                        {"d": "b", "s": 10, "n": 1, "ws": 0}]
        await node.shutdown()
    asyncio.run(main())


def test_an_event_time_rule_with_idle_timeout_closes_its_window_when_the_stream_goes_quiet(tmp_path):
    mdir = tmp_path / "m"
    mdir.mkdir()
    quiet = rule("quiet", 'SELECT d, sum(v) AS s FROM "climate/{d}" GROUP BY d, TUMBLINGWINDOW(ss, 10)', "quiet")
    quiet = quiet.replace("eventTime: {field: ts, lateness: 0s}", "eventTime: {field: ts, idleTimeout: 300ms}")
    quiet = quiet.replace("  functions: [{name: check, deployment: check}]\n", "")
    write(mdir, "a.yaml", quiet)
    bad = quiet.replace("idleTimeout: 300ms", "idleTimeout: soon")

    async def main():
        node = Node(NodeConfig(data_dir=tmp_path / "data", manifests=mdir, sync_interval_s=0.05))
        await node.start()
        await send(node, "a", (1000, 1), (2000, 2))      # then nothing: the window must close anyway
        await wait_for(lambda: stored(node, "quiet") == [{"d": "a", "s": 3}], what="the quiet window closed")
        write(mdir, "a.yaml", bad)
        await node.sync()
        assert "eventTime.idleTimeout" in node.last_manifest_error and "cannot read duration 'soon'" in \
            node.last_manifest_error
        await node.shutdown()
    asyncio.run(main())


def test_rules_created_updated_disabled_by_tag_and_deleted(tmp_path):
    mdir = tmp_path / "m"
    mdir.mkdir()
    plain = 'SELECT d, v FROM "climate/{d}" WHERE v > 10'
    write(mdir, "a.yaml", CHECK + "---" + rule("high", plain, "high", tags=("climate", "ops")) +
          "---" + rule("low", 'SELECT d, v FROM "climate/{d}" WHERE v < 0', "low", tags=("other",)))

    async def main():
        node = Node(NodeConfig(data_dir=tmp_path / "data", manifests=mdir, sync_interval_s=0.05))
        await node.start()
        await send(node, "a", (0, 11), (0, -1))
        await wait_for(lambda: len(stored(node, "high")) == 1 and len(stored(node, "low")) == 1)
        assert await node.rules.set_enabled(False, tag="ops") == ["high"]
        await send(node, "a", (0, 12), (0, -2))
        await wait_for(lambda: len(stored(node, "low")) == 2)
        await asyncio.sleep(0.1)
        assert len(stored(node, "high")) == 1
        assert node.snapshot()["rules"]["high"]["enabled"] is False
        # update: a new condition; the disable override belonged to the old manifest
        write(mdir, "a.yaml", CHECK + "---" + rule("high", plain.replace("> 10", "> 100"), "high",
                                                   tags=("climate", "ops")))
        await node.sync()
        await wait_for(lambda: "low" not in node.snapshot()["rules"], what="low deleted")
        assert node.snapshot()["rules"]["high"]["enabled"] is True
        await send(node, "a", (0, 50), (0, 150))
        await wait_for(lambda: len(stored(node, "high")) == 2)
        assert stored(node, "high")[-1] == {"d": "a", "v": 150} or {"d": "a", "v": 150} in stored(node, "high")
        assert {"d": "a", "v": 50} not in stored(node, "high")
        await node.shutdown()
    asyncio.run(main())


def test_a_rule_that_does_not_compile_is_reported_with_its_position():
    text = rule("bad", 'SELECT d, avg(v) AS t\nFROM "climate/{d}"\nGROUP BY d, TUMBLINGWINDOW(ss, 10)\nHAVING t >>',
                "x")
    with pytest.raises(ManifestError) as info:
        parse_documents(text, "rules.yaml")
    assert info.value.problems == [
        "rules.yaml#1 (Rule bad) spec.sql: line 4, column 11: unexpected '>'; "
        "expected '(', '-', CASE, FALSE, NULL, TRUE, …"]
    with pytest.raises(ManifestError, match="spec.sql: line 1, column 8: unknown function nope"):
        parse_documents(rule("bad", 'SELECT nope(v) FROM "x"', "x"), "r.yaml")
