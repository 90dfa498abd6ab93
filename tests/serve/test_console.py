"""The console in a real browser: Debian's Chromium driven by Playwright, against the
session's Serve app. Each page's screenshot is saved under test-artifacts/console/."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from serve_app.tenancy import digest
from serve_app.traffic import TrafficConfig, TrafficRouter
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service
from tests.serve.tenants import (
    ACME_KEY,
    ADMIN_KEY,
    CONSOLE_KEY,
    GLOBEX_KEY,
    TENANCY,
    THRIFTY_KEY,
    auth,
)

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
CANARY_APP = "rayfleet-console-canary"
CANARY_PREFIX = "/console-canary"
"""A second app with support@v2 as a canary of v1: its own console, under a route prefix."""

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


CANARY_SPLIT = {
    "weights": {"v1": 80, "v2": 20},
    "stable": "v1",
    "canary": "v2",
    "shadows": [{"version": "v2", "sample": 1.0, "primary": "v1"}],
}


@pytest.fixture(scope="module")
def canary_app(service: Service) -> Iterator[str]:
    """support v1 (stable) and v2 (canary, 20%; every v1 run mirrored to it) served at
    CANARY_PREFIX; its base URL. In this app the `console` tenant's key is an admin key
    too (an operator's key): the Versions page's admin controls need both."""
    from ray import serve

    from serve_app.app import build_app

    # A gate of its own: a rollback is stored against this exact config, not a later one's.
    # It never judges (min_runs): the rollback here is the admin's button. The outcome store
    # is the session's, and after tests/serve/test_versions.py it holds a worse support@v2
    # there: an automatic rollback on those figures would beat the button.
    gate = {"window_s": 3600 + uuid.uuid4().int % 1000, "min_runs": 1_000_000}
    split = {**CANARY_SPLIT, "gate": gate}
    tenancy = TENANCY.model_copy(
        update={"admin_key_sha256": (*TENANCY.admin_key_sha256, digest(CONSOLE_KEY))}
    )
    config = service.config.model_copy(
        update={
            "agents": ("example:support.yaml", "example:versions/support-v2.yaml"),
            "traffic": TrafficConfig.model_validate({"agents": {"support": split}}),
            "tenancy": tenancy,
        }
    )
    serve.run(build_app(config), name=CANARY_APP, route_prefix=CANARY_PREFIX)
    try:
        yield f"{service.base_url}{CANARY_PREFIX}"
    finally:
        serve.delete(CANARY_APP)


def _thread_on_v1() -> str:
    """A thread the canary app routes to v1 (threads stick to a version), so it is mirrored."""
    router = TrafficRouter(
        TrafficConfig.model_validate({"agents": {"support": CANARY_SPLIT}}),
        {"support": ["v1", "v2"]},
    )
    for _ in range(1000):
        thread = f"console-canary-{uuid.uuid4().hex[:10]}"
        if router.choose("support", "console", thread, "any").version == "v1":
            return thread
    raise AssertionError("no thread lands on v1")


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


def start_run(
    service: Service, key: str, agent: str = "support", text: str = "hello", **body: Any
) -> str:
    created = service.http.post(
        f"/v1/agents/{agent}/runs", json={"input": text, **body}, headers=auth(key)
    )
    assert created.status_code == 202, created.text
    run_id: str = created.json()["run_id"]
    return run_id


def finished(service: Service, key: str, run_id: str) -> dict[str, Any]:
    """The run's summary once it has ended: no run of a test outlives it (and takes a later
    test's scripted reply)."""

    def ended() -> dict[str, Any] | None:
        found: dict[str, Any] = service.http.get(f"/v1/runs/{run_id}", headers=auth(key)).json()
        return found if found["status"] != "running" else None

    return wait_for(ended, timeout_s=90, interval_s=0.1)


def cancel(service: Service, key: str, run_id: str) -> None:
    cancelled = service.http.post(f"/v1/runs/{run_id}/cancel", headers=auth(key))
    assert cancelled.status_code in (200, 202), cancelled.text
    assert finished(service, key, run_id)["status"] == "cancelled"


def hanging(sim: Sim) -> None:
    """Wait until a run has taken the scripted hang (its model call now waits)."""
    wait_for(lambda: sim.pending() == 0, timeout_s=60, interval_s=0.1)


def open_runs(page: Page, query: str = "") -> None:
    """The runs list with `query` ("status=failed"), once it shows the rows for it."""
    page.goto(f"/console#/runs?{query}" if query else "/console#/runs")
    shown(page, query)


def shown(page: Page, query: str) -> None:
    """Wait until the list shows the rows answering `query`, not a previous view's."""
    expect(page.locator("#runs-body")).to_have_attribute("data-query", query)
    expect(page.locator("#runs-table, #runs-table-empty")).to_be_visible()


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
    # The console tenant's own key: concierge answers from a per-tenant response cache, and
    # another tenant's later run of the same question must still pay for its model calls.
    use_key(page, CONSOLE_KEY)
    start_from_page(page, "concierge", "Where is order 1002?")
    nested = page.locator(".subagent").first
    expect(nested.locator("summary")).to_contain_text("sub-agent concierge-orders")
    expect(nested.locator(".subagent-input")).to_contain_text("Input: ")
    expect(nested.locator("summary .badge")).to_have_text("completed")  # its own status
    expect(nested.locator(".tool-call").first).to_be_visible()
    expect(page.locator("#run-status")).to_have_text("completed")
    screenshot(page, "run-subagents")


def test_the_runs_list_filters_by_status_and_by_agent(
    page: Page, service: Service, sim: Sim
) -> None:
    sim.script(HANG)
    cancelled = start_run(service, CONSOLE_KEY, "support", "Where is order 1002?")
    hanging(sim)
    cancel(service, CONSOLE_KEY, cancelled)
    concierge = start_run(service, CONSOLE_KEY, "concierge", "Where is order 1003?")
    assert finished(service, CONSOLE_KEY, concierge)["status"] == "completed"
    use_key(page, CONSOLE_KEY)
    open_runs(page)
    rows = page.locator("#runs-table tbody tr")

    page.locator("#filter-status").select_option("cancelled")
    page.click("#filter-apply")
    expect(page).to_have_url(re.compile(r"#/runs\?status=cancelled$"))
    shown(page, "status=cancelled")
    expect(page.locator(f"#runs-table tr[data-run='{cancelled}']")).to_be_visible()
    expect(page.locator(f"#runs-table tr[data-run='{concierge}']")).to_have_count(0)
    expect(rows.and_(page.locator(":not([data-status='cancelled'])"))).to_have_count(0)
    screenshot(page, "runs-by-status")

    page.locator("#filter-status").select_option("")
    page.locator("#filter-agent").select_option("concierge")
    page.click("#filter-apply")
    shown(page, "agent=concierge")
    expect(page.locator(f"#runs-table tr[data-run='{concierge}']")).to_be_visible()
    expect(page.locator(f"#runs-table tr[data-run='{cancelled}']")).to_have_count(0)
    expect(rows.and_(page.locator(":not([data-agent='concierge'])"))).to_have_count(0)
    page.reload()  # the filters live in the URL
    shown(page, "agent=concierge")
    expect(page.locator("#filter-agent")).to_have_value("concierge")
    expect(page.locator(f"#runs-table tr[data-run='{concierge}']")).to_be_visible()

    # Time: nothing was created after 2099; everything before it.
    page.locator("#filter-agent").select_option("")
    page.fill("#filter-since", "2099-01-01T00:00")
    page.click("#filter-apply")
    expect(page).to_have_url(re.compile(r"#/runs\?since=\d+$"))
    expect(page.locator("#runs-table-empty")).to_be_visible()
    page.fill("#filter-since", "")
    page.fill("#filter-until", "2099-01-01T00:00")
    page.click("#filter-apply")
    expect(page).to_have_url(re.compile(r"#/runs\?until=\d+$"))
    expect(page.locator(f"#runs-table tr[data-run='{concierge}']")).to_be_visible()


def test_the_runs_list_pages_past_one_page(page: Page, service: Service) -> None:
    started = [start_run(service, CONSOLE_KEY, "support", f"hello {i}") for i in range(5)]
    for run_id in started:
        finished(service, CONSOLE_KEY, run_id)
    use_key(page, CONSOLE_KEY)
    open_runs(page, "limit=2")
    seen: list[str] = []
    for page_number in range(1, 100):  # bounded: the tenant holds this module's runs only
        expect(page.locator("#runs-body")).to_have_attribute("data-page", str(page_number))
        rows = page.locator("#runs-table tbody tr")
        expect(rows.first).to_be_visible()
        ids = [rows.nth(i).get_attribute("data-run") for i in range(rows.count())]
        assert 1 <= len(ids) <= 2, ids
        seen += [i for i in ids if i]
        if page_number == 2:
            expect(page.locator("#runs-mode")).to_have_attribute("data-mode", "paused")
            screenshot(page, "runs-page-2")
        if set(started) <= set(seen) or page.locator("#runs-next").count() == 0:
            break
        page.click("#runs-next")
    assert set(started) <= set(seen), "every run is on some page"
    assert len(seen) == len(set(seen)), "no run on two pages"
    assert page_number >= 3
    page.click("#runs-first")
    expect(page.locator("#runs-body")).to_have_attribute("data-page", "1")
    expect(page.locator(f"#runs-table tr[data-run='{started[-1]}']")).to_be_visible()


def test_a_run_started_over_http_appears_in_the_open_list_and_its_status_changes_live(
    page: Page, service: Service, sim: Sim
) -> None:
    use_key(page, CONSOLE_KEY)
    open_runs(page)
    expect(page.locator("#runs-mode")).to_have_attribute("data-mode", "live")  # SSE, not polls
    page.evaluate("window.notReloaded = true")
    sim.script(HANG)
    run_id = start_run(service, CONSOLE_KEY, "support", "Where is order 1002?")
    row = page.locator(f"#runs-table tr[data-run='{run_id}']")
    expect(row.locator(".badge")).to_have_text("running")
    screenshot(page, "runs-live")
    hanging(sim)
    cancel(service, CONSOLE_KEY, run_id)
    expect(row.locator(".badge")).to_have_text("cancelled")
    assert page.evaluate("window.notReloaded") is True


def test_another_tenants_key_does_not_list_its_runs(page: Page, service: Service) -> None:
    run_id = start_run(service, CONSOLE_KEY)
    finished(service, CONSOLE_KEY, run_id)
    use_key(page, CONSOLE_KEY)
    open_runs(page)
    expect(page.locator(f"#runs-table tr[data-run='{run_id}']")).to_be_visible()
    use_key(page, GLOBEX_KEY)
    open_runs(page, "tenant=console")  # asking for another tenant finds nothing either
    expect(page.locator("#runs-table-empty")).to_be_visible()
    open_runs(page)
    expect(page.locator(f"tr[data-run='{run_id}']")).to_have_count(0)
    rows = page.locator("#runs-table tbody tr")
    expect(rows.and_(page.locator(":not([data-tenant='globex'])"))).to_have_count(0)
    screenshot(page, "runs-other-tenant")


def test_the_thread_page_lists_a_threads_runs_in_order(page: Page, service: Service) -> None:
    thread = f"console-{uuid.uuid4().hex[:10]}"
    turns = ["first question", "second question", "third question"]
    runs = []
    for text in turns:  # one after the other: a conversation
        runs.append(start_run(service, CONSOLE_KEY, "support", text, thread_id=thread))
        finished(service, CONSOLE_KEY, runs[-1])
    use_key(page, CONSOLE_KEY)
    open_runs(page)
    page.locator(f"#runs-table tr[data-run='{runs[1]}'] .thread-link").click()
    expect(page).to_have_url(re.compile(rf"#/threads/{thread}$"))
    items = page.locator("#thread-turns .turn")
    expect(items).to_have_count(3)
    for i, (run_id, text) in enumerate(zip(runs, turns, strict=True)):
        expect(items.nth(i)).to_have_attribute("data-run", run_id)
        expect(items.nth(i).locator(".turn-input")).to_have_text(f"asked: {text}")
        expect(items.nth(i).locator(".turn-output")).to_contain_text("answered: ")
    expect(page.locator("#thread-body tbody tr")).to_have_count(3)
    screenshot(page, "thread")
    items.nth(2).locator("a").click()
    expect(page.locator("#run-input")).to_have_text(f"Input: {turns[2]}")


def test_the_run_page_shows_a_waterfall_fallbacks_and_budget(page: Page, sim: Sim) -> None:
    # sim-openai fails twice, sim-anthropic answers with a tool call; then the final answer.
    sim.script(
        {"type": "status", "status": 500},
        {"type": "status", "status": 500},
        {"type": "tool_call", "name": "lookup_order", "arguments": {"order_id": 1002}},
        {"type": "text", "text": "Order 1002 is on its way."},
    )
    use_key(page, ACME_KEY)
    start_from_page(page, "support", "Where is order 1002?")
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator(".note-fallback").first).to_contain_text("sim-openai/sim-strong")
    waterfall = page.locator("#waterfall")
    expect(waterfall.locator(".wf-bar[data-kind='step']")).to_have_count(2)
    expect(waterfall.locator(".wf-bar[data-kind='model']")).to_have_count(2)
    expect(waterfall.locator(".wf-bar[data-kind='tool']")).to_have_count(1)
    expect(waterfall.locator(".wf-row[data-kind='attempts'] .wf-label")).to_contain_text(
        "retries: sim-openai/sim-strong"
    )
    tool = waterfall.locator(".wf-row[data-kind='tool']")
    expect(tool.locator(".wf-label")).to_have_text("lookup_order")
    expect(tool.locator(".wf-figure")).to_contain_text("$")
    model = waterfall.locator(".wf-row[data-kind='model']").first
    expect(model.locator(".wf-label")).to_contain_text("sim-anthropic/")
    expect(model.locator(".wf-figure")).to_contain_text(re.compile(r"\d+ ms|\d+\.\d s"))
    expect(waterfall.locator(".wf-axis")).not_to_contain_text("live")
    expect(page.locator("#run-budget")).to_be_visible()
    expect(page.locator("#run-budget")).to_contain_text(re.compile(r"2 / \d+ steps"))
    expect(page.locator("#run-cost")).to_contain_text("2 steps")
    expect(page.locator("#run-approvals")).to_be_hidden()  # no call waits for a person
    screenshot(page, "run-waterfall")


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_a_call_that_waits_for_a_person_is_decided_on_the_run_page(
    page: Page, service: Service, sim: Sim, decision: str
) -> None:
    order = 20_000 + uuid.uuid4().int % 70_000  # the shop refunds an order once a session
    arguments = {"order_id": order, "reason": "arrived broken"}
    sim.script(
        {"type": "tool_call", "name": "issue_refund", "arguments": arguments},
        {"type": "text", "text": "Handled."},
    )
    use_key(page, CONSOLE_KEY)
    run_id = start_run(service, CONSOLE_KEY, "guarded-support", "refund my order")
    page.goto(f"/console#/runs/{run_id}")
    box = page.locator("#run-approvals .approval")
    expect(box).to_be_visible()
    expect(page.locator("#run-status")).to_have_text("awaiting_approval")
    expect(box.locator(".approval-arguments")).to_have_value(re.compile(str(order)))
    screenshot(page, "run-approval")
    if decision == "reject":
        box.locator(".approval-message").fill("send a photo first")
    box.locator(f".approval-{decision}").click()
    done = "approved" if decision == "approve" else "rejected"
    expect(box.locator(".approval-decided")).to_contain_text(f"{done} by tenant:console")
    expect(page.locator("#run-status")).to_have_text("completed")
    ok = "true" if decision == "approve" else "false"
    expect(page.locator(f".tool-result[data-ok='{ok}']")).to_be_visible()
    assert finished(service, CONSOLE_KEY, run_id)["status"] == "completed"


def test_the_versions_page_shows_versions_and_the_split_without_admin_controls(
    page: Page,
) -> None:
    use_key(page, ACME_KEY)
    page.goto("/console#/versions")
    support = page.locator("section.agent[data-agent='support']")
    expect(support.locator(".split")).to_contain_text("split: v1 100%")
    expect(support.locator(".split")).to_contain_text("stable v1")
    row = support.locator("tr[data-version='v1']")
    expect(row).to_contain_text("stable")
    expect(row).to_contain_text("lookup_order")
    expect(page.locator(".rollback, .shadows")).to_have_count(0)  # a tenant key: no admin
    screenshot(page, "versions")


def test_the_fleet_page_shows_tenants_usage_and_provider_health(
    page: Page, service: Service
) -> None:
    run_id = start_run(service, THRIFTY_KEY)  # a provider called, a tenant with a budget
    finished(service, THRIFTY_KEY, run_id)
    use_key(page, ADMIN_KEY)
    page.goto("/console#/fleet")
    thrifty = page.locator("#tenant-table tr[data-tenant='thrifty']")
    expect(thrifty.locator(".usage-budget progress")).to_be_visible()
    expect(thrifty.locator(".usage-budget")).to_contain_text(re.compile(r"\$[0-9.]+ / \$0\.03"))
    expect(thrifty).to_contain_text("$")
    expect(page.locator("#tenant-table tr[data-tenant='acme'] .usage-budget")).to_contain_text(
        "no limit"
    )
    expect(page.locator("#provider-table")).to_be_visible()
    expect(page.locator("#provider-table tr[data-breaker]").first).to_have_attribute(
        "data-state", re.compile("^(closed|open|half_open)$")
    )
    screenshot(page, "fleet-tenants-providers")


def test_the_versions_page_shows_a_canary_shadows_and_rolls_it_back(
    page: Page, service: Service, canary_app: str
) -> None:
    with httpx2.Client(base_url=canary_app, timeout=30) as http:

        def ended(run_id: str, key: str) -> bool:
            found = http.get(f"/v1/runs/{run_id}", headers=auth(key)).json()
            return bool(found["status"] != "running")

        for version in ("v1", "v2"):  # one run on each, so each has figures
            body = {"input": "hello", "version": version}
            created = http.post("/v1/agents/support/runs", json=body, headers=auth(ACME_KEY))
            assert created.status_code == 202, created.text
            run_id = created.json()["run_id"]
            wait_for(lambda: ended(run_id, ACME_KEY), timeout_s=90, interval_s=0.1)  # noqa: B023
        body = {"input": "hello", "thread_id": _thread_on_v1()}  # mirrored to v2
        created = http.post("/v1/agents/support/runs", json=body, headers=auth(CONSOLE_KEY))
        assert created.status_code == 202, created.text

        def mirrored() -> bool:
            report = http.get("/v1/admin/agents/support/shadows", headers=auth(ADMIN_KEY))
            pairs = report.json()["pairs"]
            return any(p["primary_version"] == "v1" and p["shadow_version"] == "v2" for p in pairs)

        wait_for(mirrored, timeout_s=90, interval_s=0.2)  # both runs have ended

    use_key(page, ACME_KEY)
    page.goto(f"{CANARY_PREFIX}/console#/versions")  # its own console calls its own API
    support = page.locator("section.agent[data-agent='support']")
    expect(support.locator(".split")).to_contain_text("split: v1 80% · v2 20%")
    expect(support.locator(".split")).to_contain_text("canary v2")
    expect(support.locator(".split")).to_contain_text("shadow: v2 mirrors 100% of v1 runs")
    expect(support.locator("tr[data-version='v2'] td").nth(1)).to_have_text("canary")
    canary = page.locator("#canary-support")
    expect(canary.locator("h4")).to_have_text("Canary v2 against stable v1")
    for figure in ("error rate", "cost per successful run", "p95 run time"):
        expect(canary.locator(f"tr[data-figure='{figure}']")).to_be_visible()
    runs = canary.locator("tr[data-figure='runs'] td")
    expect(runs.nth(1)).not_to_have_text("0")
    expect(runs.nth(2)).not_to_have_text("0")
    expect(canary.locator("tr[data-figure='cost per successful run'] td").nth(3)).to_have_text(
        re.compile(r"^\d+\.\d\d\u00d7$")  # the canary's figure over the stable's
    )
    expect(page.locator(".rollback, .shadows")).to_have_count(0)  # a tenant key: no admin
    screenshot(page, "versions-canary")

    use_key(page, CONSOLE_KEY)  # this app's operator: a tenant key that is an admin key too
    support = page.locator("section.agent[data-agent='support']")
    pair = support.locator(".shadow-table tr[data-shadow='v2']")
    expect(pair).to_contain_text("v1 → v2")
    expect(pair.locator("td").nth(2)).to_have_text(re.compile(r"^\d+\.\d%$"))  # agreement
    screenshot(page, "versions-admin")
    support.locator(".rollback").click()
    support = page.locator("section.agent[data-agent='support']")
    expect(support.locator(".rolled-back")).to_contain_text("rolled back by an admin")
    expect(support.locator(".split")).to_contain_text("v2 0%")
    expect(support.locator(".rollback")).to_have_count(0)
    page.reload()  # stored: the page says so again
    expect(page.locator("section.agent[data-agent='support'] .rolled-back")).to_be_visible()
    expect(page.locator(".shadow-table tr[data-shadow='v2']")).to_be_visible()
    screenshot(page, "versions-rolled-back")


def test_a_discarded_attempt_shows_and_its_text_is_thrown_away(page: Page, sim: Sim) -> None:
    # Step 2's first stream breaks after some text: that text is discarded, a retry answers.
    sim.script(
        {"type": "tool_call", "name": "lookup_order", "arguments": {"order_id": 1002}},
        {"type": "stream_error", "after_chunks": 3},
        {"type": "text", "text": "Recovered answer."},
    )
    use_key(page, ACME_KEY)
    start_from_page(page, "support", "Where is order 1002?")
    expect(page.locator("#run-status")).to_have_text("completed")
    step2 = page.locator('.step[data-step="2"]')
    expect(step2.locator(".note-discarded")).to_contain_text("discarded attempt")
    expect(step2.locator(".tokens")).to_have_text("Recovered answer.")
    expect(page.locator("#waterfall .wf-bar[data-note='discarded']")).to_have_count(1)
    screenshot(page, "run-discarded")
