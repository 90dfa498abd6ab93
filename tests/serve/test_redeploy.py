"""A redeploy of the Serve app replaces its replicas but not the runs in flight."""

from __future__ import annotations

import pytest

from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service

pytestmark = pytest.mark.serve


def test_a_redeploy_does_not_end_runs_in_flight(service: Service, sim: Sim) -> None:
    from ray import serve

    from serve_app.app import APP_NAME, build_app

    sim.script({"type": "text", "text": "Answered across a redeploy.", "delay_ms": 3000})
    run_id = service.http.post("/v1/agents/support/runs", json={"input": "hi"}).json()["run_id"]
    wait_for(lambda: len(sim.requests()) == 1)
    # A changed config makes Serve replace the gateway and agent replicas.
    serve.run(
        build_app(service.config.model_copy(update={"sse_ping_s": 14.0})),
        name=APP_NAME,
        route_prefix="/",
    )
    summary = wait_for(
        lambda: (s := service.http.get(f"/v1/runs/{run_id}").json())["status"] != "running" and s,
        timeout_s=60,
    )
    assert summary["status"] == "completed"
    assert summary["output"] == "Answered across a redeploy."
