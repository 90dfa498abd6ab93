"""Where tools run: 'host' tools in the run's own host process, 'process' tools in the shared
tool-pool actor; a crash of that actor holds up only its own tools; a side effect run in the
host happens once across a kill -9 of the host (the same effect ledger, the same keys)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.run_host import host_of
from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.services import HOST_PREFIX, TOOLS_ACTOR
from actors.settings import RuntimeSettings
from agents.events import Event, ToolResulted
from agents.spec import AgentSpec, Isolation, ToolSpec
from tests import tools_for_tests
from tests.actors.test_durability import ANSWER, assert_one_clean_stream, collect, support
from tests.actors.test_exactly_once import (
    FIRST_PAY_ID,
    create_run_store,
    kill_9_host_of,
    ledger_holds_a_record,
    lines,
    refuse,
    reply,
)
from tests.actors.test_restarts import kill_9, pid_of
from tests.fixtures_sim import Sim
from tests.helpers import wait_for

pytestmark = pytest.mark.ray

Settings = Callable[..., RuntimeSettings]


def tool(name: str, function: str, isolation: Isolation | None = None, **fields: Any) -> ToolSpec:
    return ToolSpec(
        name=name,
        description=f"{name}.",
        function=f"{tools_for_tests.HERE}:{function}",
        isolation=isolation,
        **fields,
    )


def agent(*tools: ToolSpec) -> AgentSpec:
    return support().model_copy(update={"tools": tools})


def calls(*names: str, **arguments: Any) -> dict[str, Any]:
    """One model turn calling each tool in `names` (with the same arguments)."""
    first, *more = names
    return {
        "type": "tool_call",
        "name": first,
        "arguments": arguments,
        "more": [{"name": n, "arguments": arguments, "id": f"c-{n}"} for n in more],
    }


def results(events: list[Event]) -> dict[str, ToolResulted]:
    return {e.tool: e for e in events if isinstance(e, ToolResulted)}


async def host_pid(run_id: str, namespace: str) -> int:
    return await pid_of(HOST_PREFIX + host_of(run_id), namespace)


async def test_host_tools_run_in_the_run_host_and_process_tools_in_the_tool_pool(
    settings_for: Settings, namespace: str, sim: Sim
) -> None:
    runs = Runs(settings := settings_for(), await ensure_runtime(settings))
    spec = agent(
        tool("in_host", "pid"),  # the default for a read-only tool
        tool("in_host_async", "pid_async", "host"),
        tool("in_pool", "pid", "process"),
        tool("capped", "pid_async", max_concurrency=2),  # a cluster-wide cap: the pool keeps it
    )
    sim.script(calls("in_host", "in_host_async", "in_pool", "capped"), ANSWER)
    run_id = await runs.start(spec, "Where do my tools run?")
    events = await collect(runs, run_id)

    assert_one_clean_stream(events)
    assert events[-1].kind == "run.completed", events[-1]
    found = results(events)
    assert all(r.ok for r in found.values()), found
    pids = {name: json.loads(r.output) for name, r in found.items()}
    here, pool = await host_pid(run_id, namespace), await pid_of(TOOLS_ACTOR, namespace)
    assert here != pool
    assert pids == {"in_host": here, "in_host_async": here, "in_pool": pool, "capped": pool}


async def test_a_crash_of_the_tool_pool_under_load_holds_up_only_its_own_tools(
    settings_for: Settings, namespace: str, sim: Sim, tmp_path: Path
) -> None:
    # Generous bounds: the held call outlasts a slow restart and four runs on a busy machine.
    settings = settings_for(restart_wait_s=60.0)
    runs = Runs(settings, await ensure_runtime(settings))
    hold = tmp_path / "hold"
    hold.touch()
    started = Path(f"{hold}.started")
    isolated = agent(tool("held", "held", "process", timeout_s=120.0))
    sim.script(calls("held", hold=str(hold)))
    held_run = await runs.start(isolated, "Wait in the pool")
    held_reader = asyncio.create_task(collect(runs, held_run))
    await asyncio.to_thread(wait_for, lambda: lines(started), 30)
    killed = await kill_9(TOOLS_ACTOR, namespace)

    # While the pool restarts (and its tool waits again), runs on host tools go on, one
    # after another (the simulator's script is one queue): each tool runs in its host.
    in_host = agent(tool("in_host", "pid"), tool("in_host_async", "pid_async"))
    for i in range(4):
        sim.script(calls("in_host", "in_host_async"), ANSWER)
        run_id = await runs.start(in_host, f"Where is order {i}?")
        events = await collect(runs, run_id)
        assert events[-1].kind == "run.completed", events[-1]
        here = await host_pid(run_id, namespace)
        found = results(events)
        assert {n: (r.ok, json.loads(r.output)) for n, r in found.items()} == {
            "in_host": (True, here),
            "in_host_async": (True, here),
        }

    # The isolated call was asked again of the restarted pool, where it ends once released.
    sim.script(ANSWER)
    await asyncio.to_thread(hold.unlink)
    events = await held_reader
    assert_one_clean_stream(events)
    assert events[-1].kind == "run.completed", events[-1]
    result = results(events)["held"]
    restarted = await pid_of(TOOLS_ACTOR, namespace)
    assert restarted != killed
    assert result.ok and json.loads(result.output) == restarted, result
    assert len(lines(started)) == 2  # read-only: run again in the restarted pool


async def test_with_the_tool_pool_gone_only_process_tools_fail(
    settings_for: Settings, namespace: str, sim: Sim
) -> None:
    runs = Runs(settings := settings_for(restart_wait_s=1.0), await ensure_runtime(settings))
    ray.kill(ray.get_actor(TOOLS_ACTOR, namespace=namespace), no_restart=True)
    spec = agent(tool("in_host", "pid"), tool("in_pool", "pid", "process"))
    sim.script(calls("in_host", "in_pool"), ANSWER)
    run_id = await runs.start(spec, "Where do my tools run?")
    events = await collect(runs, run_id)

    assert events[-1].kind == "run.completed", events[-1]
    found = results(events)
    assert found["in_host"].ok
    assert json.loads(found["in_host"].output) == await host_pid(run_id, namespace)
    assert not found["in_pool"].ok
    assert (found["in_pool"].error or "").startswith("tool pool unavailable"), found["in_pool"]


async def test_a_host_tool_finds_the_shared_embedding_service(
    settings_for: Settings, namespace: str, sim: Sim
) -> None:
    """`semantic_search_kb` embeds through the shared batcher, found in the runtime's
    namespace from the run host's process as from the tool pool's."""
    runs = Runs(settings := settings_for(), await ensure_runtime(settings))
    search = ToolSpec(
        name="search_help",
        description="Search the help articles by meaning.",
        function="actors.kb_tools:semantic_search_kb",
        parameters={"type": "object", "properties": {"query": {"type": "string"}}},
    )
    assert search.runs_in == "host"
    sim.script(calls("search_help", query="refund"), ANSWER)
    events = await collect(runs, await runs.start(agent(search), "How do refunds work?"))

    assert events[-1].kind == "run.completed", events[-1]
    result = results(events)["search_help"]
    assert result.ok, result
    articles = json.loads(result.output)
    assert len(articles) == 3 and all("score" in a for a in articles), articles


def paying_in_host() -> AgentSpec:
    parameters = {"type": "object", "properties": {"counter": {"type": "string"}}}
    return agent(
        tool("note", "note", "host", parameters=parameters),
        tool("pay", "pay", "host", parameters=parameters, side_effects=True),
    )


@pytest.mark.parametrize("moment", ["call-not-durable", "result-not-durable"])
async def test_killing_the_host_around_an_in_host_side_effect_pays_exactly_once(
    settings_for: Settings, namespace: str, sim: Sim, tmp_path: Path, moment: str
) -> None:
    """As tests/actors/test_exactly_once.py, with `pay` in the run's host: the host's pool
    records the outcome in the same effect ledger, and the resumed run's host (another
    process) finds it by the same key instead of paying again."""
    settings = settings_for()
    ledger_file, runs_file = str(tmp_path / "effects.sqlite"), str(tmp_path / "runs.sqlite")
    runs = Runs(settings, await ensure_runtime(settings))
    await create_run_store(settings)
    counter = tmp_path / "paid"
    answer = {"type": "text", "text": "Paid."}
    lift: Callable[[], None] | None = None
    if moment == "call-not-durable":
        sim.script(reply(counter, FIRST_PAY_ID), reply(counter, "pay-redone"), answer)
        refuse(runs_file, "tool.call")
    else:
        sim.script(reply(counter, FIRST_PAY_ID), answer)
        lift = refuse(runs_file, "tool.result")

    run_id = await runs.start(paying_in_host(), "pay 42")
    reader = asyncio.create_task(collect(runs, run_id))
    if moment == "call-not-durable":
        await asyncio.to_thread(wait_for, lambda: lines(Path(f"{counter}.notes")), 30)
    else:
        await asyncio.to_thread(wait_for, lambda: ledger_holds_a_record(ledger_file), 30)
        assert len(lines(counter)) == 1
    await kill_9_host_of(run_id, namespace)
    if lift is not None:
        lift()

    events = await reader
    assert_one_clean_stream(events)
    assert events[-1].kind == "run.completed", events[-1]
    assert len(lines(counter)) == 1, lines(counter)  # paid once, counted at the tool
    paid = [e for e in events if isinstance(e, ToolResulted) and e.tool == "pay"]
    assert len(paid) == 1 and paid[0].ok, paid


async def test_an_in_host_effect_cut_by_a_host_crash_is_retried_with_its_key(
    settings_for: Settings, namespace: str, sim: Sim, tmp_path: Path
) -> None:
    """A 'host' side-effecting tool dies with its host mid-effect: no outcome reached the
    ledger, so the resumed run calls it again with the same idempotency key, and only a tool
    that honours its key pays once. (A 'process' tool finishes in the tool pool meanwhile:
    tests/actors/test_exactly_once.py, moment tool-acting.)"""
    runs = Runs(settings := settings_for(), await ensure_runtime(settings))
    counter = tmp_path / "paid"
    sim.script(reply(counter, FIRST_PAY_ID), {"type": "text", "text": "Paid."})
    await asyncio.to_thread(Path(f"{counter}.hold").touch)
    run_id = await runs.start(paying_in_host(), "pay 42")
    reader = asyncio.create_task(collect(runs, run_id))
    await asyncio.to_thread(wait_for, lambda: lines(counter), 30)
    await kill_9_host_of(run_id, namespace)
    await asyncio.to_thread(Path(f"{counter}.hold").unlink)

    events = await reader
    assert events[-1].kind == "run.completed", events[-1]
    keys = lines(counter)
    assert len(keys) == 2 and keys[0] == keys[1], keys  # the same key both times
