"""Run slots over real HTTP: the `slots` tenant may have SLOTS_RUNS runs at once, and its
concurrent count (GET /v1/admin/tenants) stays exact whatever happens to its runs. One run
of the tenant stays live throughout each story, so a slot freed that was never taken shows
(the count never goes below zero)."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from agents.events import Event
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service
from tests.serve.tenants import ADMIN_KEY, SLOTS_KEY, SLOTS_RUNS, auth
from tests.serve.test_runs_http import read_sse

pytestmark = pytest.mark.serve

SLOTS = auth(SLOTS_KEY)
HANG = {"type": "text", "text": "x", "delay_ms": 120_000}


def running_runs(service: Service) -> float:
    response = service.http.get("/v1/admin/tenants", headers=auth(ADMIN_KEY))
    assert response.status_code == 200, response.text
    tenant = next(t for t in response.json()["tenants"] if t["id"] == "slots")
    return float(tenant["usage"]["running_runs"])


def start(http: httpx2.Client, text: str = "Where is order 1002?") -> httpx2.Response:
    return http.post("/v1/agents/support/runs", json={"input": text}, headers=SLOTS)


def run_id_of(response: httpx2.Response) -> str:
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def hanging_run(service: Service, sim: Sim) -> str:
    """A run of the tenant that stays live until cancelled (its model call hangs)."""
    sim.script(HANG)
    run_id = run_id_of(start(service.http))
    wait_for(lambda: sim.pending() == 0, timeout_s=10)
    return run_id


def summary(service: Service, run_id: str) -> dict[str, Any]:
    found: dict[str, Any] = service.http.get(f"/v1/runs/{run_id}", headers=SLOTS).json()
    return found


def finished(service: Service, run_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: (s := summary(service, run_id))["status"] != "running" and s,
        timeout_s=60,
        interval_s=0.1,
    )


def cancel(service: Service, run_id: str) -> None:
    response = service.http.post(f"/v1/runs/{run_id}/cancel", headers=SLOTS)
    assert response.status_code == 200, response.text
    finished(service, run_id)


def events(service: Service, run_id: str) -> list[Event]:
    return read_sse(service.http, "GET", f"/v1/runs/{run_id}/events", headers=SLOTS)


def assert_the_limit_admits_exactly_the_rest(service: Service, sim: Sim, live: int) -> None:
    """With `live` runs of the tenant in flight, the count says so and the limit admits
    exactly the rest: the next run after those gets 429. Cancels what it started."""
    wait_for(lambda: running_runs(service) == live, timeout_s=10)
    started = []
    for _ in range(SLOTS_RUNS - live):
        started.append(hanging_run(service, sim))
    refused = start(service.http)
    assert refused.status_code == 429, refused.text
    assert "concurrent_runs" in refused.text
    for run_id in started:
        cancel(service, run_id)


def test_a_recovered_finished_run_frees_no_slot_again(service: Service, sim: Sim) -> None:
    import ray

    from actors.run_host import host_of
    from actors.services import HOST_PREFIX

    held = hanging_run(service, sim)
    done = run_id_of(start(service.http))
    assert finished(service, done)["status"] == "completed"
    before = events(service, done)
    wait_for(lambda: running_runs(service) == 1, timeout_s=10)

    # Kill the host both ran on: the pool resumes the live one elsewhere (under its lease);
    # reading the finished one makes the pool resume it too, and it frees nothing again.
    sim.script(HANG)  # the live run's model call, asked again on its new host
    host = ray.get_actor(HOST_PREFIX + host_of(done), namespace=service.settings.namespace)
    ray.kill(host, no_restart=True)
    wait_for(lambda: sim.pending() == 0, timeout_s=30)  # the live run resumed
    for _ in range(2):
        assert events(service, done) == before
        assert summary(service, done)["status"] == "completed"
    assert_the_limit_admits_exactly_the_rest(service, sim, live=1)
    cancel(service, held)
    wait_for(lambda: running_runs(service) == 0, timeout_s=10)
