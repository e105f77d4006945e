"""The browser for the dashboard's tests (tests/test_dashboard_live.py and
tests/test_dashboard_ops.py): Debian's Chromium, driven by Playwright. Nothing is fetched from
the internet: the browser is the system's (scripts/setup.sh installs it), never one Playwright
downloads.

The fixtures `browser` (one for each test module) and `page` (a context of its own for each
test, recording what broke the page's Content Security Policy) are registered for every test by
conftest.py (`pytest_plugins`); a test module names them as parameters and imports nothing.
The rest reads and drives the page: a table's cell and its count, a view, a chart's samples, the
confirmation step.

With IOTWASM_SCREENSHOTS=1 the tests also write the screenshots docs/api.md shows
(docs/img/dashboard-*.png), each taken from the page they just checked (`shot`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 30_000
SHOTS = ROOT / "docs" / "img" if os.environ.get("IOTWASM_SCREENSHOTS") else None
VIEWS = ("overview", "pipelines", "deployments", "routes", "rules", "deadletters", "events")


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
