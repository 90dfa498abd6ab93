"""Cost controls through the running service: the supervisor's nested sub-agent events, the
tool cache per tenant, budget progress, all over real HTTP/SSE on the session's app."""

from __future__ import annotations

import json
import uuid

import pytest

from agents.events import Event, SubagentEvent, ToolResulted
from tests.fixtures_sim import Sim
from tests.serve.conftest import Service
from tests.serve.tenants import ACME_KEY, auth
from tests.serve.test_runs_http import read_sse

pytestmark = pytest.mark.serve


def nested(events: list[Event]) -> list[dict[str, object]]:
    return [e.event for e in events if isinstance(e, SubagentEvent)]


def concierge(service: Service, question: str, key: str | None = ACME_KEY) -> list[Event]:
    """A concierge run of acme's, or of the anonymous tenant with `key=None`."""
    return read_sse(
        service.http,
        "POST",
        "/v1/agents/concierge/runs",
        json={"input": question},
        headers=auth(key) if key is not None else {},
    )


def test_the_supervisor_streams_its_sub_agent_nested_and_pays_for_it(
    service: Service, sim: Sim
) -> None:
    events = concierge(service, "Where is order 1002?")
    assert events[-1].kind == "run.completed", events[-1]
    inner = nested(events)
    assert inner[0]["kind"] == "run.created" and inner[0]["agent"] == "concierge-orders"
    assert inner[-1]["kind"] == "run.completed"
    assert "delivered" in str(inner[-1]["output"])  # order 1002's true status
    assert "delivered" in events[-1].output  # type: ignore[union-attr]
    desk = next(e for e in events if isinstance(e, ToolResulted))
    assert desk.tool == "orders_desk" and desk.ok
    assert desk.cost_usd == pytest.approx(float(str(inner[-1]["cost_usd"])))
    summary = service.http.get(f"/v1/runs/{events[-1].run_id}", headers=auth(ACME_KEY)).json()
    assert summary["cost_usd"] > desk.cost_usd  # the supervisor's own calls on top
    own = [e for e in events if e.kind == "model.completed"]
    inner_models = {e["model"] for e in inner if e["kind"] == "model.completed"}
    assert {e.model for e in own} == inner_models == {"sim-fast"}  # type: ignore[union-attr]


def test_a_refund_goes_to_the_strong_tier_sub_agent(service: Service, sim: Sim) -> None:
    events = concierge(service, "Please refund order 1777, it arrived broken.")
    assert events[-1].kind == "run.completed", events[-1]
    inner = nested(events)
    assert inner[0]["agent"] == "concierge-refunds"
    assert {e["model"] for e in inner if e["kind"] == "model.completed"} == {"sim-strong"}
    refund = next(e for e in inner if e["kind"] == "tool.result")
    assert refund["tool"] == "issue_refund" and refund["ok"] is True
    assert refund["cached"] is False  # a side-effecting tool is never cached
    assert json.loads(str(refund["output"]))["status"] == "refunded"


def test_tool_results_are_cached_per_tenant(service: Service, sim: Sim) -> None:
    question = "Where is order 4321?"

    def lookup(events: list[Event]) -> dict[str, object]:
        return next(e for e in nested(events) if e["kind"] == "tool.result")

    first = lookup(concierge(service, question))
    again = lookup(concierge(service, question))
    other = lookup(concierge(service, question, key=None))
    assert first["cached"] is False and again["cached"] is True
    assert again["output"] == first["output"]
    assert json.loads(str(again["output"]))["order_id"] == 4321
    assert other["cached"] is False  # never another tenant's entry


def test_every_step_ends_with_budget_progress(service: Service, sim: Sim) -> None:
    events = read_sse(
        service.http, "POST", "/v1/agents/support/runs", json={"input": "Where is order 1001?"}
    )
    progress = [e for e in events if e.kind == "budget.progress"]
    assert [p.step for p in progress] == [1, 2]  # type: ignore[union-attr]
    last = progress[-1]
    assert last.cost_usd == pytest.approx(events[-1].cost_usd)  # type: ignore[union-attr]
    assert last.max_cost_usd == 0.5 and last.max_steps == 8  # type: ignore[union-attr]
    assert 0 < last.time_left_s <= 300  # type: ignore[union-attr]


def test_a_policy_question_searches_the_help_articles_through_the_embedding_batcher(
    service: Service, sim: Sim
) -> None:
    # A query seen nowhere before: its embedding cannot come from the cache.
    events = concierge(service, f"How long does shipping take to zone {uuid.uuid4().hex[:8]}?")
    assert events[-1].kind == "run.completed", events[-1]
    inner = nested(events)
    assert inner[0]["agent"] == "concierge-help"
    search = next(e for e in inner if e["kind"] == "tool.result")
    assert search["tool"] == "search_help" and search["ok"] is True, search
    articles = json.loads(str(search["output"]))
    assert len(articles) == 3 and {"id", "title", "score"} <= set(articles[0])
    embedded = [r for r in sim.requests() if r["path"].endswith("/embeddings")]
    assert embedded  # the vectors came from the provider, through the shared batcher
