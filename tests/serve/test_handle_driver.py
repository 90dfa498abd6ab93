"""The handle API from a separate driver process: another Ray job on the same cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agents.events import Event, parse_event
from tests.fixtures_sim import Sim
from tests.serve.conftest import Service
from tests.serve.tenants import ACME_KEY

pytestmark = pytest.mark.serve

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "stream_from_ray_job.py"


def run_driver(service: Service, *args: str) -> list[Event]:
    env = {**os.environ, "RAY_ADDRESS": service.gcs_address}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [parse_event(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_a_separate_driver_streams_typed_events_and_resumes(service: Service, sim: Sim) -> None:
    events = run_driver(service, "support", "Where is order 1234?")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.kind for e in events]
    assert kinds[0] == "run.created" and kinds[-1] == "run.completed"
    assert "tool.call" in kinds and "model.delta" in kinds

    run_id = events[0].run_id
    resumed = run_driver(service, "--run-id", run_id, "--after", "3")
    assert resumed == events[3:]

    # The same run over HTTP: the handle and SSE streams are views of one log.
    http_events = service.http.get(f"/v1/runs/{run_id}").json()
    assert http_events["last_seq"] == events[-1].seq


def handle_calls(service: Service, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Make `calls` from a separate driver process (tests/serve/handle_calls.py)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.serve.handle_calls"],
        input=json.dumps(calls),
        env={**os.environ, "RAY_ADDRESS": service.gcs_address},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(outcomes) == len(calls), done.stdout[-3000:]
    return outcomes


def test_only_the_public_handle_methods_answer(service: Service, sim: Sim) -> None:
    evil_tenancy = {"anonymous_tenant": "default", "tenants": [{"id": "default"}]}
    calls: list[dict[str, Any]] = [
        {"method": "_start", "kwargs": {"tenant": None, "agent": "support", "input": "x"}},
        {"method": "_events", "kwargs": {"run_id": "run-x", "after": 0}, "stream": True},
        {"method": "_http_admin_tenants", "kwargs": {"request": None}},
        {"method": "reconfigure", "kwargs": {"user_config": evil_tenancy}},
        {"method": "__init__", "kwargs": {"agents": {}, "specs": [], "config": None}},
        {"method": "__setattr__", "kwargs": {"name": "_auth", "value": None}},
        {"method": "__del__"},
        {"method": "_run_asgi_lifespan_startup"},  # Serve's own, on the ingress object
        {"method": "no_such_method"},
        {"method": "_client", "deployment": "support@v1"},
        {"method": "__init__", "deployment": "support@v1", "kwargs": {"spec": None}},
    ]
    outcomes = handle_calls(service, calls)
    for call, outcome in zip(calls, outcomes, strict=True):
        assert outcome["ok"] is False, (call, outcome)
        assert outcome["code"] == "request_invalid", (call, outcome)
        assert repr(call["method"]) in outcome["message"], outcome
    assert "start_run" in outcomes[0]["message"] and "stream_run" in outcomes[0]["message"]
    assert "(handle methods: spec, start)" in outcomes[-1]["message"]
    # None of them ran: the gateway still has its tenants (a wrong key is still refused),
    # and it still serves the public methods.
    after = handle_calls(
        service,
        [
            {"method": "list_agents", "kwargs": {"api_key": "rf-wrong"}},
            {"method": "list_agents", "kwargs": {"api_key": ACME_KEY}},
        ],
    )
    assert after[0]["ok"] is False and after[0]["code"] == "unauthorized", after
    assert after[1]["ok"] is True, after
    assert service.http.get("/healthz").status_code == 200


def test_handle_input_has_the_http_limits(service: Service, sim: Sim) -> None:
    limit = service.config.max_body_bytes
    per_item = 60_000  # each input is within a run's own limit; together over the body limit
    inputs = ["x" * per_item] * (limit // per_item + 1)
    calls: list[dict[str, Any]] = [
        {"method": "start_run", "kwargs": {"agent": "support", "input": "x" * (limit + 1)}},
        {
            "method": "stream_run",
            "kwargs": {"agent": "support", "input": "é" * (limit // 2 + 1)},
            "stream": True,
        },
        {"method": "start_batch", "kwargs": {"agent": "support", "inputs": inputs}},
        # The same field checks as the HTTP API.
        {"method": "start_run", "kwargs": {"agent": "support", "input": ""}},
        {"method": "start_run", "kwargs": {"agent": "support", "input": 12}},
        {"method": "start_run", "kwargs": {"agent": "support", "input": "x", "extra": 1}},
        {"method": "get_run", "kwargs": {"run_id": 12}},
        {"method": "stream_events", "kwargs": {"run_id": "run-x", "after": "3"}, "stream": True},
    ]
    outcomes = handle_calls(service, calls)
    codes = [outcome.get("code") for outcome in outcomes]
    assert codes == ["request_too_large"] * 3 + ["request_invalid"] * 5, outcomes
    assert f"{limit}-byte limit" in outcomes[0]["message"]
    assert "input" in outcomes[4]["message"] and "extra" in outcomes[5]["message"]
    # Nothing of the refused calls started: no model request carried their inputs.
    assert not [r for r in sim.requests() if "x" * per_item in json.dumps(r["body"])]


def test_start_run_takes_the_end_user_with_the_http_checks(service: Service, sim: Sim) -> None:
    calls: list[dict[str, Any]] = [
        {"method": "start_run", "kwargs": {"agent": "support", "input": "hi", "user": "cust-7"}},
        {"method": "start_run", "kwargs": {"agent": "support", "input": "hi", "user": "a\nb"}},
        {"method": "start_run", "kwargs": {"agent": "support", "input": "hi", "user": 7}},
    ]
    outcomes = handle_calls(service, calls)
    assert outcomes[0]["ok"] is True, outcomes
    assert [o.get("code") for o in outcomes[1:]] == ["request_invalid"] * 2, outcomes
    assert all("user" in o["message"] for o in outcomes[1:]), outcomes


def test_a_resume_point_is_checked_as_over_http(service: Service, sim: Sim) -> None:
    events = run_driver(service, "support", "Where is order 1234?")
    run_id, last = events[0].run_id, events[-1].seq
    outcomes = handle_calls(
        service,
        [
            {
                "method": "stream_events",
                "kwargs": {"run_id": run_id, "after": last},
                "stream": True,
            },
            {
                "method": "stream_events",
                "kwargs": {"run_id": run_id, "after": last + 1},
                "stream": True,
            },
            {"method": "stream_events", "kwargs": {"run_id": run_id, "after": -1}, "stream": True},
        ],
    )
    assert outcomes[0] == {"ok": True, "items": 0}
    assert [o.get("code") for o in outcomes[1:]] == ["request_invalid"] * 2, outcomes
    http = service.http.get(f"/v1/runs/{run_id}/events", params={"after": last + 1})
    assert http.status_code == 422
