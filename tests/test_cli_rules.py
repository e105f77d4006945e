"""The CLI drives rules on a real node (`iotwasm up` in its own process): apply -f with Rule
manifests, get rules, describe rule, rules enable/disable by name and tag, rm rule."""

from __future__ import annotations

import json

import httpx

from apinode import wait_for
from test_cli_client import cli, node  # noqa: F401  (the node fixture and the runner)

MANIFESTS = """apiVersion: iotwasm.io/v1
kind: Route
metadata: {name: feed}
spec:
  source: {http: {path: /in, topic: "in/{device}"}}
  sinks: [{bus: {topic: "climate/{device}"}}]
  batch: {maxSize: 10, maxLinger: 1ms}
---
apiVersion: iotwasm.io/v1
kind: Rule
metadata: {name: hot}
spec:
  tags: [climate]
  sql: |
    SELECT d, v FROM "climate/{d}" WHERE v > 10
  actions: [{store: {table: hot}}]
"""


def rules(api_node) -> dict:
    return {r["name"]: r for r in json.loads(cli(api_node, "get", "rules", "-o", "json").stdout)}


def test_cli_manages_rules(node):  # noqa: F811
    tmp = node["tmp"]
    cli(node, "context", "set", "local", "--url", node["url"], "--token-file", str(node["data"] / "admin.token"))
    f = tmp / "rules.yaml"
    f.write_text(MANIFESTS)
    r = cli(node, "apply", "-f", str(f), "-o", "json")
    assert {(a["kind"], a["action"]) for a in json.loads(r.stdout)["applied"]} == {("Route", "created"),
                                                                                 ("Rule", "created")}
    with httpx.Client() as c:
        for v in (5, 12, 30):
            assert c.post(f"http://127.0.0.1:{node['ingest']}/in?device=d1",
                          content=json.dumps({"v": v}).encode()).status_code == 202
    wait_for(lambda: rules(node)["hot"]["received"] == 3, what="3 messages evaluated")
    assert rules(node)["hot"]["matched"] == 2
    table = cli(node, "get", "rules").stdout
    assert "hot" in table and "enabled" in table and "climate" in table
    described = cli(node, "describe", "rule", "hot").stdout
    assert "WHERE v > 10" in described and "manifest" in described

    r = cli(node, "rules", "disable", "--tag", "climate")
    assert "hot" in r.stdout
    assert rules(node)["hot"]["state"] == "disabled"
    assert json.loads(cli(node, "rules", "enable", "hot", "-o", "json").stdout)["enabled"] is True
    r = cli(node, "rules", "disable", ok=False)
    assert r.returncode == 1 and "give a rule NAME or --tag TAG" in r.stderr

    bad = tmp / "bad.yaml"
    bad.write_text(MANIFESTS.split("---\n")[1].replace("WHERE v > 10", "WHERE v >"))
    r = cli(node, "apply", "-f", str(bad), ok=False)
    assert r.returncode == 1 and "spec.sql" in r.stderr and "line 1, column" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    assert "hot" in cli(node, "rm", "rule", "hot").stdout
    assert rules(node) == {}
