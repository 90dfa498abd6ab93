"""Tenants: keys, isolation on every endpoint and the handle API, limits across replicas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from agents.errors import Unauthorized, UnknownRun
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service
from tests.serve.tenants import (
    ACME_KEY,
    ADMIN_KEY,
    GLOBEX_KEY,
    LIMITED_KEY,
    LIMITED_RPM,
    THRIFTY_BUDGET_USD,
    THRIFTY_KEY,
    auth,
)

pytestmark = pytest.mark.serve


def finished(service: Service, run_id: str, key: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        summary: dict[str, Any] = service.http.get(f"/v1/runs/{run_id}", headers=auth(key)).json()
        return summary if summary["status"] != "running" else None

    return wait_for(done, timeout_s=30)


@pytest.fixture
def acme_run(service: Service, sim: Sim) -> Iterator[str]:
    response = service.http.post(
        "/v1/agents/support/runs", json={"input": "Where is order 1002?"}, headers=auth(ACME_KEY)
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    assert finished(service, run_id, ACME_KEY)["tenant"] == "acme"
    yield run_id


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/runs/{run}"),
        ("GET", "/v1/runs/{run}/events"),
        ("GET", "/v1/runs/{run}/events?after=1"),
        ("POST", "/v1/runs/{run}/cancel"),
    ],
)
@pytest.mark.parametrize("other", [GLOBEX_KEY, None], ids=["globex", "anonymous"])
def test_another_tenants_run_is_404_with_no_data(
    service: Service, acme_run: str, method: str, path: str, other: str | None
) -> None:
    headers = auth(other) if other else {}
    response = service.http.request(method, path.format(run=acme_run), headers=headers)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "unknown_run"
    assert "acme" not in response.text and "1002" not in response.text
    # The owner still sees it.
    mine = service.http.request(method, path.format(run=acme_run), headers=auth(ACME_KEY))
    assert mine.status_code == 200


def test_a_bad_key_is_401_on_every_endpoint(service: Service) -> None:
    bad = {"Authorization": "Bearer rf-not-a-key"}
    for method, path in [
        ("GET", "/v1/agents"),
        ("POST", "/v1/agents/support/runs"),
        ("GET", "/v1/runs/run-h0-00000000000000000000"),
        ("GET", "/v1/runs/run-h0-00000000000000000000/events"),
        ("POST", "/v1/runs/run-h0-00000000000000000000/cancel"),
    ]:
        response = service.http.request(method, path, headers=bad, json={"input": "x"})
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["code"] == "unauthorized"
    malformed = service.http.get("/v1/agents", headers={"Authorization": "Basic abc"})
    assert malformed.status_code == 401


def test_a_tenant_sees_only_the_agents_it_may_run(service: Service) -> None:
    globex = service.http.get("/v1/agents", headers=auth(GLOBEX_KEY)).json()["agents"]
    assert [a["name"] for a in globex] == ["support"]
    # The admin key sees every agent, and no tenant's own figures (it is no tenant).
    everyone = service.http.get("/v1/agents", headers=auth(ADMIN_KEY)).json()["agents"]
    acme = service.http.get("/v1/agents", headers=auth(ACME_KEY)).json()["agents"]
    assert [a["name"] for a in everyone] == [a["name"] for a in acme]
    assert len(everyone) > 1
    assert {a["tenant"] for a in everyone} == {None}
    assert {v["tenant"] is None for a in everyone for v in a["versions"]} == {True}
    assert all("stats" in v for a in everyone for v in a["versions"])


async def test_the_handle_api_is_scoped_to_the_caller(service: Service, acme_run: str) -> None:
    from ray import serve

    handle = serve.get_app_handle("rayfleet")
    mine = await handle.options(method_name="get_run").remote(acme_run, api_key=ACME_KEY)
    assert mine.tenant == "acme"
    with pytest.raises(UnknownRun):
        await handle.options(method_name="get_run").remote(acme_run, api_key=GLOBEX_KEY)
    with pytest.raises(UnknownRun):
        await handle.options(method_name="cancel_run").remote(acme_run, api_key=GLOBEX_KEY)
    with pytest.raises(UnknownRun):
        stream = handle.options(stream=True, method_name="stream_events").remote(
            acme_run, api_key=GLOBEX_KEY
        )
        async for _ in stream:
            pass
    with pytest.raises(Unauthorized):
        await handle.options(method_name="get_run").remote(acme_run, api_key="rf-wrong")


def test_memory_threads_are_per_tenant(service: Service, sim: Sim) -> None:
    thread = "shared-thread-id"
    for key, text in ((ACME_KEY, "acme secret plan"), (GLOBEX_KEY, "What do you know?")):
        run_id = service.http.post(
            "/v1/agents/support/runs",
            json={"input": text, "thread_id": thread},
            headers=auth(key),
        ).json()["run_id"]
        assert finished(service, run_id, key)["status"] == "completed"
    globex_calls = [
        r["body"]["messages"]
        for r in sim.requests()
        if any(m.get("content") == "What do you know?" for m in r["body"]["messages"])
    ]
    assert globex_calls and all(
        "acme secret plan" not in str(messages) for messages in globex_calls
    )


async def test_rpm_is_exact_across_three_gateway_replicas(service: Service, sim: Sim) -> None:
    from ray import serve

    from serve_app.app import build_app

    limits_app = "rayfleet-limits"
    config = service.config.model_copy(update={"gateway_replicas": 3})
    serve.run(build_app(config), name=limits_app, route_prefix="/limits")
    try:
        url = f"{service.base_url}/limits/v1/agents/support/runs"
        async with httpx2.AsyncClient(timeout=30) as client:
            started = time.monotonic()

            async def post() -> httpx2.Response:
                return await client.post(url, json={"input": "hi"}, headers=auth(LIMITED_KEY))

            responses = await asyncio.gather(*(post() for _ in range(3 * LIMITED_RPM)))
            elapsed = time.monotonic() - started
        admitted = [r for r in responses if r.status_code == 202]
        refused = [r for r in responses if r.status_code == 429]
        assert len(admitted) + len(refused) == len(responses), {r.status_code for r in responses}
        # The bucket refills continuously: what the elapsed time allows on top of the limit.
        allowed = LIMITED_RPM + elapsed * LIMITED_RPM / 60
        assert LIMITED_RPM <= len(admitted) <= allowed * 1.01 + 1, (len(admitted), elapsed)
        for response in refused:
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["ratelimit-limit"] == str(LIMITED_RPM)
            assert response.json()["code"] == "tenant_limited"
    finally:
        serve.delete(limits_app)


def test_spend_never_goes_over_a_tenants_daily_budget(service: Service, sim: Sim) -> None:
    costs: list[float] = []
    for i in range(40):
        response = service.http.post(
            "/v1/agents/support/runs",
            json={"input": f"Where is order {1001 + i}?"},
            headers=auth(THRIFTY_KEY),
        )
        if response.status_code == 429:
            break
        summary = finished(service, response.json()["run_id"], THRIFTY_KEY)
        costs.append(summary["cost_usd"])
        if summary["status"] == "failed":
            assert summary["error"]["code"] == "tenant_limited"
            break
    else:
        pytest.fail("the budget never ran out")
    assert sum(costs) <= THRIFTY_BUDGET_USD
    assert costs and costs[0] > 0


def test_the_admin_view_needs_the_admin_key(service: Service) -> None:
    assert service.http.get("/v1/admin/tenants").status_code == 401
    assert service.http.get("/v1/admin/tenants", headers=auth(ACME_KEY)).status_code == 401
    response = service.http.get("/v1/admin/tenants", headers=auth(ADMIN_KEY))
    assert response.status_code == 200
    tenants = {t["id"]: t for t in response.json()["tenants"]}
    assert tenants["limited"]["limits"]["requests_per_min"] == LIMITED_RPM
    assert "api_key_sha256" not in response.text  # digests stay in the config
