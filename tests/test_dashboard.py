"""The web dashboard in a real browser: Debian's Chromium, driven by Playwright, against real
nodes — one whose sensors source keeps numbers moving, one managed through the API where an
operator acts from the page. Nothing is fetched from the internet: the browser is the
system's (scripts/setup.sh installs it), never one Playwright downloads.

With IOTWASM_SCREENSHOTS=1 the tests also write the screenshots docs/api.md shows
(docs/img/dashboard-*.png), each taken from the page they just checked."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from apinode import ECHO_WASM, ApiNode, deployment, http_route, wait_for
from brokers import free_port
from conftest import ECHO_WAT, EXAMPLES, ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 30_000
SHOTS = ROOT / "docs" / "img" if os.environ.get("IOTWASM_SCREENSHOTS") else None
VIEWS = ("overview", "pipelines", "deployments", "routes", "rules", "deadletters", "events")

MANIFESTS = """apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  module: {module}
  resources: {{memory: 16Mi}}
  capabilities: {{topics: {{subscribe: ["#"], publish: ["#"]}}}}
---
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: readings}}
spec:
  source: {{sensors: {{devices: 2, rate: 20, sensors: [temperature]}}}}
  steps: [echo]
  sinks: [{{store: {{table: readings}}}}]
"""


def manifests(tmp: Path) -> Path:
    (tmp / "echo.wat").write_text(ECHO_WAT)
    mdir = tmp / "m"
    mdir.mkdir()
    (mdir / "node.yaml").write_text(MANIFESTS.format(module=tmp / "echo.wat"))
    return mdir


def two_steps(name: str, path: str) -> str:
    """An http route through `prep` (passes everything) and `decode` (echo: '!' traps, '?' is
    rejected) into the store table `frames`."""
    return http_route(name, "prep", path, "in/{device}", "frames").replace("steps: [prep]", "steps: [prep, decode]")


@pytest.fixture(scope="module")
def browser():
    # scripts/setup.sh installs both; a machine without them fails here rather than skipping
    try:
        from playwright import sync_api as sync
    except ImportError:
        pytest.fail("playwright is not installed: run scripts/setup.sh (the test extras)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (it installs Debian's chromium)")
    with sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    n = ApiNode(tmp, manifests=manifests(tmp)).start()
    yield n
    n.stop()


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


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    p = context.new_page()
    p.set_default_timeout(WAIT_MS)
    p.csp_errors = []
    p.on("console", lambda m: m.type == "error" and "Content Security Policy" in m.text
         and p.csp_errors.append(m.text))
    yield p
    context.close()


def cell(page, table: str, row: str, col: str):
    return page.locator(f"#{table} tr[data-name='{row}'] td[data-col='{col}']")


def count(page, table: str, row: str, col: str) -> int:
    text = cell(page, table, row, col).inner_text().replace(",", "").strip()
    return int(text) if text.isdigit() else -1


def view(page, name: str) -> None:
    page.click(f"#tab-{name}")
    page.wait_for_selector(f"#view-{name}:not([hidden])")


def samples(page, chart: str) -> int:
    return int(page.locator(f"[data-chart='{chart}']").get_attribute("data-samples") or 0)


def shot(page, name: str, full: bool = False) -> None:
    """The page as it is now, for docs/api.md (the window, or with `full` the whole page)."""
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"dashboard-{name}.png"), full_page=full)


def confirm(page, verb: str, fill: str | None = None) -> None:
    """The page's confirmation step: the dialog opens, says it is audited, and is confirmed."""
    from playwright.sync_api import expect

    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("audit log")
    if fill is not None:
        page.fill("#confirm-input", fill)
    expect(page.locator("#confirm-ok")).to_have_text(verb)
    page.click("#confirm-ok")
    expect(dialog).to_be_hidden()


def test_dashboard_shows_the_node_live_and_takes_the_token_out_of_the_address_bar(node, page):
    from playwright.sync_api import expect

    page.goto(f"{node.url}/#token={node.admin_token}")     # / sends the browser on to /ui/
    expect(page.locator("#node-name")).to_have_text("testnode")
    view(page, "deployments")
    expect(cell(page, "deployments", "echo", "state")).to_have_text("running")
    expect(cell(page, "deployments", "echo", "state").locator(".badge")).to_have_class(re.compile(r"\bok\b"))
    wait_for(lambda: count(page, "deployments", "echo", "messages") > 0, 30, "deployment messages")
    view(page, "routes")
    expect(cell(page, "routes", "readings", "state")).to_have_text("running")
    # the numbers move: the page follows the node's stream
    wait_for(lambda: count(page, "routes", "readings", "received") > 0, 30, "route counters on the page")
    first = count(page, "routes", "readings", "received")
    wait_for(lambda: count(page, "routes", "readings", "received") > first, 30, "a counter that increases")
    expect(cell(page, "routes", "readings", "p99_ms")).to_have_text(re.compile(r"^\d+\.\d\d$"))
    # the token left the address bar at once, and stays in this tab only
    assert page.url == f"{node.url}/ui/"
    assert "token" not in page.evaluate("location.href")
    assert page.evaluate("sessionStorage.getItem('iotwasm.token')") == node.admin_token
    # not in a fleet: no fleet view; no errors; nothing the page did broke its own policy
    expect(page.locator("#tab-fleet")).to_be_hidden()
    expect(page.locator("#banner")).to_be_hidden()
    view(page, "events")
    expect(page.locator("#events")).to_contain_text("echo")
    assert page.csp_errors == []
    # a reload keeps the session (and the view); signing out forgets the token
    page.reload()
    expect(page.locator("#view-events")).to_be_visible()
    view(page, "routes")
    expect(cell(page, "routes", "readings", "state")).to_have_text("running")
    page.click("#signout")
    expect(page.locator("#token-form")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('iotwasm.token')") is None


def test_charts_receive_live_points_and_a_page_opened_now_starts_from_the_history(node, page):
    from playwright.sync_api import expect

    # the node has sampled for a while: a page opened now draws that history at once
    wait_for(lambda: len(node.admin.get("/v1/history").json()["t"]) >= 3, 30, "three samples kept")
    page.goto(f"{node.url}/ui/#token={node.admin_token}")
    view(page, "overview")
    rate = "route:readings:rate"
    expect(page.locator(f"[data-chart='{rate}']")).to_be_visible()
    wait_for(lambda: samples(page, rate) >= 3, 30, "the history on the route's chart")
    # then each live sample adds a point, to every chart
    for chart in (rate, "route:readings:latency", "deployment:echo:rate", "node:cpu", "node:memory", "node:outbox"):
        before = samples(page, chart)
        wait_for(lambda c=chart, b=before: samples(page, c) > b, 30, f"a new point on {chart}")
    legend = page.locator(f"[data-chart='{rate}'] .legend-value").first
    wait_for(lambda: re.fullmatch(r"[\d.]+", legend.inner_text()) and float(legend.inner_text()) > 0, 30,
             "a message rate above 0 in the legend")
    assert page.locator(f"[data-chart='{rate}'] path.line").count() == 3   # in, out, dead letters
    assert page.csp_errors == []


def test_a_node_outside_a_fleet_is_never_asked_for_fleet_views_and_nothing_is_polled(node, page):
    requests: list[str] = []
    page.on("request", lambda r: requests.append(f"{r.method} {r.url.removeprefix(node.url)}"))
    page.goto(f"{node.url}/ui/#token={node.admin_token}")
    for name in VIEWS:
        view(page, name)
    view(page, "overview")
    chart = "route:readings:rate"
    for _ in range(3):   # three samples arrive through the one stream
        before = samples(page, chart)
        wait_for(lambda b=before: samples(page, chart) > b, 30, "a sample")
    assert [r for r in requests if "/v1/fleet" in r] == []
    assert [r for r in requests if "/v1/stream" in r] == ["GET /v1/stream"]
    lists = [r for r in requests if r.startswith("GET /v1/routes")]
    assert len(lists) <= 2, lists    # read at sign-in (and after an event), not every few seconds


def test_a_wrong_token_shows_the_apis_reason_and_the_form_takes_another(node, page):
    from playwright.sync_api import expect

    page.goto(f"{node.url}/ui/#token=iot_not-a-real-token")
    expect(page.locator("#banner")).to_contain_text("unknown or revoked token")
    expect(page.locator("#dashboard")).to_be_hidden()
    expect(page.locator("#token-form")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('iotwasm.token')") is None
    viewer = node.token("viewer", name="dashboard-viewer")
    page.fill("#token-input", viewer)
    page.click("#token-form button[type=submit]")
    view(page, "deployments")
    expect(cell(page, "deployments", "echo", "state")).to_have_text("running")
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#whoami")).to_contain_text("dashboard-viewer · viewer")


def test_a_revoked_token_ends_the_stream_and_the_page_asks_for_another(node, page):
    from playwright.sync_api import expect

    made = node.admin.post("/v1/tokens", json={"name": "short-lived", "role": "viewer"}).json()
    page.goto(f"{node.url}/ui/#token={made['token']}")
    view(page, "overview")
    wait_for(lambda: samples(page, "node:cpu") > 0, 30, "samples for the token")
    assert node.admin.delete(f"/v1/tokens/{made['id']}").status_code == 200
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("revoked")


def test_dashboard_files_need_no_token_and_come_with_a_strict_policy(node):
    from iotwasm.api.dashboard import served

    files = served()
    assert {"", "app.js", "api.js", "dom.js", "chart.js", "dashboard.css", "favicon.svg"} <= set(files)
    for name, (content, _) in files.items():   # each view's module stays readable
        if name.endswith(".js"):
            assert content.count(b"\n") <= 400, name
    with httpx.Client(base_url=node.url, timeout=10) as c:
        r = c.get("/")
        assert r.status_code == 307 and r.headers["location"] == "/ui/"
        for sub, (content, media) in files.items():
            r = c.get(f"/ui/{sub}")
            assert r.status_code == 200 and r.headers["content-type"] == media and r.content == content, sub
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
            assert r.headers["x-content-type-options"] == "nosniff"
        html = c.get("/ui/").text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), "no inline script"
        assert not re.search(r"\bstyle=", html) and "<style" not in html, "no inline style"
        assert not re.search(rb"https?://", b"".join(c for n, (c, _) in files.items() if n.endswith(".js"))
                             .replace(b"http://www.w3.org/2000/svg", b"")), "nothing from elsewhere"
        # the data stays behind the token
        assert c.get("/v1/node").status_code == 401
        assert c.get("/v1/stream").status_code == 401
        assert "/ui/" not in c.get("/openapi.json", headers={
            "Authorization": f"Bearer {node.admin_token}"}).text


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


def test_the_greenhouse_demo_on_the_dashboard(tmp_path, page):
    """The example greenhouse as it ships: its decoder meets the simulator's corrupt frames, and
    the page says what they are instead of a bare error count."""
    from playwright.sync_api import expect

    n = ApiNode(tmp_path, manifests=ROOT / "examples" / "greenhouse", name="greenhouse").start()
    try:
        page.goto(f"{n.url}/ui/#token={n.admin_token}")
        view(page, "deployments")
        wait_for(lambda: count(page, "deployments", "decode", "dead_letters") > 0, 60, "a corrupt frame")
        expect(cell(page, "deployments", "decode", "errors")).to_contain_text("guest_error")
        expect(cell(page, "deployments", "decode", "errors").locator("[data-field=last_error]")).to_contain_text(
            "last: decode:iot_process: bad CRC")
        view(page, "pipelines")
        for route in ("ingest", "temperature", "humidity", "alerts"):
            expect(page.locator(f"#pipelines section.pipeline[data-name='{route}']")).to_be_visible()
        ingest = page.locator("#pipelines section.pipeline[data-name='ingest']")
        expect(ingest.locator("g.pnode.step[data-name='decode']")).to_be_visible()
        expect(page.locator("#pipelines section.pipeline[data-name='temperature'] g.pnode.step")).to_have_count(3)
        view(page, "deadletters")
        page.select_option("#dl-route", "ingest")
        expect(page.locator("#dead-letters [data-field=step]").first).to_have_text("decode")
        expect(page.locator("#dead-letters [data-field=module]").first).to_have_text("frame_decoder.wasm")
        expect(page.locator("#dead-letters td[data-col=reason]").first).to_contain_text("bad CRC")
        expect(page.locator("#dead-letters td[data-col=payload] .badge").first).to_have_text("hex")
        view(page, "rules")
        expect(cell(page, "rules", "greenhouse-heat", "state")).to_have_text("enabled")
        expect(cell(page, "rules", "humidity-spread", "state")).to_have_text("enabled")
        assert page.csp_errors == []
        if SHOTS is not None:   # the documentation's pictures: after a minute of history
            view(page, "overview")
            wait_for(lambda: samples(page, "route:ingest:rate") >= 60, 120, "a minute of samples")
            for name in ("overview", "pipelines", "deployments", "routes", "rules", "deadletters", "events"):
                view(page, name)
                if name == "pipelines":   # at a moment a corrupt frame was just dead-lettered
                    wait_for(lambda: ingest.get_attribute("data-failing") == "decode", 60, "decode failing")
                shot(page, name, full=name in ("overview", "pipelines"))
            page.emulate_media(color_scheme="dark")
            page.set_viewport_size({"width": 820, "height": 1180})   # a tablet, upright
            view(page, "pipelines")
            shot(page, "tablet")
    finally:
        n.stop()


def run_up(tmp: Path, data: Path, terminal: bool) -> str:
    from iotwasm.api import ApiSettings
    from iotwasm.cli.up import run_node
    from iotwasm.node import NodeConfig

    tmp.mkdir()
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=100, color_system=None)
    config = NodeConfig(data_dir=data, manifests=manifests(tmp), name="up-node")
    run = run_node(config, console, seconds=0.5, api=ApiSettings(f"127.0.0.1:{free_port()}"))
    # in a thread of its own: Playwright's loop may be running in this one
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run).result(60)
    return out.getvalue()


def dashboard_line(text: str) -> str:
    return next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("dashboard: "))


def test_up_prints_the_dashboard_link_with_the_token_only_on_a_terminal(tmp_path):
    data = tmp_path / "data"
    line = dashboard_line(run_up(tmp_path / "a", data, terminal=True))
    token = (data / "admin.token").read_text().strip()
    assert re.fullmatch(r"dashboard: http://127\.0\.0\.1:\d+/ui/#token=" + re.escape(token), line)
    # later starts: still there while the token file can be read …
    assert dashboard_line(run_up(tmp_path / "b", data, terminal=True)).endswith(f"/ui/#token={token}")
    # … but never into a log or a pipe
    out = run_up(tmp_path / "c", data, terminal=False)
    assert re.fullmatch(r"dashboard: http://127\.0\.0\.1:\d+/ui/", dashboard_line(out)) and token not in out
    # without the file, the page asks for a token
    (data / "admin.token").unlink()
    assert dashboard_line(run_up(tmp_path / "d", data, terminal=True)).endswith("/ui/")


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
        expect(cell(page, "fleet-deployments", "far", "problems")).to_have_text("0 of 1 copies assigned")
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
