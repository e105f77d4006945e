"""The web dashboard in a real browser (tests/dashboard.py) where an operator acts from the page,
against a node managed through the API: suspend (after a cancelled confirmation), resume, scale
and roll back with the API and the audit log agreeing, a viewer with no action buttons, a
deployment on demand with its range, the failing step of a two-step route, a dead letter browsed
and replayed into its route, rules switched and alerts shown; and a node in a fleet, whose
rollout an operator pauses, resumes and aborts over a real nats-server."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from apinode import ECHO_WASM, ApiNode, deployment, http_route, wait_for
from conftest import EXAMPLES
from dashboard import VIEWS, cell, confirm, shot, view


def two_steps(name: str, path: str) -> str:
    """An http route through `prep` (passes everything) and `decode` (echo: '!' traps, '?' is
    rejected) into the store table `frames`."""
    return http_route(name, "prep", path, "in/{device}", "frames").replace("steps: [prep]", "steps: [prep, decode]")


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    """A node managed through the API: route `ingest` (http /ingest) → prep → decode → store."""
    n = ApiNode(tmp_path_factory.mktemp("ops")).start()
    c = n.admin
    for wasm, name in ((ECHO_WASM, "echo"), ((EXAMPLES / "passthrough.wasm").read_bytes(), "pass")):
        r = c.post("/v1/modules", content=wasm, params={"name": name, "version": "1"})
        assert r.status_code == 201, r.text
    r = c.post("/v1/apply", content="---\n".join([deployment("prep", "pass:1"), deployment("decode", "echo:1"),
                                                  two_steps("ingest", "/ingest")]))
    assert r.status_code == 200 and r.json()["problems"] == [], r.text
    n.ingest("/ingest", "d1", [b"hello"])
    wait_for(lambda: n.node.store.count("frames") == 1, what="the first frame stored")
    yield n
    n.stop()


def test_an_operator_acts_from_the_page_confirmed_and_audited(ops, page):
    from playwright.sync_api import expect

    operator = ops.token("operator", name="page-operator")
    page.goto(f"{ops.url}/ui/#token={operator}")
    view(page, "deployments")
    row = page.locator("#deployments tr[data-name='decode']")
    expect(cell(page, "deployments", "decode", "state")).to_have_text("running")
    # a confirmation that is cancelled changes nothing
    row.locator("button[data-action=suspend]").click()
    expect(page.locator("#confirm")).to_contain_text("Suspend deployment decode?")
    page.click("#confirm-cancel")
    expect(page.locator("#confirm")).to_be_hidden()
    assert ops.admin.get("/v1/deployments/decode").json()["state"] == "running"
    # suspend: the API shows it suspended, the audit log says who did it
    row.locator("button[data-action=suspend]").click()
    confirm(page, "suspend")
    wait_for(lambda: ops.admin.get("/v1/deployments/decode").json()["state"] == "suspended", 30, "suspended")
    expect(cell(page, "deployments", "decode", "state")).to_have_text("suspended")
    expect(page.locator("#notice")).to_contain_text("deployment decode suspended")
    audit = ops.admin.get("/v1/audit", params={"action": "deployment.suspend"}).json()
    assert [(a["actor"].split(" ")[0], a["target"]) for a in audit] == [("page-operator", "deployment/decode")]
    # resume
    row.locator("button[data-action=resume]").click()
    confirm(page, "resume")
    wait_for(lambda: ops.admin.get("/v1/deployments/decode").json()["state"] == "running", 30, "running again")
    # scale
    row.locator("button[data-action=scale]").click()
    confirm(page, "scale", fill="2")
    wait_for(lambda: ops.admin.get("/v1/deployments/decode").json()["replicas"] == 2, 30, "two replicas")
    expect(cell(page, "deployments", "decode", "replicas")).to_have_text("2")
    # roll back: a second revision (more memory) serves, the page rolls back to the first's manifest
    r = ops.admin.post("/v1/apply", content=deployment("decode", "echo:1", replicas=2, memory="32Mi"))
    assert r.status_code == 200 and r.json()["problems"] == [], r.text
    ops.ingest("/ingest", "d1", [b"passes the gate"])
    wait_for(lambda: [h["status"] for h in ops.admin.get("/v1/deployments/decode/history").json()]
             == ["replaced", "serving"], 30, "revision 2 serving")
    expect(cell(page, "deployments", "decode", "revision")).to_have_text("2")
    row.locator("button[data-action=rollback]").click()
    expect(page.locator("#confirm")).to_contain_text("revision 1's manifest is applied again")
    shot(page, "confirm")
    confirm(page, "roll back")
    wait_for(lambda: ops.admin.get("/v1/deployments/decode").json()["revision"] == 3, 30, "revision 3")
    assert ops.admin.get("/v1/deployments/decode").json()["manifest"]["spec"]["resources"]["memory"] == "16Mi"
    actions = [a["action"] for a in ops.admin.get("/v1/audit", params={"actor": "page-operator"}).json()
               if a["action"].startswith("deployment.")]
    assert actions == ["deployment.rollback", "deployment.scale", "deployment.resume", "deployment.suspend"]
    assert page.csp_errors == []


def test_a_viewer_sees_no_action_buttons(ops, page):
    from playwright.sync_api import expect

    viewer = ops.token("viewer", name="page-viewer")
    page.goto(f"{ops.url}/ui/#token={viewer}")
    for name in VIEWS:
        view(page, name)
        if name == "deployments":
            expect(cell(page, "deployments", "decode", "state")).to_have_text("running")
        if name == "deadletters":
            expect(page.locator("#dead-letters")).not_to_be_empty()
        assert page.locator("button[data-action], #dead-letters input[type=checkbox]").count() == 0, name
    expect(page.locator("#deployments th")).not_to_contain_text(["actions"])
    # and the API refuses a viewer anyway
    r = ops.client(viewer).post("/v1/deployments/decode/suspend")
    assert r.status_code == 403 and "needs role operator" in r.json()["detail"]


def test_a_deployment_on_demand_shows_its_range_and_its_evictions(ops, page):
    from playwright.sync_api import expect

    elastic = deployment("burst", "echo:1").replace("replicas: 1", "replicas: {min: 0, max: 2}")
    r = ops.admin.post("/v1/apply", content=elastic)
    assert r.status_code == 200 and r.json()["problems"] == [], r.text
    page.goto(f"{ops.url}/ui/#token={ops.admin_token}")
    view(page, "deployments")
    expect(cell(page, "deployments", "burst", "replicas")).to_have_text("0 (0–2)")
    expect(cell(page, "deployments", "burst", "evictions")).to_have_text("0")
    r = ops.admin.post("/v1/deployments/burst/invoke", json={"messages": [{"payload": "x"}]})
    assert r.status_code == 200 and r.json()["outputs"], r.text
    expect(cell(page, "deployments", "burst", "replicas")).to_have_text("1 (0–2)")
    expect(cell(page, "deployments", "decode", "replicas")).to_have_text(re.compile(r"^\d+$"))   # fixed: a number
    assert ops.admin.delete("/v1/deployments/burst").status_code == 200


def test_the_pipeline_view_shows_the_failing_step(ops, page):
    from playwright.sync_api import expect

    page.goto(f"{ops.url}/ui/#token={ops.admin_token}")
    view(page, "pipelines")
    route = page.locator("#pipelines section.pipeline[data-name='ingest']")
    expect(route.locator("g.pnode.step[data-name='decode']")).to_be_visible()
    expect(route.locator("g.pnode.failing")).to_have_count(0)
    ops.ingest("/ingest", "d2", [b"!trap", b"fine"])   # the second step traps on '!'
    expect(route.locator("g.pnode.failing[data-name='decode']")).to_be_visible()
    expect(route.locator("g.pnode.failing")).to_have_count(1)          # prep, source and sink are fine
    expect(route.locator(".problems li[data-where='decode']")).to_contain_text("trap")
    expect(route).to_have_attribute("data-failing", "decode")
    # the edge into the sinks shows a rate, and the route's drawing names its whole path
    assert "http → prep → decode → ingest/0:store" in route.locator("svg").get_attribute("aria-label")
    # its link opens the dead letters of that step
    route.locator(".problems li[data-where='decode'] button").click()
    expect(page.locator("#view-deadletters")).to_be_visible()
    expect(page.locator("#dl-step")).to_have_value("decode")


def test_a_dead_letter_is_browsed_then_replayed_into_its_route(ops, page):
    from playwright.sync_api import expect

    bad = b"?\x00\xffbad"    # decode rejects what starts with '?'; not text: shown as hex
    ops.ingest("/ingest", "d3", [bad])
    letters = wait_for(lambda: [d for d in ops.admin.get("/v1/dead-letters", params={"route": "ingest"}).json()
                                if d["topic"] == "in/d3"], 30, "the dead letter")
    dl = letters[0]
    operator = ops.token("operator", name="replayer")
    page.goto(f"{ops.url}/ui/#token={operator}")
    view(page, "deadletters")
    page.select_option("#dl-route", "ingest")
    row = page.locator(f"#dead-letters tr[data-name='{dl['id']}']")
    expect(row.locator("[data-field=route]")).to_have_text("ingest")
    expect(row.locator("[data-field=step]")).to_have_text("decode")
    expect(row.locator("[data-field=module]")).to_have_text("echo:1")
    expect(row.locator("[data-field=function]")).to_have_text("iot_process")
    expect(row.locator("[data-field=kind]")).to_have_text("guest_error")
    expect(row.locator("td[data-col=reason]")).to_contain_text("?")
    expect(row.locator("td[data-col=payload]")).to_contain_text("3f 00 ff 62 61 64")
    expect(row.locator("td[data-col=payload] .badge")).to_have_text("hex")
    # the decoder is fixed (a module that passes everything), then the dead letter is replayed
    r = ops.admin.post("/v1/apply", content=deployment("decode", "pass:1", replicas=2))
    assert r.status_code == 200 and r.json()["problems"] == [], r.text
    wait_for(lambda: ops.node.deployments["decode"].module_digest == ops.node.deployments["prep"].module_digest,
             30, "the fixed decoder")
    row.locator("input[type=checkbox]").check()
    page.click("button[data-action=replay]")
    expect(page.locator("#confirm")).to_contain_text(f"route ingest: dead letter(s) {dl['id']}")
    confirm(page, "replay")
    expect(page.locator("#notice")).to_contain_text("ingest: 1 replayed")
    # it arrived again in its route: through the rest of it into the store
    wait_for(lambda: any(r["payload"] == {"base64": "PwD/YmFk"} for r in ops.node.store.query("frames", limit=50)),
             30, "the replayed message in the store")
    expect(row.locator("td[data-col=replayed]")).to_contain_text("by replayer")
    expect(row.locator("input[type=checkbox]")).to_be_disabled()
    # marked: never twice, and audited
    again = ops.client(operator).post("/v1/routes/ingest/dead-letters/replay", json={"ids": [dl["id"]]}).json()
    assert again["replayed"] == [] and "replayed already by replayer" in again["skipped"][0]["reason"]
    audit = ops.admin.get("/v1/audit", params={"action": "route.dead-letters.replay"}).json()
    assert [a["actor"].split(" ")[0] for a in audit] == ["replayer", "replayer"]
    assert page.csp_errors == []


def test_rules_and_alerts_show_and_an_operator_switches_a_rule(ops, page):
    from playwright.sync_api import expect

    rule = """apiVersion: iotwasm.io/v1
kind: Rule
metadata: {name: loud}
spec:
  tags: [demo]
  sql: SELECT device FROM "in/{device}"
  actions: [{store: {table: loud}}]
"""
    assert ops.admin.post("/v1/apply", content=rule).status_code == 200
    assert ops.admin.put("/v1/alerts/backlog", json={"metric": "outbox_backlog", "above": 1000,
                                                     "topic": "alerts/backlog"}).status_code == 200
    assert ops.admin.put("/v1/alerts/always", json={"metric": "route_queue_depth", "target": "ingest", "above": -1,
                                                    "topic": "alerts/always"}).status_code == 200
    page.goto(f"{ops.url}/ui/#token={ops.admin_token}")
    view(page, "rules")
    expect(cell(page, "rules", "loud", "state")).to_have_text("enabled")
    expect(cell(page, "alerts", "backlog", "metric")).to_have_text("outbox_backlog")
    # an alert that fired is among the latest alerts, with what it measured
    expect(page.locator("#alert-events")).to_contain_text("always: route_queue_depth 0 > -1")
    expect(cell(page, "alerts", "always", "fired")).to_have_text("1")
    page.locator("#rules tr[data-name='loud'] button[data-action=disable]").click()
    confirm(page, "disable")
    expect(cell(page, "rules", "loud", "state")).to_have_text("disabled")
    assert ops.admin.get("/v1/rules/loud").json()["state"] == "disabled"
    page.locator("#rules tr[data-name='loud'] button[data-action=enable]").click()
    confirm(page, "enable")
    expect(cell(page, "rules", "loud", "state")).to_have_text("enabled")
    # the latest results of the route's store sink are shown
    expect(page.locator("#results [data-name='route:ingest']")).to_contain_text("in/d")


def test_a_node_in_a_fleet_shows_the_fleet_and_an_operator_steers_a_rollout(nats_server, tmp_path, page):  # noqa: F811
    from playwright.sync_api import expect

    n = ApiNode(tmp_path, fleet={"url": nats_server.url, "labels": {"site": "a"}, "heartbeat_s": 0.3},
                name="fleet-node").start()

    async def desired():
        """A fleet deployment nobody places (no controller runs): 0 of 1 assigned, and a rollout
        of it in progress."""
        from iotwasm.fleet import FleetDeployment, FleetStore
        from iotwasm.fleet.rollout import Rollout

        store = await FleetStore.connect(nats_server.url)
        try:
            digest = await store.put_module(ECHO_WASM)
            rev = await store.put_deployment(FleetDeployment.parse({
                "deployment": {"apiVersion": "iotwasm.io/v1", "kind": "Deployment", "metadata": {"name": "far"},
                               "spec": {"module": digest}},
                "placement": {"nodeSelector": {"site": "mars"}}}), None)
            await store.put_rollout(Rollout(deployment="far", revision=rev, target={}, stable={}, stages=2), 0)
        finally:
            await store.close()

    try:
        with ThreadPoolExecutor(1) as pool:   # the browser's driver holds this thread's loop
            pool.submit(asyncio.run, desired()).result(60)
        operator = n.token("operator", name="fleet-operator")
        page.goto(f"{n.url}/ui/#token={operator}")
        expect(page.locator("#tab-fleet")).to_be_visible()
        view(page, "fleet")
        expect(page.locator("#fleet-panel")).to_be_visible()
        expect(page.locator("#fleet-summary")).to_contain_text(nats_server.url)
        expect(cell(page, "fleet-nodes", "fleet-node", "health")).to_have_text("ok")
        expect(cell(page, "fleet-nodes", "fleet-node", "labels")).to_have_text("site a")
        expect(cell(page, "fleet-deployments", "far", "copies")).to_have_text("0 / 0 / 1")
        expect(cell(page, "fleet-deployments", "far", "problems")).to_have_text(
            "0 of 1 copies assigned (node fleet-node: nodeSelector wants site=mars, node has site=a)")
        rollout = page.locator("#fleet-rollouts tr[data-name^='far|']")
        expect(rollout.locator("td[data-col=state]")).to_have_text("progressing")
        expect(rollout.locator("td[data-col=stage]")).to_have_text("1 of 2")
        rollout.locator("button[data-action=pause]").click()
        confirm(page, "pause")
        expect(rollout.locator("td[data-col=state]")).to_have_text("paused")
        rollout.locator("button[data-action=resume]").click()
        confirm(page, "resume")
        expect(rollout.locator("td[data-col=state]")).to_have_text("progressing")
        rollout.locator("button[data-action=abort]").click()
        confirm(page, "abort")
        expect(rollout.locator("td[data-col=state]")).to_have_text("aborted")
        expect(rollout.locator("button[data-action]")).to_have_count(0)
        actions = [a["action"] for a in n.admin.get("/v1/audit", params={"actor": "fleet-operator"}).json()]
        assert actions == ["fleet.rollout.abort", "fleet.rollout.resume", "fleet.rollout.pause"]
        expect(page.locator("#banner")).to_be_hidden()
        shot(page, "fleet")
    finally:
        n.stop()
