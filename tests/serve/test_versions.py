"""Agent versions over real HTTP: weighted splits, live re-weighting, shadows that never
execute side effects, canary rollback and kill switches (issue 5).

A second app, `rayfleet-versions` at /versions, serves support@v1, v2 and v3 next to the
session's app; both share the runtime actors, so kill switches set here reach the session's
app too: every test clears what it sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from agents.events import Event
from serve_app.config import AppConfig
from serve_app.traffic import TrafficConfig, TrafficRouter
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve import test_run_slots as run_slots
from tests.serve.conftest import Service
from tests.serve.tenants import ACME_KEY, ADMIN_KEY, auth
from tests.serve.test_runs_http import read_sse

pytestmark = pytest.mark.serve

APP = "rayfleet-versions"
PREFIX = "/versions"
SPECS = (
    "example:support.yaml",
    "example:versions/support-v2.yaml",
    "example:versions/support-v3.yaml",
)
VERSIONS = {"support": ["v1", "v2", "v3"]}
SPLIT = TrafficConfig.model_validate({"agents": {"support": {"weights": {"v1": 70, "v2": 30}}}})
ACME = auth(ACME_KEY)
ADMIN = auth(ADMIN_KEY)


def traffic(**support: Any) -> TrafficConfig:
    return TrafficConfig.model_validate({"agents": {"support": support}})


@dataclass
class Versions:
    http: httpx2.Client
    url: str
    config: AppConfig
    service: Service

    def deploy(self, split: TrafficConfig) -> None:
        """Redeploy with only the gateway's user_config changed (Serve: reconfigure)."""
        from ray import serve

        from serve_app.app import build_app

        config = self.config.model_copy(update={"traffic": split})
        with _same_code_version():
            serve.run(build_app(config), name=APP, route_prefix=PREFIX)

    def start(
        self, text: str = "Where is order 1002?", headers: dict[str, str] = ACME, **body: Any
    ) -> httpx2.Response:
        return self.http.post(
            "/v1/agents/support/runs", json={"input": text, **body}, headers=headers
        )

    def run_id(self, text: str = "Where is order 1002?", **body: Any) -> str:
        response = self.start(text, **body)
        assert response.status_code == 202, response.text
        run_id: str = response.json()["run_id"]
        return run_id

    def summary(self, run_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.http.get(f"/v1/runs/{run_id}", headers=ACME).json()
        return found

    def finished(self, run_id: str, timeout_s: float = 30) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            summary = self.summary(run_id)
            return summary if summary["status"] != "running" else None

        return wait_for(done, timeout_s=timeout_s, interval_s=0.1)

    def events(self, run_id: str) -> list[Event]:
        return read_sse(self.http, "GET", f"/v1/runs/{run_id}/events", headers=ACME)

    def support_traffic(self) -> dict[str, Any]:
        agents = self.http.get("/v1/agents", headers=ACME).json()["agents"]
        found: dict[str, Any] = next(a for a in agents if a["name"] == "support")["traffic"]
        return found

    def kill(self, scope: str, name: str = "", reason: str | None = None) -> None:
        body = {"scope": scope, "name": name, "reason": reason}
        response = self.http.post("/v1/admin/kill", json=body, headers=ADMIN)
        assert response.status_code == 200, response.text

    def drain(self, runs: list[dict[str, Any]]) -> None:
        """Wait until `runs` have ended, so none uses a later test's scripted reply."""
        for run in runs:
            self.finished(run["run_id"], timeout_s=60)

    def version_of_runs(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Start runs concurrently (202) and return each one's summary at start."""
        return asyncio.run(_start_many(self.url, bodies))


@contextlib.contextmanager
def _same_code_version() -> Iterator[None]:
    # `serve.run` gives every deployment a random code version, so each call would replace
    # every replica; `serve deploy` (cluster/canary.yaml) hashes the app's import path and
    # args instead, and a change under `user_config` is a reconfigure. Pin the version to
    # get the deploy semantics the traffic config is meant for.
    from ray.serve._private import client

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client, "get_random_string", lambda *_: "rayfleet-versions-test")
        yield


async def _start_many(url: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(16)
    async with httpx2.AsyncClient(base_url=url, timeout=60, headers=ACME) as client:

        async def one(body: dict[str, Any]) -> dict[str, Any]:
            async with gate:
                started = await client.post("/v1/agents/support/runs", json=body)
                assert started.status_code == 202, started.text
                run_id = started.json()["run_id"]
                found: dict[str, Any] = (await client.get(f"/v1/runs/{run_id}")).json()
                return found

        return await asyncio.gather(*(one(body) for body in bodies))


def _clear_admin_switches(versions: Versions) -> None:
    for scope in ("agents", "versions", "tenants", "tools", "models"):
        for name in ("support", "support@v1", "support@v2", "acme", "lookup_order", "sim-strong-2"):
            versions.kill(scope, name, None)
    versions.kill("global", "", None)


@pytest.fixture(scope="module")
def versions(service: Service) -> Iterator[Versions]:
    from ray import serve

    from serve_app.app import build_app

    config = service.config.model_copy(update={"agents": SPECS, "traffic": SPLIT})
    with _same_code_version():
        serve.run(build_app(config), name=APP, route_prefix=PREFIX)
    url = f"{service.base_url}{PREFIX}"
    http = httpx2.Client(base_url=url, timeout=30)
    handle = Versions(http, url, config, service)
    try:
        yield handle
    finally:
        with contextlib.suppress(Exception):
            _clear_admin_switches(handle)
        http.close()
        serve.delete(APP)


def _thread_on(version: str, split: TrafficConfig, tenant: str = "acme") -> str:
    router = TrafficRouter(split, VERSIONS)
    for _ in range(1000):
        thread = f"t-{uuid.uuid4().hex[:12]}"
        if router.choose("support", tenant, thread, "any").version == version:
            return thread
    raise AssertionError(f"no thread lands on {version}")


def _replicas() -> set[str]:
    import ray

    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    return {n for n in names if n.startswith(f"SERVE_REPLICA::{APP}#")}


# -- 1. the weighted split and stickiness ----------------------------------------------------


def test_weights_split_new_runs_and_a_thread_sticks_to_its_version(versions: Versions) -> None:
    n = 300
    # Fixed threads: the split is a stable hash of (tenant, thread), so the count is the same
    # in every run (v2 gets 87 of these 300) and the test cannot fail by chance.
    bodies = [{"input": "hi", "thread_id": f"split-{i}"} for i in range(n)]
    runs = versions.version_of_runs(bodies)
    counts = {v: sum(1 for r in runs if r["version"] == v) for v in ("v1", "v2", "v3")}
    assert counts["v3"] == 0 and counts["v1"] + counts["v2"] == n
    share = counts["v2"] / n
    # Binomial(300, 0.3): sd 2.6 points; 7 points is ~2.6 sd.
    assert abs(share - 0.30) <= 0.07, counts
    assert {r["assignment"] for r in runs} == {"stable"}

    threads = [f"sticky-{uuid.uuid4().hex[:10]}-{i}" for i in range(6)]
    sticky = versions.version_of_runs([{"input": "hi", "thread_id": t} for t in threads * 4])
    by_thread: dict[str, set[str]] = {}
    for body, run in zip(threads * 4, sticky, strict=True):
        by_thread.setdefault(body, set()).add(run["version"])
    assert all(len(v) == 1 for v in by_thread.values()), by_thread
    versions.drain(runs + sticky)


# -- 2. live re-weighting ----------------------------------------------------------------------


def test_a_redeploy_with_new_weights_reroutes_without_restarting_replicas(
    versions: Versions, sim: Sim
) -> None:
    before = _replicas()
    assert any("#gateway#" in name for name in before), before
    # Nothing else runs now: the scripted slow reply is this run's.
    sim.script({"type": "text", "text": "Answered on the old weights.", "delay_ms": 3000})
    thread = _thread_on("v1", SPLIT)
    slow = versions.run_id("hi", thread_id=thread)
    wait_for(lambda: len(sim.requests()) >= 1, timeout_s=10)
    try:
        versions.deploy(traffic(weights={"v1": 0, "v2": 100}))
        wait_for(lambda: versions.support_traffic()["weights"] == {"v1": 0, "v2": 100})
        after = versions.version_of_runs(
            [{"input": "hi", "thread_id": f"moved-{i}-{uuid.uuid4().hex[:8]}"} for i in range(30)]
            + [{"input": "hi", "thread_id": thread}]
        )
        assert {r["version"] for r in after} == {"v2"}  # the thread moves with the weights
        versions.drain(after)
        assert _replicas() == before, "a traffic change must not replace replicas"
        summary = versions.finished(slow)
        assert summary["version"] == "v1"
        assert summary["status"] == "completed"
        assert summary["output"] == "Answered on the old weights."
    finally:
        versions.deploy(SPLIT)
    wait_for(lambda: versions.support_traffic()["weights"] == {"v1": 70, "v2": 30})


# -- 3. shadows ----------------------------------------------------------------------------------


def _shadows_of(versions: Versions, primaries: list[str]) -> dict[str, str]:
    """primary run id -> its shadow run id, from the outcome store's rows."""
    state_url = versions.service.settings.state_url
    assert state_url is not None
    path = Path(state_url.removeprefix("sqlite://")) / "outcomes.sqlite"
    marks = ",".join("?" * len(primaries))
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            f"SELECT primary_run_id, run_id FROM outcome_runs WHERE assignment = 'shadow' "
            f"AND primary_run_id IN ({marks})",
            primaries,
        ).fetchall()
    return {str(p): str(s) for p, s in rows}


def _refund_results(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind == "tool.result" and e.tool == "issue_refund"]  # type: ignore[union-attr]


def test_shadow_runs_replay_side_effects_and_are_compared(versions: Versions) -> None:
    versions.deploy(traffic(weights={"v1": 1}, shadows=[{"version": "v3", "sample": 1.0}]))
    try:
        wait_for(lambda: versions.support_traffic()["shadows"] != [])
        orders = random.sample(range(20_000, 90_000), 3)
        primaries = [versions.run_id(f"Please refund order {o}, it arrived broken") for o in orders]
        for run_id in primaries:
            assert versions.finished(run_id)["status"] == "completed"
        shadows = wait_for(
            lambda: (found := _shadows_of(versions, primaries)) and len(found) == 3 and found,
            timeout_s=30,
            interval_s=0.2,
        )
        for primary, shadow in shadows.items():
            primary_events = versions.events(primary)
            shadow_events = versions.events(shadow)
            created = shadow_events[0]
            assert created.assignment == "shadow" and created.primary_run_id == primary  # type: ignore[union-attr]
            assert created.version == "v3"  # type: ignore[union-attr]
            primary_refunds = _refund_results(primary_events)
            shadow_refunds = _refund_results(shadow_events)
            assert len(primary_refunds) == 1 and primary_refunds[0].ok, primary_refunds  # type: ignore[union-attr]
            # Executed again, the shop would answer "already refunded" (a new idempotency
            # key): the same refund id proves the primary's result was replayed.
            assert [(r.ok, r.output) for r in shadow_refunds] == [  # type: ignore[union-attr]
                (True, primary_refunds[0].output)  # type: ignore[union-attr]
            ]
        report = versions.http.get("/v1/admin/agents/support/shadows", headers=ADMIN)
        assert report.status_code == 200, report.text
        pairs = {(p["primary_version"], p["shadow_version"]): p for p in report.json()["pairs"]}
        assert pairs[("v1", "v3")]["pairs"] >= 3
        assert (
            versions.http.get("/v1/admin/agents/support/shadows", headers=ACME).status_code == 401
        )
    finally:
        versions.deploy(SPLIT)


def test_shadow_runs_take_no_run_slot_and_free_none(versions: Versions, sim: Sim) -> None:
    service = versions.service
    # Started on the session's app (no shadows there): it stays live throughout.
    held = run_slots.hanging_run(service, sim)
    versions.deploy(traffic(weights={"v1": 1}, shadows=[{"version": "v3", "sample": 1.0}]))
    try:
        wait_for(lambda: versions.support_traffic()["shadows"] != [])
        primaries = []
        for _ in range(3):  # one at a time: the tenant has one slot left
            response = run_slots.start(versions.http, "Where is order 1002?")
            primaries.append(run_slots.run_id_of(response))
            assert run_slots.finished(service, primaries[-1])["status"] == "completed"
        shadows = wait_for(
            lambda: (found := _shadows_of(versions, primaries)) and len(found) == 3 and found,
            timeout_s=30,
            interval_s=0.2,
        )
        for shadow in shadows.values():
            assert run_slots.finished(service, shadow)["assignment"] == "shadow"
        run_slots.assert_the_limit_admits_exactly_the_rest(service, sim, live=1)
    finally:
        versions.deploy(SPLIT)
        run_slots.cancel(service, held)
    wait_for(lambda: run_slots.running_runs(service) == 0, timeout_s=10)


# -- 4. canary gate --------------------------------------------------------------------------


def _canary(window_s: float) -> TrafficConfig:
    gate = {
        "min_runs": 5,
        "window_s": window_s,
        "error_rate_slack": 0.25,
        "max_cost_per_success_ratio": 100,
        "max_p95_run_s_ratio": 100,
    }
    return traffic(weights={"v1": 50, "v2": 50}, stable="v1", canary="v2", gate=gate)


def _run_and_judge(versions: Versions, v2_success: bool) -> list[dict[str, Any]]:
    runs = versions.version_of_runs([{"input": "Where is order 1001?"} for _ in range(24)])
    assert {"v1", "v2"} <= {r["version"] for r in runs}
    assert {r["assignment"] for r in runs} == {"stable", "canary"}
    for run in runs:
        assert versions.finished(run["run_id"])["status"] == "completed"
        success = v2_success or run["version"] != "v2"
        verdict = versions.http.post(
            f"/v1/runs/{run['run_id']}/outcome", json={"success": success}, headers=ACME
        )
        assert verdict.status_code == 200, verdict.text
    return runs


def test_a_healthy_canary_is_not_rolled_back(versions: Versions) -> None:
    versions.deploy(_canary(window_s=30))
    try:
        _run_and_judge(versions, v2_success=True)
        time.sleep(11)  # two judging rounds (every ~5 s)
        state = versions.support_traffic()
        assert state["rolled_back"] is None
        assert state["weights"] == {"v1": 50, "v2": 50}
    finally:
        versions.deploy(SPLIT)


def test_a_worse_canary_is_rolled_back_and_new_runs_go_to_stable(versions: Versions) -> None:
    versions.deploy(_canary(window_s=31))  # not the healthy test's config: its own rollback
    try:
        _run_and_judge(versions, v2_success=False)
        state = wait_for(
            lambda: (s := versions.support_traffic())["rolled_back"] is not None and s,
            timeout_s=30,
            interval_s=0.5,
        )
        assert state["weights"]["v2"] == 0
        assert "error rate" in state["rolled_back"]["reason"]
        after = versions.version_of_runs([{"input": "hi"} for _ in range(20)])
        assert {r["version"] for r in after} == {"v1"}
    finally:
        versions.deploy(SPLIT)


# -- 5. kill switches --------------------------------------------------------------------------


def _refused(response: httpx2.Response, reason: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "killed"
    assert reason in problem["detail"]


def test_kill_switches_refuse_new_runs_at_every_level_until_cleared(versions: Versions) -> None:
    try:
        versions.kill("versions", "support@v1", "bad prompt in v1")
        _refused(versions.start(version="v1"), "bad prompt in v1")
        assert versions.start(version="v2").status_code == 202
        versions.kill("versions", "support@v1", None)
        assert versions.start(version="v1").status_code == 202

        versions.kill("agents", "support", "support is misbehaving")
        _refused(versions.start(version="v2"), "support is misbehaving")
        _refused(versions.start(), "support is misbehaving")
        assert set(versions.support_traffic()["killed"]) == {"v1", "v2", "v3"}
        versions.kill("agents", "support", None)

        versions.kill("tenants", "acme", "acme is over its contract")
        _refused(versions.start(), "acme is over its contract")
        assert versions.start(headers={}).status_code == 202  # the anonymous tenant is not acme
        versions.kill("tenants", "acme", None)

        versions.kill("global", "", "incident 42")
        _refused(versions.start(headers={}), "incident 42")
        versions.kill("global", "", None)
        assert versions.start().status_code == 202
    finally:
        _clear_admin_switches(versions)


def test_killing_an_agent_stops_its_running_run_at_the_next_step(
    versions: Versions, sim: Sim
) -> None:
    sim.script(
        {
            "type": "tool_call",
            "name": "lookup_order",
            "arguments": {"order_id": 1001},
            "delay_ms": 3000,
        }
    )
    run_id = versions.run_id(version="v1")
    wait_for(lambda: len(sim.requests()) >= 1, timeout_s=10)
    try:
        versions.kill("agents", "support", "stop it now")
        summary = versions.finished(run_id, timeout_s=20)
    finally:
        _clear_admin_switches(versions)
    assert summary["status"] == "cancelled"
    terminal = versions.events(run_id)[-1]
    assert terminal.kind == "run.cancelled"
    assert terminal.reason.startswith("killed:"), terminal  # type: ignore[union-attr]
    assert "stop it now" in terminal.reason  # type: ignore[union-attr]
    assert len(sim.requests()) == 1  # stopped before step 2 called the model


def test_a_run_started_just_after_a_switch_is_cleared_is_not_cancelled(
    versions: Versions,
) -> None:
    try:
        versions.kill("agents", "support", "briefly off")
        time.sleep(1.5)  # every run host has read the switch (they poll each second)
    finally:
        _clear_admin_switches(versions)
    # The hosts still hold the old switch for up to a second; the run must not pay for it.
    run_id = versions.run_id("hi", version="v1")
    assert versions.finished(run_id)["status"] == "completed"


def _until_run_host_sees(versions: Versions, check: Any, text: str, **body: Any) -> list[Event]:
    """Run until `check(events)` holds: run hosts read switches every `switches_poll_s`."""
    for _ in range(10):
        run_id = versions.run_id(text, **body)
        versions.finished(run_id)
        events = versions.events(run_id)
        if check(events):
            return events
        time.sleep(0.5)
    raise AssertionError(f"the switch never reached the run hosts: {[e.kind for e in events]}")


def test_a_killed_tool_answers_unavailable_and_a_killed_model_is_skipped(
    versions: Versions,
) -> None:
    try:
        versions.kill("tools", "lookup_order", "orders API down")

        def unavailable(events: list[Event]) -> bool:
            results = [e for e in events if e.kind == "tool.result"]
            return bool(results) and not results[0].ok  # type: ignore[union-attr]

        events = _until_run_host_sees(versions, unavailable, "Where is order 1002?", version="v1")
        result = next(e for e in events if e.kind == "tool.result")
        assert result.tool == "lookup_order"  # type: ignore[union-attr]
        assert "unavailable" in (result.error or "")  # type: ignore[union-attr]
        assert "orders API down" in (result.error or "")  # type: ignore[union-attr]
        versions.kill("tools", "lookup_order", None)

        versions.kill("models", "sim-strong-2", "bad outputs")

        def fell_back(events: list[Event]) -> bool:
            done = [e for e in events if e.kind == "model.completed"]
            return bool(done) and all(e.model != "sim-strong-2" for e in done)  # type: ignore[union-attr]

        events = _until_run_host_sees(versions, fell_back, "hi", version="v2")
        completed = [e for e in events if e.kind == "model.completed"]
        assert {(e.provider, e.model) for e in completed} == {("sim-anthropic", "sim-strong")}  # type: ignore[union-attr]
    finally:
        _clear_admin_switches(versions)
