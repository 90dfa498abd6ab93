"""The run list and a thread's runs, over HTTP and the handle API: filters, keyset pages
stable under inserts, tenant scoping (the admin key sees every tenant), bad queries -> 422.

Each test lists only runs it started after its own start time (`since`), under tenants that
only this module uses (lists_a, lists_b), so it passes in any order and alone."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service
from tests.serve.tenants import ADMIN_KEY, LISTS_A_KEY, LISTS_B_KEY, auth
from tests.serve.test_handle_driver import handle_calls

pytestmark = pytest.mark.serve

AGENT = "support"


def start(service: Service, key: str, thread_id: str | None = None) -> str:
    body: dict[str, Any] = {"input": "Where is order 1234?"}
    if thread_id is not None:
        body["thread_id"] = thread_id
    r = service.http.post(f"/v1/agents/{AGENT}/runs", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    run_id: str = r.json()["run_id"]
    return run_id


def finish(service: Service, key: str, run_id: str) -> None:
    def ended() -> bool:
        r = service.http.get(f"/v1/runs/{run_id}", headers=auth(key))
        return bool(r.json()["status"] != "running")

    wait_for(ended, timeout_s=30)


def page(service: Service, key: str, path: str = "/v1/runs", **query: Any) -> dict[str, Any]:
    r = service.http.get(path, params=query, headers=auth(key))
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def ids(found: dict[str, Any]) -> list[str]:
    return [item["run_id"] for item in found["runs"]]


def every(
    service: Service, key: str, path: str = "/v1/runs", cursor: str | None = None, **query: Any
) -> list[str]:
    """Every page's ids from `cursor` on, following the cursors (bounded)."""
    found: list[str] = []
    for _ in range(50):
        current = page(service, key, path, **query, **({"cursor": cursor} if cursor else {}))
        found += ids(current)
        cursor = current["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("the pages never ended")


def test_a_tenant_lists_its_runs_newest_first_and_filters_them(service: Service, sim: Sim) -> None:
    t0 = time.time()
    thread = f"list-{uuid.uuid4().hex[:12]}"
    first = start(service, LISTS_A_KEY)
    finish(service, LISTS_A_KEY, first)
    second = start(service, LISTS_A_KEY, thread_id=thread)
    finish(service, LISTS_A_KEY, second)

    listed = page(service, LISTS_A_KEY, since=t0)
    assert ids(listed) == [second, first] and listed["next_cursor"] is None
    item = listed["runs"][0]
    assert item["status"] == "completed" and item["tenant"] == "lists_a"
    assert item["agent"] == AGENT and item["thread_id"] == thread
    assert item["steps"] >= 1 and item["tokens"] > 0 and item["ended_at"] >= item["created_at"]
    assert item["error_code"] is None and len(item["trace_id"]) == 32
    # The same figures as the run's own summary.
    summary = service.http.get(f"/v1/runs/{second}", headers=auth(LISTS_A_KEY)).json()
    assert (item["version"], item["assignment"]) == (summary["version"], summary["assignment"])
    assert item["steps"] == summary["steps"] and item["cost_usd"] == summary["cost_usd"]

    assert ids(page(service, LISTS_A_KEY, since=t0, thread_id=thread)) == [second]
    assert ids(page(service, LISTS_A_KEY, since=t0, status="completed")) == [second, first]
    assert ids(page(service, LISTS_A_KEY, since=t0, status="failed")) == []
    assert ids(page(service, LISTS_A_KEY, since=t0, agent="concierge")) == []
    assert ids(page(service, LISTS_A_KEY, since=t0, version=item["version"]))[0] == second
    assert ids(page(service, LISTS_A_KEY, since=t0, version="no-such")) == []
    between = {"since": t0, "until": listed["runs"][1]["created_at"] + 1e-6}
    assert ids(page(service, LISTS_A_KEY, **between)) == [first]


def test_pages_are_stable_while_runs_start(service: Service, sim: Sim) -> None:
    t0 = time.time()
    older = [start(service, LISTS_A_KEY) for _ in range(5)]
    wait_for(lambda: len(ids(page(service, LISTS_A_KEY, since=t0))) == 5, timeout_s=30)
    first = page(service, LISTS_A_KEY, since=t0, limit=2)
    assert len(first["runs"]) == 2 and first["next_cursor"]
    newer = [start(service, LISTS_A_KEY) for _ in range(2)]  # between pages
    rest = every(service, LISTS_A_KEY, since=t0, limit=2, cursor=first["next_cursor"])
    seen = ids(first) + rest
    assert len(seen) == len(set(seen)) == 5  # none twice, none of the older ones skipped
    assert set(seen) == set(older)
    created = [item["created_at"] for item in page(service, LISTS_A_KEY, since=t0)["runs"]]
    assert created == sorted(created, reverse=True)  # newest first
    wait_for(lambda: len(every(service, LISTS_A_KEY, since=t0, limit=3)) == 7, timeout_s=30)
    assert set(ids(page(service, LISTS_A_KEY, since=t0, limit=2))) == set(newer)
    for run_id in older + newer:
        finish(service, LISTS_A_KEY, run_id)


def test_a_tenant_never_sees_another_tenants_runs(service: Service, sim: Sim) -> None:
    t0 = time.time()
    thread = f"scoped-{uuid.uuid4().hex[:12]}"
    mine = start(service, LISTS_A_KEY, thread_id=thread)
    theirs = start(service, LISTS_B_KEY)
    for key, run_id in ((LISTS_A_KEY, mine), (LISTS_B_KEY, theirs)):
        finish(service, key, run_id)

    b_list = page(service, LISTS_B_KEY, since=t0)
    assert ids(b_list) == [theirs] and {i["tenant"] for i in b_list["runs"]} == {"lists_b"}
    assert ids(page(service, LISTS_B_KEY, since=t0, tenant="lists_a")) == []
    assert ids(page(service, LISTS_B_KEY, f"/v1/threads/{thread}/runs")) == []
    assert ids(page(service, LISTS_A_KEY, f"/v1/threads/{thread}/runs")) == [mine]

    everyone = every(service, ADMIN_KEY, since=t0, limit=200)
    assert {mine, theirs} <= set(everyone)
    assert ids(page(service, ADMIN_KEY, since=t0, tenant="lists_a")) == [mine]
    assert ids(page(service, ADMIN_KEY, f"/v1/threads/{thread}/runs")) == [mine]
    admin_b = page(service, ADMIN_KEY, f"/v1/threads/{thread}/runs", tenant="lists_b")
    assert ids(admin_b) == []
    assert service.http.get("/v1/runs", headers=auth("rf-no-such-key")).status_code == 401


def test_a_threads_runs_come_oldest_first(service: Service, sim: Sim) -> None:
    thread = f"turns-{uuid.uuid4().hex[:12]}"
    turns = []
    for _ in range(3):  # one after the other, as a conversation goes
        turns.append(start(service, LISTS_A_KEY, thread_id=thread))
        finish(service, LISTS_A_KEY, turns[-1])
    start_elsewhere = start(service, LISTS_A_KEY)
    path = f"/v1/threads/{thread}/runs"
    first = page(service, LISTS_A_KEY, path, limit=2)
    assert ids(first) == turns[:2] and first["next_cursor"]
    rest = page(service, LISTS_A_KEY, path, limit=2, cursor=first["next_cursor"])
    assert ids(rest) == turns[2:] and rest["next_cursor"] is None
    assert {item["thread_id"] for item in first["runs"]} == {thread}
    finish(service, LISTS_A_KEY, start_elsewhere)


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/v1/runs", {"cursor": "not-a-cursor"}, "cursor"),
        ("/v1/runs", {"cursor": "W10"}, "cursor"),  # base64 of [], not a position
        ("/v1/runs", {"cursor": "x" * 201}, "cursor"),
        ("/v1/runs", {"limit": "0"}, "limit"),
        ("/v1/runs", {"limit": "201"}, "limit"),
        ("/v1/runs", {"limit": "ten"}, "limit"),
        ("/v1/runs", {"status": "done"}, "status"),
        ("/v1/runs", {"since": "-1"}, "since"),
        ("/v1/runs", {"since": "nan"}, "since"),
        ("/v1/runs", {"since": "1_000"}, "since"),
        ("/v1/runs", {"limit": "\u0661"}, "limit"),
        ("/v1/runs", {"until": "yesterday"}, "until"),
        ("/v1/runs", {"thread_id": "no spaces"}, "thread_id"),
        ("/v1/runs", {"statuz": "failed"}, "statuz"),
        ("/v1/threads/t-1/runs", {"cursor": "not-a-cursor"}, "cursor"),
        ("/v1/threads/t-1/runs", {"limit": "500"}, "limit"),
        ("/v1/threads/no%20space/runs", {}, "thread_id"),
    ],
)
def test_a_bad_query_is_a_422_naming_the_field(
    service: Service, path: str, query: dict[str, str], field: str
) -> None:
    r = service.http.get(path, params=query, headers=auth(LISTS_A_KEY))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == field and r.json()["code"] == "request_invalid"


def test_the_handle_api_lists_runs(service: Service, sim: Sim) -> None:
    t0 = time.time()
    thread = f"handle-{uuid.uuid4().hex[:12]}"
    mine = start(service, LISTS_A_KEY, thread_id=thread)
    finish(service, LISTS_A_KEY, mine)
    since = {"since": t0}
    calls: list[dict[str, Any]] = [
        {"method": "list_runs", "kwargs": {"api_key": LISTS_A_KEY, **since}, "dump": True},
        {"method": "list_runs", "kwargs": {"api_key": LISTS_B_KEY, **since}, "dump": True},
        {"method": "thread_runs", "kwargs": {"thread_id": thread, "api_key": LISTS_A_KEY}},
        {
            "method": "list_runs",
            "kwargs": {"api_key": ADMIN_KEY, "tenant": "lists_a", **since},
            "dump": True,
        },
        {"method": "list_runs", "kwargs": {"api_key": LISTS_A_KEY, "cursor": "nope"}},
        {"method": "list_runs", "kwargs": {"api_key": LISTS_A_KEY, "limit": 0}},
        {"method": "thread_runs", "kwargs": {"thread_id": "a b", "api_key": LISTS_A_KEY}},
    ]
    calls[2]["dump"] = True
    outcomes = handle_calls(service, calls)
    assert [i["run_id"] for i in outcomes[0]["json"]["runs"]] == [mine], outcomes[0]
    assert outcomes[1]["json"]["runs"] == []
    assert [i["run_id"] for i in outcomes[2]["json"]["runs"]] == [mine]
    assert [i["run_id"] for i in outcomes[3]["json"]["runs"]] == [mine]
    for outcome in outcomes[4:]:
        assert outcome["ok"] is False and outcome["code"] == "request_invalid", outcome
    assert "cursor" in outcomes[4]["message"] and "limit" in outcomes[5]["message"]


HANG = {"type": "text", "text": "x", "delay_ms": 120_000}
"""A model reply that holds its run in `running` until the test cancels it."""


class LiveList:
    """`GET /v1/runs` as an event stream: each `runs` frame's page, read as it comes."""

    def __init__(self, service: Service, key: str, **query: Any) -> None:
        headers = {**auth(key), "accept": "text/event-stream"}
        self._stream = service.http.stream("GET", "/v1/runs", params=query, headers=headers)
        self._response = self._stream.__enter__()
        assert self._response.status_code == 200, self._response.read()
        self._lines = self._response.iter_lines()

    def next_page(self) -> dict[str, Any]:
        """The next frame's page (the client's read timeout bounds the wait)."""
        event = None
        for line in self._lines:
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event == "runs":
                found: dict[str, Any] = json.loads(line.removeprefix("data:"))
                return found
        raise AssertionError("the live list ended")

    def until(self, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        for _ in range(50):  # a frame per change: a few runs' changes at most
            found = self.next_page()
            if condition(found):
                return found
        raise AssertionError("the live list never showed it")

    def close(self) -> None:
        self._stream.__exit__(None, None, None)


def status_of(found: dict[str, Any], run_id: str) -> str | None:
    return next((item["status"] for item in found["runs"] if item["run_id"] == run_id), None)


def test_a_live_list_shows_new_runs_and_their_status_changes(service: Service, sim: Sim) -> None:
    thread = f"live-{uuid.uuid4().hex[:12]}"
    live = LiveList(service, LISTS_A_KEY, thread_id=thread)
    try:
        assert live.next_page() == {"runs": [], "next_cursor": None}  # at once, as it is
        sim.script(HANG)
        held = start(service, LISTS_A_KEY, thread_id=thread)
        live.until(lambda found: status_of(found, held) == "running")
        wait_for(lambda: sim.pending() == 0, timeout_s=30)  # it waits on the model now
        r = service.http.post(f"/v1/runs/{held}/cancel", headers=auth(LISTS_A_KEY))
        assert r.status_code == 200, r.text
        live.until(lambda found: status_of(found, held) == "cancelled")
        quick = start(service, LISTS_A_KEY, thread_id=thread)
        shown = live.until(lambda found: status_of(found, quick) == "completed")
        assert ids(shown) == [quick, held]  # newest first, as the JSON list
    finally:
        live.close()

    others = LiveList(service, LISTS_B_KEY, thread_id=thread)
    try:
        assert others.next_page()["runs"] == []  # another tenant's runs never show
    finally:
        others.close()


def test_a_live_list_is_the_first_page_only(service: Service) -> None:
    headers = {**auth(LISTS_A_KEY), "accept": "text/event-stream"}
    r = service.http.get("/v1/runs", params={"cursor": "abc"}, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "cursor"
