"""Rules through the management API against a real node: created with /v1/apply, counters
moving as messages arrive, enabled and disabled by name and by tag, deleted; roles, tenants,
file-owned rules and SQL errors with their position."""

from __future__ import annotations

import asyncio
import json

import pytest

from apinode import ApiNode, apply, wait_for


@pytest.fixture()
def api(tmp_path):
    n = ApiNode(tmp_path).start()
    yield n
    n.stop()


def rule(name: str, sql: str, table: str = "hot", tags=("climate",), namespace: str = "default") -> str:
    sql = "\n".join("    " + line for line in sql.strip().splitlines())
    return f"""apiVersion: iotwasm.io/v1
kind: Rule
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  tags: {json.dumps(list(tags))}
  sql: |
{sql}
  actions: [{{store: {{table: {table}}}}}]
"""


HOT = 'SELECT d, v FROM "climate/{d}" WHERE v > 10'


def send(api: ApiNode, topic: str, *values: float) -> None:
    async def go():
        for v in values:
            await api.node.bus.publish(topic, json.dumps({"v": v}).encode())
    asyncio.run_coroutine_threadsafe(go(), api.loop).result(10)


def counters(client, name: str) -> dict:
    r = client.get(f"/v1/rules/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def test_rule_lifecycle_counters_and_enable_by_name_and_tag(api):
    ops = api.client(api.token("operator", name="ops"))
    r = apply(ops, rule("hot", HOT) + "---\n" + rule("all", 'SELECT d, v FROM "climate/{d}"', "all",
                                                        tags=("audit",)))
    assert r.status_code == 200, r.text
    assert {(a["kind"], a["name"], a["action"]) for a in r.json()["applied"]} == {
        ("Rule", "hot", "created"), ("Rule", "all", "created")}
    assert r.json()["problems"] == []

    send(api, "climate/d1", 5, 12, 30)
    wait_for(lambda: counters(ops, "hot")["received"] == 3, what="3 messages evaluated")
    hot = counters(ops, "hot")
    assert (hot["matched"], hot["emitted"], hot["state"], hot["enabled"]) == (2, 2, "enabled", True)
    assert hot["sql"].strip() == HOT and hot["source"] == "api" and hot["tags"] == ["climate"]
    assert any(e["kind"] == "created" for e in hot["events"])
    wait_for(lambda: api.node.store.count("hot") == 2, what="2 stored rows")
    wait_for(lambda: counters(ops, "hot")["actions"] == [{"type": "store", "sent": 2, "failed": 0, "backlog": 0}],
             what="the store action's counters")
    listed = {x["name"]: x for x in ops.get("/v1/rules").json()}
    assert set(listed) == {"all", "hot"} and listed["hot"]["received"] == 3 and "manifest" not in listed["hot"]
    metrics = ops.get("/metrics").text
    assert 'iotwasm_rule_received_total{namespace="default",rule="hot"} 3.0' in metrics
    assert 'iotwasm_rule_matched_total{namespace="default",rule="hot"} 2.0' in metrics
    assert 'iotwasm_rule_enabled{namespace="default",rule="hot"} 1.0' in metrics

    # disabling by tag stops evaluation: the other rule on the same topic sees the next messages
    r = ops.post("/v1/rules/disable", json={"tag": "climate"})
    assert r.status_code == 200 and r.json() == {"tag": "climate", "enabled": False, "changed": ["hot"]}
    send(api, "climate/d1", 50, 60)
    wait_for(lambda: counters(ops, "all")["received"] == 5, what="the other rule to see 5 messages")
    assert counters(ops, "hot")["received"] == 3
    assert counters(ops, "hot")["state"] == "disabled"

    r = ops.post("/v1/rules/hot/enable")
    assert r.status_code == 200 and r.json()["enabled"] is True
    send(api, "climate/d1", 70)
    wait_for(lambda: counters(ops, "hot")["received"] == 4, what="evaluation again")
    assert counters(ops, "hot")["matched"] == 3

    r = ops.post("/v1/rules/hot/disable")
    assert r.status_code == 200 and r.json()["state"] == "disabled"
    audit = api.admin.get("/v1/audit", params={"action": "rule.disable"}).json()
    assert {a["target"] for a in audit} == {"rules/tag=climate", "rule/hot"}

    # update through apply (a changed manifest supersedes the disable), then delete
    r = apply(ops, rule("hot", 'SELECT d, v FROM "climate/{d}" WHERE v > 100'))
    assert r.json()["applied"][0]["action"] == "configured"
    wait_for(lambda: counters(ops, "hot")["sql"].strip().endswith("v > 100"), what="the new SQL")
    assert counters(ops, "hot")["enabled"] is True
    r = ops.delete("/v1/rules/hot")
    assert r.status_code == 200 and r.json() == {"deleted": "hot"}
    assert ops.get("/v1/rules/hot").status_code == 404
    assert "hot" not in api.node.rules.manifests
    assert [x["name"] for x in ops.get("/v1/rules").json()] == ["all"]
    assert ops.post("/v1/rules/nosuch/enable").status_code == 404


def test_roles_and_tenants(api):
    for t in ("acme", "other"):
        assert api.admin.put(f"/v1/tenants/{t}", json={}).status_code == 200
    acme = api.client(api.token("operator", "acme", "acme-ops"))
    r = apply(acme, rule("acme-hot", HOT, namespace="acme"))
    assert r.status_code == 200, r.text
    wait_for(lambda: "acme-hot" in api.node.rules.manifests, what="the rule running")

    # a viewer reads but cannot disable
    viewer = api.client(api.token("viewer", "acme", "acme-view"))
    assert [x["name"] for x in viewer.get("/v1/rules").json()] == ["acme-hot"]
    r = viewer.post("/v1/rules/acme-hot/disable")
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    assert "needs role operator" in r.json()["detail"]
    r = viewer.post("/v1/rules/disable", json={"tag": "climate"})
    assert r.status_code == 403

    # another tenant sees nothing and changes nothing
    other = api.client(api.token("operator", "other", "other-ops"))
    assert other.get("/v1/rules").json() == []
    assert other.get("/v1/rules/acme-hot").status_code == 404
    assert other.post("/v1/rules/acme-hot/disable").status_code == 404
    assert other.delete("/v1/rules/acme-hot").status_code == 404
    assert other.post("/v1/rules/disable", json={"tag": "climate"}).json()["changed"] == []
    r = apply(other, rule("acme-hot", HOT, namespace="other"))
    assert r.status_code == 403 and "taken by namespace 'acme'" in r.json()["detail"]
    assert counters(acme, "acme-hot")["enabled"] is True
    denied = api.admin.get("/v1/audit", params={"action": "auth.denied"}).json()
    assert any("rules/acme-hot/disable" in a["target"] for a in denied)


def test_tenant_topic_prefix_and_webhooks_confine_rules(api):
    assert api.admin.put("/v1/tenants/acme", json={"topic_prefix": "acme/"}).status_code == 200
    acme = api.client(api.token("operator", "acme", "acme-ops"))
    r = apply(acme, rule("r", HOT, namespace="acme"))
    assert r.status_code == 403
    assert r.json()["detail"] == ("Rule r spec.sql FROM: 'climate/+' is outside the topic prefix 'acme/' "
                                  "of tenant acme")
    hook = rule("r", 'SELECT v FROM "acme/{d}"', namespace="acme").replace(
        "[{store: {table: hot}}]", '[{webhook: {url: "http://127.0.0.1:9/x"}}]')
    r = apply(acme, hook)
    assert r.status_code == 403 and "spec.actions[0].webhook" in r.json()["detail"]
    assert apply(acme, rule("r", 'SELECT v FROM "acme/{d}"', namespace="acme")).status_code == 200


def test_bad_sql_is_refused_with_its_position(api):
    r = apply(api.admin, rule("bad", 'SELECT d,\n  v +\nFROM "climate/{d}"'))
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    detail = r.json()["detail"]
    assert "Rule bad" in detail and "spec.sql" in detail and "line 3, column 1" in detail, detail
    assert api.admin.get("/v1/rules").json() == []


def test_rules_of_manifest_files_cannot_be_changed_through_the_api(tmp_path):
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "r.yaml").write_text(rule("filed", HOT))
    n = ApiNode(tmp_path, manifests=mdir).start()
    try:
        c = n.admin
        wait_for(lambda: "filed" in n.node.rules.manifests, what="the file's rule")
        assert c.get("/v1/rules/filed").json()["source"] == "file"
        r = c.delete("/v1/rules/filed")
        assert r.status_code == 403 and "manifest files" in r.json()["detail"]
        r = apply(c, rule("filed", 'SELECT v FROM "x/{d}"'))
        assert r.status_code == 403 and "manifest files" in r.json()["detail"]
        # enabling and disabling is runtime state, like suspending a deployment
        assert c.post("/v1/rules/filed/disable").json()["enabled"] is False
    finally:
        n.stop()


def test_a_rule_that_cannot_start_is_pending_with_its_problem(api):
    text = rule("needs", 'SELECT v FROM "climate/{d}" WHERE check(v) > 0').replace(
        "  sql: |", "  functions: [{name: check, deployment: ghost}]\n  sql: |")
    r = apply(api.admin, text)
    assert r.status_code == 200, r.text
    assert r.json()["problems"] == ["Rule needs: function check: deployment 'ghost' is not on this node"]
    got = counters(api.admin, "needs")
    assert (got["state"], got["received"]) == ("pending", 0)
    assert got["last_error"] == "Rule needs: function check: deployment 'ghost' is not on this node"
    r = api.admin.post("/v1/rules/needs/disable")
    assert r.status_code == 409 and "is not running" in r.json()["detail"]
    assert api.admin.delete("/v1/rules/needs").status_code == 200
    assert api.admin.get("/v1/rules").json() == []


def test_a_deployment_a_rule_uses_cannot_be_deleted_before_the_rule(api):
    from apinode import ECHO_WASM, deployment
    c = api.admin
    assert c.post("/v1/modules", content=ECHO_WASM, params={"name": "echo", "version": "1"},
                  headers={"Content-Type": "application/wasm"}).status_code == 201
    text = deployment("echo", "echo:1") + "---\n" + rule("inv", HOT).replace(
        "[{store: {table: hot}}]", '[{invoke: {deployment: echo, topic: "out/x"}}]')
    r = apply(c, text)
    assert r.status_code == 200 and r.json()["problems"] == [], r.text
    r = c.delete("/v1/deployments/echo")
    assert r.status_code == 409 and r.json()["detail"] == "deployment echo is used by rule(s) inv; delete those first"
    assert c.delete("/v1/rules/inv").status_code == 200
    assert c.delete("/v1/deployments/echo").status_code == 200
