"""Provider health over HTTP: a breaker a run opened shows as open on its host.

The `health` tenant has its own sim-openai key, so the breaker this test opens is that key's
(`sim-openai#digest`) and no other tenant's runs skip the provider."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.conftest import HEALTH_PROVIDER_KEY
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service
from tests.serve.tenants import ACME_KEY, ADMIN_KEY, HEALTH_KEY, auth

pytestmark = pytest.mark.serve

BREAKER = f"sim-openai#{hashlib.sha256(HEALTH_PROVIDER_KEY.encode()).hexdigest()[:12]}"
"""How the router names the breaker of the tenant's own key (a digest, never the key)."""


def providers(service: Service) -> dict[str, Any]:
    r = service.http.get("/v1/admin/providers", headers=auth(ADMIN_KEY))
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def test_a_provider_that_asks_to_be_left_alone_shows_open(service: Service, sim: Sim) -> None:
    # A 429 whose Retry-After is past the router's cap opens the breaker at once for that
    # long; the run falls back to sim-anthropic and completes.
    sim.script({"type": "status", "status": 429, "retry_after_s": 600})
    r = service.http.post(
        "/v1/agents/support/runs", json={"input": "hello"}, headers=auth(HEALTH_KEY)
    )
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]

    def ended() -> str | None:
        status: str = service.http.get(f"/v1/runs/{run_id}", headers=auth(HEALTH_KEY)).json()[
            "status"
        ]
        return None if status == "running" else status

    assert wait_for(ended, timeout_s=60) == "completed"
    report = providers(service)
    mine = {b["breaker"]: b for b in report["providers"]}[BREAKER]
    assert mine["provider"] == "sim-openai" and mine["state"] == "open"
    assert mine["hosts"]["open"] >= 1
    assert report["hosts"] >= 1
    assert HEALTH_PROVIDER_KEY not in r.text + str(report)


def test_provider_health_is_for_the_admin_only(service: Service) -> None:
    r = service.http.get("/v1/admin/providers", headers=auth(ACME_KEY))
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
