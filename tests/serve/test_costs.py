"""Cost per successful run per tenant (C11): a tenant sees its own figures in GET /v1/agents
and nothing of another's; an admin sees every tenant's; the outcome actor publishes them as
Ray metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given

from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service
from tests.serve.metrics import samples, scrape_until
from tests.serve.tenants import ACME_KEY, ADMIN_KEY, GLOBEX_KEY, auth
from tests.serve.test_fuzz import CHECKS, FUZZ_SETTINGS, HEADERS, SCHEMA, TIMEOUT_S

pytestmark = pytest.mark.serve

ACME = auth(ACME_KEY)
GLOBEX = auth(GLOBEX_KEY)
ADMIN = auth(ADMIN_KEY)


def run_to_end(service: Service, headers: dict[str, str], text: str) -> dict[str, Any]:
    response = service.http.post("/v1/agents/support/runs", json={"input": text}, headers=headers)
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]

    def ended() -> dict[str, Any] | None:
        summary: dict[str, Any] = service.http.get(f"/v1/runs/{run_id}", headers=headers).json()
        return summary if summary["status"] != "running" else None

    found = wait_for(ended, timeout_s=30)
    assert found is not None
    return found


def admin_costs(service: Service, **params: Any) -> dict[str, Any]:
    response = service.http.get("/v1/admin/costs", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def tenant_entry(report: dict[str, Any], tenant: str) -> dict[str, Any] | None:
    return next((t for t in report["tenants"] if t["tenant"] == tenant), None)


@pytest.fixture
def two_tenants_ran(service: Service, sim: Sim) -> dict[str, Any]:
    """One finished run each for acme and globex, recorded in the outcome store."""
    before = admin_costs(service)
    runs = {
        "acme": run_to_end(service, ACME, "Where is order 1002?"),
        "globex": run_to_end(service, GLOBEX, "Where is order 2001?"),
    }

    def recorded() -> bool:
        report = admin_costs(service)
        for tenant in runs:
            now, then = tenant_entry(report, tenant), tenant_entry(before, tenant)
            if now is None or now["stats"]["runs"] <= (then["stats"]["runs"] if then else 0):
                return False
        return True

    wait_for(recorded, timeout_s=15)
    return runs


def test_a_tenant_sees_its_own_cost_per_success_and_nothing_of_anothers(
    service: Service, two_tenants_ran: dict[str, Any]
) -> None:
    response = service.http.get("/v1/agents", headers=ACME)
    assert response.status_code == 200, response.text
    assert "globex" not in response.text
    support = next(a for a in response.json()["agents"] if a["name"] == "support")
    assert support["tenant"]["tenant"] == "acme"
    mine = support["tenant"]["stats"]
    assert mine["runs"] >= 1 and mine["successes"] >= 1
    assert mine["cost_per_success_usd"] == pytest.approx(mine["cost_usd"] / mine["successes"])
    version = next(
        v for v in support["versions"] if v["version"] == two_tenants_ran["acme"]["version"]
    )
    assert version["tenant"]["tenant"] == "acme"
    assert version["tenant"]["stats"]["runs"] >= 1
    # The caller's block is its share of the version's figures for all tenants.
    assert version["tenant"]["stats"]["runs"] <= version["stats"]["runs"]
    report = admin_costs(service)
    acme_total = tenant_entry(report, "acme")
    assert acme_total is not None
    acme_support = next(
        c for c in report["agents"] if (c["tenant"], c["agent"]) == ("acme", "support")
    )
    assert acme_support["stats"] == mine

    theirs = service.http.get("/v1/agents", headers=GLOBEX).json()
    assert "acme" not in str(theirs)
    globex_support = next(a for a in theirs["agents"] if a["name"] == "support")
    assert globex_support["tenant"]["tenant"] == "globex"


def test_the_admin_sees_every_tenants_cost_per_success(
    service: Service, two_tenants_ran: dict[str, Any]
) -> None:
    report = admin_costs(service)
    tenants = {t["tenant"] for t in report["tenants"]}
    assert {"acme", "globex"} <= tenants
    for level in ("versions", "agents", "tenants"):
        for entry in report[level]:
            stats = entry["stats"]
            if stats["successes"]:
                expected = stats["cost_usd"] / stats["successes"]
                assert stats["cost_per_success_usd"] == pytest.approx(expected)
            else:
                assert stats["cost_per_success_usd"] is None
    keys = [(c["agent"], c["version"], c["tenant"]) for c in report["versions"]]
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    assert report["since"] is None

    assert admin_costs(service, since=4_000_000_000)["tenants"] == []  # a window in 2096
    for bad in ("yesterday", "-1", "nan", "inf", "1_000", "\u00b2"):
        response = service.http.get("/v1/admin/costs", params={"since": bad}, headers=ADMIN)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["field"] == "since"
    for headers in (ACME, {}):
        response = service.http.get("/v1/admin/costs", headers=headers)
        assert response.status_code == 401


def test_the_outcome_actor_publishes_its_metrics(
    service: Service, two_tenants_ran: dict[str, Any]
) -> None:
    # What Prometheus scrapes from Ray's metrics agent matches the admin report, group by
    # group: the actor's own loop publishes the changed groups every few seconds.
    version = two_tenants_ran["acme"]["version"]
    group = {"agent": "support", "version": version, "tenant": "acme"}
    entry = next(
        v
        for v in admin_costs(service)["versions"]
        if (v["agent"], v["version"], v["tenant"]) == tuple(group.values())
    )
    stats = entry["stats"]
    assert stats["runs"] >= 1 and stats["successes"] >= 1

    def gauge(page: str, name: str) -> float | None:
        values = [v for labels, v in samples(page, name) if group.items() <= labels.items()]
        return values[0] if len(values) == 1 else None

    def runs(page: str) -> float:
        return sum(
            v
            for labels, v in samples(page, "ray_rayfleet_runs_total")
            if labels["tenant"] == "acme"
        )

    def published(page: str) -> bool:
        # The counter comes from the run host, the gauges from the pool: two processes,
        # each exporting on its own schedule, so wait for both.
        per_success = gauge(page, "ray_rayfleet_cost_per_successful_run_usd")
        return (
            runs(page) >= 1
            and gauge(page, "ray_rayfleet_recorded_runs") == stats["runs"]
            and gauge(page, "ray_rayfleet_successful_runs") == stats["successes"]
            and per_success is not None
            and per_success == pytest.approx(stats["cost_per_success_usd"])
        )

    scrape_until(published)


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


@pytest.mark.parametrize("variant", ["positive", "negative"])
def test_fuzz_the_cost_route(variant: str, service: Service, session: requests.Session) -> None:
    from schemathesis import GenerationMode

    operation = SCHEMA.find_operation_by_label("GET /v1/admin/costs")
    assert operation is not None
    mode = GenerationMode.NEGATIVE if variant == "negative" else GenerationMode.POSITIVE

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(mode))
    def check(case: Any) -> None:
        case.call_and_validate(
            base_url=service.base_url,
            session=session,
            headers={**HEADERS, **ADMIN},
            checks=CHECKS,
            timeout=TIMEOUT_S,
        )

    check()
