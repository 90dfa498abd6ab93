"""Where a tool runs (`ToolSpec.isolation`), the router that sends each call there, and what
the pool does for either place: its own bounded threads, a tool's `max_concurrency`."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from actors.host_actor import RoutedTools
from actors.tool_pool import ToolPool
from agents.errors import AgentSpecError
from agents.examples import example_specs
from agents.messages import ToolCall
from agents.ports import ToolOutcome
from agents.spec import AgentSpec, ToolSpec

HERE = __name__

# --- tools used by the tests (resolved by import path) -------------------------------------

threads_seen: set[str] = set()
blocked = threading.Event()
in_sync = 0
sync_peak = 0
sync_lock = threading.Lock()

release = asyncio.Event()
running = 0
peak = 0


def sync_blocking() -> str:
    global in_sync, sync_peak
    with sync_lock:
        in_sync += 1
        sync_peak = max(sync_peak, in_sync)
        threads_seen.add(threading.current_thread().name)
    try:
        blocked.wait(10)  # bounded: the test sets it
    finally:
        with sync_lock:
            in_sync -= 1
    return "done"


async def gated() -> str:
    global running, peak
    running += 1
    peak = max(peak, running)
    try:
        await release.wait()
    finally:
        running -= 1
    return "done"


@pytest.fixture(autouse=True)
def _clean() -> None:
    global release, running, peak, in_sync, sync_peak
    threads_seen.clear()
    blocked.clear()
    release = asyncio.Event()
    running = peak = in_sync = sync_peak = 0


def spec(function: str, name: str = "t", **fields: Any) -> ToolSpec:
    return ToolSpec(name=name, description="a test tool", function=f"{HERE}:{function}", **fields)


def call(name: str = "t") -> ToolCall:
    return ToolCall(id="c1", name=name, arguments={})


# --- the spec ------------------------------------------------------------------------------


def test_read_only_tools_run_in_the_host_by_default() -> None:
    assert spec("gated").isolation is None
    assert spec("gated").runs_in == "host"


def test_side_effects_and_a_cluster_wide_cap_run_in_the_pool_by_default() -> None:
    assert spec("gated", side_effects=True).runs_in == "process"
    assert spec("gated", max_concurrency=3).runs_in == "process"


def test_isolation_asked_for_is_kept() -> None:
    assert spec("gated", isolation="process").runs_in == "process"
    assert spec("gated", side_effects=True, isolation="host").runs_in == "host"
    assert spec("gated", isolation="process", max_concurrency=3).runs_in == "process"


def test_a_cap_in_the_host_is_refused() -> None:
    with pytest.raises(ValidationError, match="cluster-wide cap"):
        spec("gated", isolation="host", max_concurrency=3)


def test_a_sub_agent_has_no_placement() -> None:
    concierge = next(s for s in example_specs() if s.name == "concierge")
    desk = concierge.tools[0]
    assert desk.agent is not None
    with pytest.raises(ValidationError, match="sub-agent"):
        ToolSpec(name="d", description="d", agent=desk.agent, isolation="process")


def test_a_typo_in_isolation_names_the_field(tmp_path: Path) -> None:
    support = next(s for s in example_specs() if s.name == "support")
    data = support.model_dump(mode="json", exclude_none=True)
    data["tools"][0]["isolation"] = "proces"
    with pytest.raises(AgentSpecError, match=r"tools\.0\.isolation"):
        AgentSpec.from_mapping(data, "support.yaml")


def test_the_example_tools_run_where_their_kind_says() -> None:
    support = next(s for s in example_specs() if s.name == "support")
    placed = {t.name: t.runs_in for t in support.tools}
    assert placed["lookup_order"] == "host" and placed["issue_refund"] == "process"


# --- the pool ------------------------------------------------------------------------------


async def test_sync_tools_run_in_the_pools_own_bounded_threads() -> None:
    pool = ToolPool(threads=2)
    tasks = [
        asyncio.create_task(
            pool.call(spec("sync_blocking"), call(), idempotency_key="k", timeout_s=10)
        )
        for _ in range(4)
    ]
    for _ in range(1000):  # bounded: until both threads hold a call
        if in_sync == 2:
            break
        await asyncio.sleep(0.005)
    assert in_sync == 2
    blocked.set()
    outcomes = await asyncio.gather(*tasks)
    assert all(o.ok and o.output == "done" for o in outcomes), outcomes
    assert sync_peak == 2
    assert threads_seen and all(name.startswith("rf-tool") for name in threads_seen)


def test_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threads"):
        ToolPool(threads=0)


async def test_a_tools_cap_holds_its_calls_not_the_others() -> None:
    pool = ToolPool(max_concurrency=10)
    capped = spec("gated", name="capped", max_concurrency=2)
    free = spec("gated", name="free")
    tasks = [
        asyncio.create_task(pool.call(capped, call("capped"), idempotency_key="k", timeout_s=10))
        for _ in range(4)
    ]
    for _ in range(20):  # let every task reach its semaphore
        await asyncio.sleep(0)
    assert running == 2
    other = asyncio.create_task(pool.call(free, call("free"), idempotency_key="k", timeout_s=10))
    for _ in range(20):
        await asyncio.sleep(0)
    assert running == 3  # the uncapped tool did not wait for the capped one's slots
    release.set()
    outcomes = await asyncio.gather(*tasks, other)
    assert all(o.ok for o in outcomes), outcomes
    assert peak == 3


# --- the router ----------------------------------------------------------------------------


class Recorded:
    """A real ToolPool that notes the tools it was asked to run."""

    def __init__(self) -> None:
        self.pool = ToolPool()
        self.tools: list[str] = []

    async def call(
        self,
        tool: ToolSpec,
        call: ToolCall,
        *,
        idempotency_key: str,
        timeout_s: float,
        tenant: str = "default",
        user: str | None = None,
    ) -> ToolOutcome:
        self.tools.append(tool.name)
        return await self.pool.call(
            tool,
            call,
            idempotency_key=idempotency_key,
            timeout_s=timeout_s,
            tenant=tenant,
            user=user,
        )


async def test_the_router_sends_each_call_where_its_tool_runs() -> None:
    local, remote = Recorded(), Recorded()
    router = RoutedTools(local, remote)
    release.set()
    for tool in (
        spec("gated", name="read"),
        spec("gated", name="isolated", isolation="process"),
        spec("gated", name="capped", max_concurrency=1),
    ):
        outcome = await router.call(tool, call(tool.name), idempotency_key="k", timeout_s=5)
        assert outcome.ok, outcome
    assert local.tools == ["read"]
    assert remote.tools == ["isolated", "capped"]
