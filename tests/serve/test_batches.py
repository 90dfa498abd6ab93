"""Batches (C10): many inputs to one agent version, bounded concurrency, a driver that
outlives the request and its own restarts.

First the runner on its own (fakes, no Ray), then the HTTP API and the handle API on the
session's app, then a fuzz of the batch routes from the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given

from actors.batches import (
    BatchInput,
    BatchJob,
    BatchRunner,
    BatchView,
    is_batch_id,
    new_batch_id,
)
from actors.credentials import TenantContext
from actors.limiter import Admission
from agents.errors import NotFound, TenantLimited
from agents.events import Event, RunCancelled, RunCompleted, RunFailed
from agents.examples import example_specs
from agents.messages import Usage
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service
from tests.serve.tenants import ACME_KEY, ADMIN_KEY, GLOBEX_KEY, auth
from tests.serve.test_fuzz import CHECKS, FUZZ_SETTINGS, HEADERS, SCHEMA, TIMEOUT_S

pytestmark = pytest.mark.serve

ACME = auth(ACME_KEY)
GLOBEX = auth(GLOBEX_KEY)


# -- the runner, without Ray -----------------------------------------------------------------


class FakeRuns:
    """Runs that end when the test (or `auto_s`) says so; records what ran when."""

    def __init__(self, auto_s: float | None = 0.02, fail_start: set[str] | None = None) -> None:
        self.auto_s = auto_s
        self.fail_start = fail_start or set()
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.leases: list[str | None] = []
        self.live = 0
        self.most_live = 0
        self._ends: dict[str, asyncio.Future[Event]] = {}

    async def start(
        self,
        spec: Any,
        input: str,
        thread_id: str | None,
        context: TenantContext,
        namespace: str,
        assignment: str,
    ) -> str:
        if input in self.fail_start:
            raise TenantLimited("no slot", 1.0)
        self.leases.append(context.lease)
        run_id = f"run-{len(self.started)}"
        self.started.append(input)
        self._ends[run_id] = asyncio.get_running_loop().create_future()
        self.live += 1
        self.most_live = max(self.most_live, self.live)
        if self.auto_s is not None:
            asyncio.get_running_loop().call_later(self.auto_s, self.complete, run_id, input)
        return run_id

    def complete(self, run_id: str, input: str) -> None:
        self._end(run_id, RunCompleted(run_id=run_id, seq=3, output=f"re: {input}", **_SPENT))

    def fail(self, run_id: str) -> None:
        failed = RunFailed(
            run_id=run_id, seq=3, code="tool_failed", message="x", retryable=False, **_SPENT
        )
        self._end(run_id, failed)

    def _end(self, run_id: str, event: Event) -> None:
        end = self._ends[run_id]
        if not end.done():
            self.live -= 1
            end.set_result(event)

    async def wait(self, run_id: str) -> Event:
        # Shielded: a driver that dies stops waiting; the run itself goes on.
        return await asyncio.shield(self._ends[run_id])

    async def cancel(self, run_id: str) -> None:
        self.cancelled.append(run_id)
        self._end(run_id, RunCancelled(run_id=run_id, seq=3, reason="cancelled", **_SPENT))


_SPENT: dict[str, Any] = {"steps": 1, "usage": Usage(), "cost_usd": 0.01}


class FakeLimiter:
    def __init__(self, refusals: int = 0, retry_after_s: float = 0.01) -> None:
        self.refusals = refusals
        self.retry_after_s = retry_after_s
        self.asked = 0
        self.leases: list[str] = []
        self.released: list[str] = []

    async def admit_run(self, tenant: str) -> Admission:
        self.asked += 1
        if self.refusals > 0:
            self.refusals -= 1
            return Admission(ok=False, limit="requests_per_min", retry_after_s=self.retry_after_s)
        self.leases.append(f"lease-{self.asked}")
        return Admission(ok=True, lease=self.leases[-1])

    async def release_run(self, lease: str) -> None:
        self.released.append(lease)


class FakeStore:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    async def put_setting(self, key: str, value: str | None) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    async def settings(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}


def job(inputs: list[str | BatchInput], concurrency: int = 3, tenant: str = "acme") -> BatchJob:
    return BatchJob(
        batch_id=new_batch_id(),
        agent="support",
        version="v1",
        assignment="stable",
        spec=example_specs()[0],
        context=TenantContext(tenant=tenant),
        namespace=tenant,
        inputs=[i if isinstance(i, BatchInput) else BatchInput(input=i) for i in inputs],
        concurrency=concurrency,
        created_at=1.0,
    )


def runner(runs: FakeRuns, limiter: FakeLimiter, store: FakeStore, **options: Any) -> BatchRunner:
    return BatchRunner(runs, limiter, store, switches_ttl_s=0.0, **options)


async def finished(batches: BatchRunner, batch_id: str) -> BatchView:
    view = await asyncio.wait_for(batches.wait(batch_id), 10)
    assert view is not None
    return view


async def test_every_item_runs_at_most_concurrency_at_a_time() -> None:
    runs, limiter, store = FakeRuns(), FakeLimiter(), FakeStore()
    batches = runner(runs, limiter, store)
    submitted = job([f"q{i}" for i in range(10)], concurrency=3)

    started = await batches.submit(submitted)
    view = await finished(batches, submitted.batch_id)

    assert started.status == "running" and started.total == 10
    assert runs.most_live == 3
    assert (view.status, view.total, view.done, view.succeeded, view.failed) == (
        "completed",
        10,
        10,
        10,
        0,
    )
    assert [i.output for i in view.items] == [f"re: q{i}" for i in range(10)]
    assert view.cost_usd == pytest.approx(0.10)
    assert view.ended_at is not None
    # Persisted: the header, the job, each item; nothing left to resume.
    prefix = f"batch/{submitted.batch_id}"
    assert sorted(store.data) == sorted(
        ["batches/running", prefix, f"{prefix}/job", f"{prefix}/runs", f"{prefix}/items"]
    )
    assert '"completed"' in store.data[prefix]
    assert len(json.loads(store.data[f"{prefix}/runs"])) == 10
    assert json.loads(store.data[f"{prefix}/items"])[9]["output"] == "re: q9"
    assert store.data["batches/running"] == "[]"


async def test_a_refusal_by_a_tenant_limit_is_waited_out() -> None:
    runs, limiter, store = FakeRuns(), FakeLimiter(refusals=3), FakeStore()
    batches = runner(runs, limiter, store)
    submitted = job(["a", "b"], concurrency=1)
    await batches.submit(submitted)
    view = await finished(batches, submitted.batch_id)
    assert view.succeeded == 2
    assert limiter.asked == 5


async def test_an_item_that_would_wait_too_long_fails_and_the_batch_goes_on() -> None:
    runs, limiter, store = FakeRuns(), FakeLimiter(refusals=1, retry_after_s=60.0), FakeStore()
    batches = runner(runs, limiter, store, limit_wait_s=1.0)
    submitted = job(["a", "b"], concurrency=1)
    await batches.submit(submitted)
    view = await finished(batches, submitted.batch_id)
    assert [i.status for i in view.items] == ["failed", "completed"]
    error = view.items[0].error
    assert error is not None and error["code"] == "tenant_limited"
    assert "requests_per_min" in error["message"]
    assert view.items[0].run_id is None
    assert (view.status, view.failed, view.succeeded) == ("completed", 1, 1)


async def test_a_run_that_cannot_start_fails_its_item_and_frees_its_slot() -> None:
    runs, limiter, store = FakeRuns(fail_start={"bad"}), FakeLimiter(), FakeStore()
    batches = runner(runs, limiter, store)
    submitted = job(["bad", "good"])
    await batches.submit(submitted)
    view = await finished(batches, submitted.batch_id)
    assert [i.status for i in view.items] == ["failed", "completed"]
    assert view.items[0].error == {"code": "tenant_limited", "message": "no slot"}
    # Each run got its own lease; only the one that never started was released here (a
    # started run's host releases its lease when the run ends).
    assert len(limiter.released) == 1
    assert sorted(runs.leases + limiter.released) == sorted(limiter.leases)


async def test_items_of_one_thread_run_in_order_one_at_a_time() -> None:
    runs, limiter, store = FakeRuns(), FakeLimiter(), FakeStore()
    batches = runner(runs, limiter, store)
    items: list[str | BatchInput] = [
        BatchInput(input="t1", thread_id="T"),
        "free",
        BatchInput(input="t2", thread_id="T"),
        BatchInput(input="t3", thread_id="T"),
    ]
    submitted = job(items, concurrency=4)
    await batches.submit(submitted)
    view = await finished(batches, submitted.batch_id)
    assert view.succeeded == 4
    assert [i for i in runs.started if i.startswith("t")] == ["t1", "t2", "t3"]
    assert runs.most_live == 2  # the thread's items never overlap


async def test_cancel_stops_new_items_and_cancels_running_ones() -> None:
    runs, limiter, store = FakeRuns(auto_s=None), FakeLimiter(), FakeStore()
    batches = runner(runs, limiter, store)
    submitted = job([f"q{i}" for i in range(6)], concurrency=2)
    await batches.submit(submitted)
    for _ in range(100):
        if runs.live == 2:
            break
        await asyncio.sleep(0.01)

    view = await batches.cancel(submitted.batch_id, "acme")

    assert view is not None
    assert (view.status, view.reason) == ("cancelled", "cancelled by the caller")
    assert runs.started == ["q0", "q1"] and sorted(runs.cancelled) == ["run-0", "run-1"]
    assert [i.status for i in view.items] == ["cancelled"] * 6
    assert [i.run_id for i in view.items] == ["run-0", "run-1", None, None, None, None]
    assert view.done == 6 and view.ended_at is not None
    again = await batches.cancel(submitted.batch_id, "acme")
    assert again is not None and again.status == "cancelled"


async def test_a_kill_switch_stops_the_batch_with_its_reason() -> None:
    runs, limiter, store = FakeRuns(), FakeLimiter(), FakeStore()
    store.data["kill/admin"] = '{"tenants": {"acme": "unpaid invoice"}}'
    batches = runner(runs, limiter, store)
    submitted = job(["a", "b", "c"], concurrency=1)
    await batches.submit(submitted)
    view = await finished(batches, submitted.batch_id)
    assert view.status == "cancelled"
    assert view.reason == "killed: tenant 'acme' is switched off: unpaid invoice"
    assert runs.started == [] and view.cancelled == 3


async def test_a_canary_batch_stops_when_its_canary_is_rolled_back() -> None:
    runs, limiter, store = FakeRuns(), FakeLimiter(), FakeStore()
    rollback = {"weights": {"v0": 100, "v1": 0}, "reason": "error rate 40% > 10%", "at": 2.0}
    store.data["rollback/support"] = json.dumps(rollback)
    batches = runner(runs, limiter, store)
    canary = job(["a", "b"], concurrency=1).model_copy(update={"assignment": "canary"})
    stable = job(["a", "b"], concurrency=1)  # stable, same version: not its business
    earlier = canary.model_copy(update={"batch_id": new_batch_id(), "created_at": 3.0})
    for submitted in (canary, stable, earlier):
        await batches.submit(submitted)
    stopped = await finished(batches, canary.batch_id)
    assert stopped.status == "cancelled"
    assert stopped.reason == "rolled back: error rate 40% > 10%"
    assert (await finished(batches, stable.batch_id)).status == "completed"
    # A rollback from before the batch began was already there when the gateway chose it.
    assert (await finished(batches, earlier.batch_id)).status == "completed"


async def test_a_batch_is_its_tenants_only_and_tenants_have_a_cap() -> None:
    runs, limiter, store = FakeRuns(auto_s=None), FakeLimiter(), FakeStore()
    batches = runner(runs, limiter, store, max_running_per_tenant=2)
    first, second = job(["a"]), job(["b"])
    await batches.submit(first)
    await batches.submit(second)
    assert await batches.get(first.batch_id, "globex") is None
    assert await batches.cancel(first.batch_id, "globex") is None
    assert await batches.get("batch-nonsense", "acme") is None
    assert await batches.get(new_batch_id(), "acme") is None
    with pytest.raises(TenantLimited, match="2 running batches"):
        await batches.submit(job(["c"]))
    await batches.submit(job(["d"], tenant="globex"))  # another tenant's cap is its own
    await asyncio.sleep(0.05)
    again = await batches.submit(first)  # a retried submit returns the same batch
    assert again.batch_id == first.batch_id and runs.started.count("a") == 1
    await batches.aclose()


async def test_a_restarted_runner_resumes_from_the_store() -> None:
    runs, limiter, store = FakeRuns(auto_s=None), FakeLimiter(), FakeStore()
    first = runner(runs, limiter, store)
    submitted = job(["done", "running", "starting", "pending"], concurrency=2)
    await first.submit(submitted)
    for _ in range(100):
        if runs.live == 2:
            break
        await asyncio.sleep(0.01)
    runs.complete("run-0", "done")
    for _ in range(100):
        if runs.live == 2:  # "starting" took the freed slot
            break
        await asyncio.sleep(0.01)
    await first.aclose()  # the driver dies; its runs go on
    # As if it had died between journalling item 2 and getting its run id.
    key = f"batch/{submitted.batch_id}/runs"
    assert json.loads(store.data[key]) == {"0": "run-0", "1": "run-1", "2": "run-2"}
    store.data[key] = json.dumps({"0": "run-0", "1": "run-1", "2": None})
    assert f"batch/{submitted.batch_id}/items" not in store.data  # no snapshot yet
    runs.started.clear()

    second = runner(runs, limiter, store)
    assert await second.restore() == 1
    runs.complete("run-1", "running")
    runs.auto_s = 0.01
    view = await finished(second, submitted.batch_id)

    assert [i.status for i in view.items] == ["completed", "completed", "failed", "completed"]
    assert view.items[2].error is not None and view.items[2].error["code"] == "interrupted"
    assert runs.started == ["pending"]  # nothing ran twice
    assert view.status == "completed"
    # A third runner finds the ended batch in the store.
    third = runner(runs, limiter, store)
    assert await third.restore() == 0
    stored = await third.get(submitted.batch_id, "acme")
    assert stored is not None and stored.model_dump() == view.model_dump()


def test_batch_ids() -> None:
    assert is_batch_id(new_batch_id())
    for bad in (
        "batch-",
        "batch-%",
        "batch-" + "_" * 24,
        "run-h0-" + "0" * 20,
        "BATCH-" + "a" * 24,
    ):
        assert not is_batch_id(bad)


# -- over HTTP, on the session's app ---------------------------------------------------------


def post_batch(service: Service, body: Any, headers: dict[str, str] = ACME) -> str:
    response = service.http.post("/v1/agents/support/batches", json=body, headers=headers)
    assert response.status_code == 202, response.text
    found = response.json()
    assert set(found) == {"batch_id", "status_url"}
    assert found["status_url"] == f"/v1/batches/{found['batch_id']}"
    assert response.headers["location"] == found["status_url"]
    batch_id: str = found["batch_id"]
    return batch_id


def get_batch(service: Service, batch_id: str, headers: dict[str, str] = ACME) -> dict[str, Any]:
    response = service.http.get(f"/v1/batches/{batch_id}", headers=headers)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def wait_batch(service: Service, batch_id: str, timeout_s: float = 30) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        response = service.http.get(f"/v1/batches/{batch_id}", headers=ACME)
        if response.status_code == 503:  # the driver is restarting
            return None
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found if found["status"] != "running" and found["ended_at"] else None

    found = wait_for(ended, timeout_s=timeout_s, interval_s=0.05)
    assert found is not None
    return found


def batch_driver(service: Service) -> Any:
    import ray

    from actors.services import BATCHES_ACTOR

    return ray.get_actor(BATCHES_ACTOR, namespace=service.settings.namespace)


@pytest.fixture
def acme_batch(service: Service, sim: Sim) -> str:
    """A finished batch of acme's (policy answers)."""
    batch_id = post_batch(service, {"inputs": ["Where is order 1002?", "Hello"]})
    assert wait_batch(service, batch_id)["succeeded"] == 2
    return batch_id


def test_a_batch_runs_every_input_with_bounded_concurrency(service: Service, sim: Sim) -> None:
    answer = "Answered in bulk."
    sim.script(*[{"type": "text", "text": answer, "delay_ms": 300} for _ in range(10)])
    inputs = [f"Question {i}" if i % 2 else {"input": f"Question {i}"} for i in range(10)]

    batch_id = post_batch(service, {"inputs": inputs, "concurrency": 3})

    most_running, progress = 0, set()
    deadline = time.monotonic() + 30
    while True:
        batch = get_batch(service, batch_id)
        most_running = max(most_running, sum(i["status"] == "running" for i in batch["items"]))
        progress.add(batch["done"])
        if batch["ended_at"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.02)

    assert most_running == 3, "at most `concurrency` items run at once, and that many do"
    assert any(0 < done < 10 for done in progress), progress
    assert batch["status"] == "completed", batch
    assert (batch["total"], batch["done"], batch["succeeded"], batch["failed"]) == (10, 10, 10, 0)
    assert (batch["agent"], batch["concurrency"]) == ("support", 3)
    assert [item["index"] for item in batch["items"]] == list(range(10))
    for i, item in enumerate(batch["items"]):
        assert (item["status"], item["output"], item["error"]) == ("completed", answer, None)
        run = service.http.get(f"/v1/runs/{item['run_id']}", headers=ACME).json()
        assert (run["status"], run["input"], run["tenant"]) == (
            "completed",
            f"Question {i}",
            "acme",
        )
        assert (run["version"], run["assignment"]) == (batch["version"], batch["assignment"])
        assert item["cost_usd"] == pytest.approx(run["cost_usd"])
        # Each item is an ordinary run of acme's: another tenant cannot see it.
        other = service.http.get(f"/v1/runs/{item['run_id']}", headers=GLOBEX)
        assert other.status_code == 404
    assert batch["cost_usd"] == pytest.approx(sum(i["cost_usd"] for i in batch["items"]))
    assert batch["cost_usd"] > 0


@pytest.mark.parametrize("other", [GLOBEX_KEY, ADMIN_KEY, None], ids=["globex", "admin", "anon"])
def test_another_tenants_batch_is_404_with_no_data(
    service: Service, acme_batch: str, other: str | None
) -> None:
    headers = auth(other) if other else {}
    for method, path in (("GET", ""), ("POST", "/cancel")):
        response = service.http.request(method, f"/v1/batches/{acme_batch}{path}", headers=headers)
        if other == ADMIN_KEY and response.status_code == 401:
            continue  # the admin key is no tenant's key
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "unknown_batch"
        assert "acme" not in response.text and "1002" not in response.text
    mine = get_batch(service, acme_batch)
    assert mine["status"] == "completed"  # the cancel attempts changed nothing


def test_unknown_batches_and_agents_are_404(service: Service) -> None:
    for batch_id in ("batch-" + "0" * 24, "batch-x", "run-h0-" + "0" * 20):
        response = service.http.get(f"/v1/batches/{batch_id}", headers=ACME)
        assert response.status_code == 404, response.text
    for agent, version in (("nobody", None), ("support", "v99")):
        response = service.http.post(
            f"/v1/agents/{agent}/batches",
            json={"inputs": ["x"], "version": version},
            headers=ACME,
        )
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "unknown_agent"


BAD_BODIES = [
    pytest.param({}, "inputs", id="no-inputs"),
    pytest.param({"inputs": []}, "inputs", id="empty"),
    pytest.param({"inputs": ["x"] * 1001}, "inputs", id="too-many"),
    pytest.param({"inputs": "x"}, "inputs", id="not-a-list"),
    pytest.param({"inputs": ["ok", ""]}, "inputs.1.input", id="empty-string-item"),
    pytest.param({"inputs": [42]}, "inputs.0", id="number-item"),
    pytest.param(
        {"inputs": [{"input": "x", "version": "v1"}]}, "inputs.0.version", id="item-field"
    ),
    pytest.param(
        {"inputs": [{"input": "x", "thread_id": "no spaces"}]}, "inputs.0.thread_id", id="thread"
    ),
    pytest.param({"inputs": ["x"], "concurrency": 0}, "concurrency", id="concurrency-0"),
    pytest.param({"inputs": ["x"], "concurrency": 65}, "concurrency", id="concurrency-65"),
    pytest.param({"inputs": ["x"], "concurrency": "3"}, "concurrency", id="concurrency-text"),
    pytest.param({"inputs": ["x"], "concurrency": True}, "concurrency", id="concurrency-bool"),
    pytest.param({"inputs": ["x"], "tenant": "globex"}, "tenant", id="unknown-field"),
    pytest.param(["x"], "body", id="a-list"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_bad_bodies_are_422_naming_the_field(service: Service, body: Any, field: str) -> None:
    response = service.http.post("/v1/agents/support/batches", json=body, headers=ACME)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert (problem["code"], problem["field"]) == ("request_invalid", field)


def test_bodies_that_are_not_json_or_too_large(service: Service) -> None:
    url = "/v1/agents/support/batches"
    response = service.http.post(url, content=b"{not json", headers=ACME)
    assert response.status_code == 422 and response.json()["field"] == "body"
    huge = {"inputs": ["x" * 100_000] * 11}  # every item valid; the body is over 1 MiB
    response = service.http.post(url, json=huge, headers=ACME)
    assert response.status_code == 413, response.text


def test_a_killed_tenant_cannot_start_a_batch(service: Service) -> None:
    admin = auth(ADMIN_KEY)

    def kill(reason: str | None) -> None:
        body = {"scope": "tenants", "name": "globex", "reason": reason}
        response = service.http.post("/v1/admin/kill", json=body, headers=admin)
        assert response.status_code == 200, response.text

    kill("batch test")
    try:
        response = service.http.post(
            "/v1/agents/support/batches", json={"inputs": ["x"]}, headers=GLOBEX
        )
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "killed" and "batch test" in response.text
        assert "retry-after" in response.headers
    finally:
        kill(None)


def test_cancel_stops_a_batch(service: Service, sim: Sim) -> None:
    # Two slow replies: the first two items hang in their model call; four never start.
    sim.script(*[{"type": "text", "text": "never sent", "delay_ms": 60_000} for _ in range(2)])
    batch_id = post_batch(service, {"inputs": [f"Slow {i}" for i in range(6)], "concurrency": 2})

    def both_waiting() -> bool:
        items = get_batch(service, batch_id)["items"]
        return sum(i["run_id"] is not None for i in items) == 2 and sim.pending() == 0

    wait_for(both_waiting, timeout_s=30)

    response = service.http.post(f"/v1/batches/{batch_id}/cancel", headers=ACME)

    assert response.status_code == 200, response.text
    batch = response.json()
    assert (batch["status"], batch["reason"]) == ("cancelled", "cancelled by the caller")
    assert [i["status"] for i in batch["items"]] == ["cancelled"] * 6
    started = [i["run_id"] for i in batch["items"] if i["run_id"] is not None]
    assert len(started) == 2 and batch["done"] == 6 and batch["succeeded"] == 0
    for run_id in started:
        run = service.http.get(f"/v1/runs/{run_id}", headers=ACME).json()
        assert run["status"] == "cancelled"
    time.sleep(0.5)
    assert len(sim.requests()) == 2, "nothing started after the cancel"
    again = service.http.post(f"/v1/batches/{batch_id}/cancel", headers=ACME)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_a_batch_survives_a_restart_of_its_driver(service: Service, sim: Sim) -> None:
    import ray

    sim.script(*[{"type": "text", "text": "Survived.", "delay_ms": 700} for _ in range(4)])
    batch_id = post_batch(service, {"inputs": [f"Q{i}" for i in range(4)], "concurrency": 2})

    def two_in_flight() -> bool:
        items = get_batch(service, batch_id)["items"]
        in_flight = [i for i in items if i["run_id"] is not None and i["status"] == "running"]
        return len(in_flight) == 2

    wait_for(two_in_flight, timeout_s=30)
    ray.kill(batch_driver(service), no_restart=False)  # Ray restarts it; it resumes the batch

    batch = wait_batch(service, batch_id)

    assert batch["status"] == "completed", batch
    assert [i["status"] for i in batch["items"]] == ["completed"] * 4
    assert [i["output"] for i in batch["items"]] == ["Survived."] * 4
    assert len(sim.requests()) == 4, "no item ran twice"


async def test_the_handle_api_runs_batches_for_the_caller_only(service: Service, sim: Sim) -> None:
    from ray import serve

    handle = serve.get_app_handle("rayfleet")
    started: BatchView = await handle.options(method_name="start_batch").remote(
        "support", ["Hello", {"input": "Where is order 1002?"}], concurrency=2, api_key=ACME_KEY
    )
    assert started.total == 2
    for _ in range(300):
        view: BatchView = await handle.options(method_name="get_batch").remote(
            started.batch_id, api_key=ACME_KEY
        )
        if view.ended_at is not None:
            break
        await asyncio.sleep(0.05)
    assert view.status == "completed" and view.succeeded == 2
    with pytest.raises(NotFound):
        await handle.options(method_name="get_batch").remote(started.batch_id, api_key=GLOBEX_KEY)
    with pytest.raises(NotFound):
        await handle.options(method_name="cancel_batch").remote(
            started.batch_id, api_key=GLOBEX_KEY
        )


# -- fuzzing the batch routes from the OpenAPI document ----------------------------------------

OPERATIONS = {
    "POST /v1/agents/{agent}/batches": "agent",
    "GET /v1/batches/{batch_id}": "batch_id",
    "POST /v1/batches/{batch_id}/cancel": "batch_id",
}


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


@pytest.fixture
def quiet_after(service: Service) -> Iterator[None]:
    """Fuzzed batches run on after their requests: let them end before the next test."""
    import ray

    yield
    driver = batch_driver(service)
    wait_for(lambda: ray.get(driver.running.remote()) == 0, timeout_s=60, interval_s=0.2)


@pytest.mark.parametrize("label", OPERATIONS)
@pytest.mark.parametrize("variant", ["positive", "negative", "live"])
def test_fuzz_batch_routes(
    label: str,
    variant: str,
    service: Service,
    sim: Sim,
    session: requests.Session,
    quiet_after: None,
) -> None:
    from schemathesis import GenerationMode

    operation = SCHEMA.find_operation_by_label(label)
    assert operation is not None, label
    if variant == "live":
        live = post_batch(service, {"inputs": ["Hello"]}, headers={})  # the anonymous tenant's
        pinned = {"agent": "support", "batch_id": live}
        strategy = operation.as_strategy(
            GenerationMode.POSITIVE, path_parameters={OPERATIONS[label]: pinned[OPERATIONS[label]]}
        )
    else:
        mode = GenerationMode.NEGATIVE if variant == "negative" else GenerationMode.POSITIVE
        strategy = operation.as_strategy(mode)

    @FUZZ_SETTINGS
    @given(case=strategy)
    def check(case: Any) -> None:
        case.call_and_validate(
            base_url=service.base_url,
            session=session,
            headers=HEADERS,
            checks=CHECKS,
            timeout=TIMEOUT_S,
        )

    check()
