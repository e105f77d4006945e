"""The web dashboard in a real browser: Debian's Chromium, driven by Playwright, against a real
node whose sensors source keeps numbers moving. Nothing is fetched from the internet: the
browser is the system's (scripts/setup.sh installs it), never one Playwright downloads."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from apinode import ECHO_WASM, ApiNode, wait_for
from brokers import free_port, nats_server  # noqa: F401
from conftest import ECHO_WAT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 30_000

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


@pytest.fixture()
def page(browser):
    context = browser.new_context()
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


def test_dashboard_shows_the_node_live_and_takes_the_token_out_of_the_address_bar(node, page):
    from playwright.sync_api import expect

    page.goto(f"{node.url}/#token={node.admin_token}")     # / sends the browser on to /ui/
    expect(cell(page, "deployments", "echo", "state")).to_have_text("running")
    expect(cell(page, "deployments", "echo", "state").locator(".badge")).to_have_class(re.compile(r"\bok\b"))
    expect(cell(page, "routes", "readings", "state")).to_have_text("running")
    expect(page.locator("#node-name")).to_have_text("testnode")
    # the numbers move: the page keeps reading the API
    wait_for(lambda: count(page, "routes", "readings", "received") > 0, 30, "route counters on the page")
    first = count(page, "routes", "readings", "received")
    wait_for(lambda: count(page, "routes", "readings", "received") > first, 30, "a counter that increases")
    wait_for(lambda: count(page, "deployments", "echo", "messages") > 0, 30, "deployment messages")
    expect(cell(page, "routes", "readings", "p99_ms")).to_have_text(re.compile(r"^\d+\.\d\d$"))
    # the token left the address bar at once, and stays in this tab only
    assert page.url == f"{node.url}/ui/"
    assert "token" not in page.evaluate("location.href")
    assert page.evaluate("sessionStorage.getItem('iotwasm.token')") == node.admin_token
    # not in a fleet: no fleet panel; no errors; nothing the page did broke its own policy
    expect(page.locator("#fleet-panel")).to_be_hidden()
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#events")).to_contain_text("echo")
    assert page.csp_errors == []
    # a reload keeps the session; signing out forgets the token
    page.reload()
    expect(cell(page, "routes", "readings", "state")).to_have_text("running")
    page.click("#signout")
    expect(page.locator("#token-form")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('iotwasm.token')") is None


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
    expect(cell(page, "deployments", "echo", "state")).to_have_text("running")
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#node-summary")).to_contain_text("dashboard-viewer (viewer)")


def test_dashboard_files_need_no_token_and_come_with_a_strict_policy(node):
    with httpx.Client(base_url=node.url, timeout=10) as c:
        r = c.get("/")
        assert r.status_code == 307 and r.headers["location"] == "/ui/"
        for path, media in (("/ui/", "text/html"), ("/ui/dashboard.js", "text/javascript"),
                            ("/ui/dashboard.css", "text/css")):
            r = c.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith(media), path
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
            assert r.headers["x-content-type-options"] == "nosniff"
        html = c.get("/ui/").text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), "no inline script"
        # the data stays behind the token
        assert c.get("/v1/node").status_code == 401
        assert "/ui/" not in c.get("/openapi.json", headers={
            "Authorization": f"Bearer {node.admin_token}"}).text


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


def test_a_node_in_a_fleet_shows_the_fleet_panel(nats_server, tmp_path, page):  # noqa: F811
    from playwright.sync_api import expect

    n = ApiNode(tmp_path, fleet={"url": nats_server.url, "labels": {"site": "a"}, "heartbeat_s": 0.3},
                name="fleet-node").start()

    async def desired():   # a fleet deployment nobody places (no controller runs): 0 of 1 assigned
        from iotwasm.fleet import FleetDeployment, FleetStore

        store = await FleetStore.connect(nats_server.url)
        try:
            digest = await store.put_module(ECHO_WASM)
            await store.put_deployment(FleetDeployment.parse({
                "deployment": {"apiVersion": "iotwasm.io/v1", "kind": "Deployment", "metadata": {"name": "far"},
                               "spec": {"module": digest}},
                "placement": {"nodeSelector": {"site": "mars"}}}), None)
        finally:
            await store.close()

    try:
        with ThreadPoolExecutor(1) as pool:   # the browser's driver holds this thread's loop
            pool.submit(asyncio.run, desired()).result(60)
        page.goto(f"{n.url}/ui/#token={n.admin_token}")
        expect(page.locator("#fleet-panel")).to_be_visible()
        expect(page.locator("#fleet-summary")).to_contain_text(nats_server.url)
        expect(cell(page, "fleet-nodes", "fleet-node", "health")).to_have_text("ok")
        expect(cell(page, "fleet-nodes", "fleet-node", "labels")).to_have_text("site a")
        expect(page.locator("#fleet-rollouts")).to_contain_text("no rollouts")
        expect(cell(page, "fleet-deployments", "far", "copies")).to_have_text("0 / 0 / 1")
        expect(cell(page, "fleet-deployments", "far", "problems")).to_have_text("0 of 1 copies assigned")
        expect(page.locator("#banner")).to_be_hidden()
    finally:
        n.stop()
