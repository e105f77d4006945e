"""The web dashboard in a real browser (tests/dashboard.py) following real nodes: one whose
sensors source keeps numbers moving — the token taken out of the address bar, counters that
rise, charts that receive live points and start from the history, one stream and no fleet
requests outside a fleet, a wrong and a revoked token, the files and their strict policy — and
the greenhouse example as it ships; and the dashboard link `iotwasm up` prints, with the token
only on a terminal."""

from __future__ import annotations

import asyncio
import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from apinode import ApiNode, wait_for
from brokers import free_port
from conftest import ECHO_WAT, ROOT
from dashboard import SHOTS, VIEWS, cell, count, samples, shot, view

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


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    n = ApiNode(tmp, manifests=manifests(tmp)).start()
    yield n
    n.stop()


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
