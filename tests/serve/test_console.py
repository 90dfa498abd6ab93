"""The console in a real browser: Debian's Chromium driven by Playwright, against the
session's Serve app. Each page's screenshot is saved under test-artifacts/console/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.fixtures_sim import Sim
from tests.serve.conftest import Service
from tests.serve.tenants import ACME_KEY, ADMIN_KEY, GLOBEX_KEY, auth

pytestmark = pytest.mark.serve

CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium (scripts/ensure-chromium installs it): Playwright never downloads one."""
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root in CI
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
HANG = {"type": "text", "text": "x", "delay_ms": 120_000}
KILLED_AGENT = "concierge"

expect.set_options(timeout=30_000)  # a loaded 2-core machine: a condition, not a pace


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for this module's tests. Not session-wide: while Playwright's sync API is
    open, its event loop counts as running in this thread, so every async test after it
    would fail ("Cannot run the event loop while another loop is running")."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, service: Service) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) on the console; fails on any console error, a
    Content-Security-Policy violation included."""
    context = browser.new_context(
        base_url=service.base_url, viewport={"width": 1200, "height": 900}
    )
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.goto("/console")
    try:
        yield opened
    finally:
        context.close()
    # A refused request (404, 503) is logged by Chromium as a failed resource: not a bug.
    assert [e for e in errors if "Failed to load resource" not in e] == []


def use_key(page: Page, key: str) -> None:
    page.fill("#key", key)
    page.click("#key-use")
    expect(page.locator("#key-state")).to_have_text("key set (this tab only)")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def start_from_page(page: Page, agent: str, text: str) -> None:
    page.goto("/console#/start")
    page.locator("#start-agent").select_option(agent)
    page.fill("#start-input", text)
    page.click("#start-submit")


def test_the_page_and_its_files_are_served_with_a_strict_csp(service: Service) -> None:
    response = service.http.get("/console")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "unsafe" not in csp
    assert not re.search(r"(src|href)=\"(https?:)?//", response.text), "no other origin"
    for name in ("console.js", "api.js", "console.css"):
        asset = service.http.get(f"/console/static/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"].startswith(("text/javascript", "text/css"))
        assert "innerHTML" not in asset.text
    missing = service.http.get("/console/static/..%2Fgateway.py")
    assert missing.status_code == 404
    assert service.http.get("/console/static/nope.js").status_code == 404


def test_a_run_started_from_the_page_streams_its_tokens_tool_call_and_result(
    page: Page, sim: Sim
) -> None:
    sim.script(
        {
            "type": "tool_call",
            "name": "lookup_order",
            "arguments": {"order_id": 1234},
            "text": "Let me look up order 1234.",
        },
        {"type": "text", "text": "Order 1234 has shipped and arrives Tuesday."},
    )
    use_key(page, ACME_KEY)
    start_from_page(page, "support", "Where is order 1234?")
    expect(page).to_have_url(re.compile(r"#/runs/[^/]+$"))
    step1 = page.locator('.step[data-step="1"]')
    expect(step1.locator(".tokens")).to_have_text("Let me look up order 1234.")
    expect(step1.locator(".tool-call strong")).to_have_text("→ lookup_order")
    expect(step1.locator(".tool-arguments")).to_contain_text('"order_id": 1234')
    expect(step1.locator(".tool-result")).to_have_attribute("data-ok", "true")
    expect(step1.locator(".tool-output")).not_to_be_empty()
    expect(page.locator('.step[data-step="2"] .tokens')).to_have_text(
        "Order 1234 has shipped and arrives Tuesday."
    )
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator("#run-output pre")).to_have_text(
        "Order 1234 has shipped and arrives Tuesday."
    )
    expect(page.locator("#run-cancel")).to_be_disabled()
    screenshot(page, "run-completed")


def test_tokens_and_the_tool_result_show_while_the_run_is_live_and_it_cancels(
    page: Page, sim: Sim
) -> None:
    # The second model call hangs: what the page shows, it showed while the run was running.
    sim.script(
        {
            "type": "tool_call",
            "name": "lookup_order",
            "arguments": {"order_id": 1002},
            "text": "Checking order 1002.",
        },
        HANG,
    )
    use_key(page, ACME_KEY)
    start_from_page(page, "support", "Where is order 1002?")
    step1 = page.locator('.step[data-step="1"]')
    expect(step1.locator(".tokens")).to_have_text("Checking order 1002.")
    expect(step1.locator(".tool-result")).to_have_attribute("data-ok", "true")
    expect(page.locator('.step[data-step="2"]')).to_be_visible()
    expect(page.locator("#run-status")).to_have_text("running")
    screenshot(page, "run-live")
    page.click("#run-cancel")
    expect(page.locator("#run-status")).to_have_text("cancelled")
    expect(page.locator("#run-output")).to_contain_text("cancelled")


def test_another_tenants_run_and_an_unknown_id_are_not_found(page: Page, service: Service) -> None:
    created = service.http.post(
        "/v1/agents/support/runs", json={"input": "hello"}, headers=auth(ACME_KEY)
    )
    assert created.status_code == 202, created.text
    run_id = created.json()["run_id"]
    use_key(page, GLOBEX_KEY)
    page.goto(f"/console#/runs/{run_id}")
    expect(page.locator("#not-found")).to_have_text(re.compile("not found"))
    expect(page.locator("#run-status")).to_have_count(0)
    screenshot(page, "run-not-found")
    page.goto("/console#/runs/run-does-not-exist")
    expect(page.locator("#not-found")).to_be_visible()
    use_key(page, ACME_KEY)  # its owner sees it
    page.goto(f"/console#/runs/{run_id}")
    expect(page.locator("#run-meta")).to_contain_text("tenant acme")


def test_the_runs_page_lists_runs_or_says_the_list_is_not_available(page: Page) -> None:
    use_key(page, ACME_KEY)
    page.goto("/console#/runs")
    expect(page.locator("#runs-unavailable, #runs-table, #runs-body .notice")).to_be_visible()
    screenshot(page, "runs")


def test_an_admin_kill_switch_set_in_the_fleet_page_refuses_runs_until_cleared(
    page: Page, service: Service
) -> None:
    try:
        use_key(page, ADMIN_KEY)
        page.goto("/console#/fleet")
        expect(page.locator("#tenant-table tr[data-tenant='acme']")).to_be_visible()
        page.locator("#kill-scope").select_option("agents")
        page.fill("#kill-name", KILLED_AGENT)
        page.fill("#kill-reason", "console test: paused")
        page.click("#kill-set")
        row = page.locator(f"#kill-table tr[data-scope='agents'][data-name='{KILLED_AGENT}']")
        expect(row).to_contain_text("console test: paused")
        screenshot(page, "fleet")

        use_key(page, ACME_KEY)
        start_from_page(page, KILLED_AGENT, "Where is order 1234?")
        expect(page.locator("#start-error")).to_contain_text("503")
        expect(page).to_have_url(re.compile(r"#/start$"))

        use_key(page, ADMIN_KEY)
        page.goto("/console#/fleet")
        row.locator(".kill-clear").click()
        expect(page.locator("#kill-none")).to_be_visible()

        use_key(page, ACME_KEY)
        start_from_page(page, KILLED_AGENT, "Where is order 1234?")
        expect(page).to_have_url(re.compile(r"#/runs/[^/]+$"))
        expect(page.locator("#run-meta")).to_contain_text(f"{KILLED_AGENT}@")
    finally:
        cleared = service.http.post(
            "/v1/admin/kill",
            json={"scope": "agents", "name": KILLED_AGENT, "reason": None},
            headers=auth(ADMIN_KEY),
        )
        assert cleared.status_code == 200, cleared.text


def test_the_key_lives_only_in_the_tabs_session_storage(page: Page) -> None:
    use_key(page, ACME_KEY)
    assert page.evaluate("sessionStorage.getItem('rayfleet.apiKey')") == ACME_KEY
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    assert page.input_value("#key") == ""  # not left in the page either
    page.click("#key-forget")
    expect(page.locator("#key-state")).to_have_text("no key")
    assert page.evaluate("sessionStorage.length") == 0


def test_the_fleet_page_needs_the_admin_key(page: Page) -> None:
    use_key(page, ACME_KEY)
    page.goto("/console#/fleet")
    expect(page.locator("#fleet-denied")).to_contain_text("401")


def test_a_sub_agents_events_nest_under_its_call(page: Page, sim: Sim) -> None:
    use_key(page, ACME_KEY)
    start_from_page(page, "concierge", "Where is order 1002?")
    nested = page.locator(".subagent").first
    expect(nested.locator("summary")).to_contain_text("sub-agent concierge-orders")
    expect(nested).to_contain_text("Input: ")
    expect(nested.locator(".tool-call").first).to_be_visible()
    expect(page.locator("#run-status")).to_have_text("completed")
    screenshot(page, "run-subagents")
