"""Approvals over HTTP: a guarded-support run pauses and its SSE stream shows it, the list
shows what waits, a decision resumes it and the stream goes on to its end; another tenant's
decision is a 404, a second decision a 409."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import httpx2
import pytest

from agents.events import Event
from serve_app.sse import SSEDecoder
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service
from tests.serve.tenants import ACME_KEY, ADMIN_KEY, GLOBEX_KEY, auth
from tests.serve.test_runs_http import assert_complete_stream, read_sse

pytestmark = pytest.mark.serve

AGENT = "guarded-support"


def refund() -> dict[str, Any]:
    """A refund of an order no other test refunds (the shop refunds an order once, for the
    whole session)."""
    order = 20_000 + uuid.uuid4().int % 70_000
    return {
        "type": "tool_call",
        "name": "issue_refund",
        "arguments": {"order_id": order, "reason": "arrived broken"},
    }


def waiting_call(service: Service, run_id: str, key: str) -> dict[str, Any] | None:
    summary: dict[str, Any] = service.http.get(f"/v1/runs/{run_id}", headers=auth(key)).json()
    return summary["approval"] if summary["status"] == "awaiting_approval" else None


def decide(service: Service, run_id: str, call_id: str, key: str, **body: Any) -> Any:
    return service.http.post(f"/v1/runs/{run_id}/approvals/{call_id}", json=body, headers=auth(key))


@pytest.mark.parametrize(
    ("decision", "body", "refunded"),
    [
        ("approve", {}, "arrived broken"),
        (
            "edit",
            {"arguments": {"order_id": 1003, "reason": "broken, approved by a lead"}},
            "broken, approved by a lead",
        ),
        ("reject", {"message": "send photos first"}, None),
    ],
)
def test_a_paused_run_streams_its_pause_and_resumes_as_decided(
    service: Service, sim: Sim, decision: str, body: dict[str, Any], refunded: str | None
) -> None:
    asking = refund()
    if "arguments" in body:  # an edit changes the reason, not the order
        body = {"arguments": {**asking["arguments"], **body["arguments"]}}
    sim.script(asking, {"type": "text", "text": "All set."})
    streamed: list[Event] = []

    def stream() -> None:  # a client of its own that stays on the run while it waits
        decoder = SSEDecoder()
        headers = {"Accept": "text/event-stream", **auth(ACME_KEY)}
        body = {"input": "refund it"}
        with (
            httpx2.Client(base_url=service.base_url, timeout=60) as http,
            http.stream("POST", f"/v1/agents/{AGENT}/runs", json=body, headers=headers) as r,
        ):
            for line in r.iter_lines():  # ends with the run's terminal event
                event = decoder.feed(line)
                if event is not None:
                    streamed.append(event)

    reader = threading.Thread(target=stream)
    reader.start()
    try:
        run_id = wait_for(lambda: streamed[0].run_id if streamed else None, timeout_s=30)
        asked = wait_for(lambda: waiting_call(service, run_id, ACME_KEY), timeout_s=30)
        assert asked["tool"] == "issue_refund" and asked["arguments"] == asking["arguments"]
        listed = service.http.get(
            "/v1/runs",
            params={"status": "awaiting_approval", "agent": AGENT},
            headers=auth(ACME_KEY),
        ).json()
        assert run_id in [item["run_id"] for item in listed["runs"]]
        assert (
            decide(service, run_id, asked["call_id"], GLOBEX_KEY, decision="approve").status_code
            == 404
        )

        r = decide(service, run_id, asked["call_id"], ACME_KEY, decision=decision, **body)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "running"
        again = decide(service, run_id, asked["call_id"], ACME_KEY, decision="approve")
        assert again.status_code == 409 and again.json()["code"] == "approval_not_pending"
    finally:
        reader.join(timeout=60)
    assert not reader.is_alive()

    assert_complete_stream(streamed)
    kinds = [e.kind for e in streamed]
    assert (
        kinds.index("approval.requested")
        < kinds.index("approval.decided")
        < kinds.index("run.completed")
    )
    result = next(e for e in streamed if e.kind == "tool.result")
    if refunded is None:
        assert not result.ok and "send photos first" in (result.error or "")  # type: ignore[union-attr]
    else:
        assert result.ok and json.loads(result.output)["reason"] == refunded  # type: ignore[union-attr]


def test_the_admin_may_decide_and_a_bad_decision_is_a_422(service: Service, sim: Sim) -> None:
    sim.script(refund(), {"type": "text", "text": "All set."})
    r = service.http.post(
        f"/v1/agents/{AGENT}/runs", json={"input": "refund 1003"}, headers=auth(ACME_KEY)
    )
    run_id = r.json()["run_id"]
    asked = wait_for(lambda: waiting_call(service, run_id, ACME_KEY), timeout_s=30)
    bad = decide(service, run_id, asked["call_id"], ADMIN_KEY, decision="edit")  # no arguments
    assert bad.status_code == 422 and bad.json()["field"] == "arguments"
    assert decide(service, run_id, asked["call_id"], ADMIN_KEY, decision="maybe").status_code == 422
    r = decide(service, run_id, asked["call_id"], ADMIN_KEY, decision="reject", message="no")
    assert r.status_code == 200, r.text
    wait_for(lambda: waiting_call(service, run_id, ACME_KEY) is None, timeout_s=30)
    decided = next(
        e
        for e in read_sse(service.http, "GET", f"/v1/runs/{run_id}/events", headers=auth(ACME_KEY))
        if e.kind == "approval.decided"
    )
    assert decided.by == "admin"  # type: ignore[union-attr]
