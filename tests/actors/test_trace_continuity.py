"""`kill -9` a run's host mid-run: the run resumes on another host and its spans still form
one trace, under one run span that the resuming host exports, covering the whole run."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from agents.tracing import RunTrace
from tests.actors.test_exactly_once import (
    Settings,
    agent,
    collect,
    create_run_store,
    kill_9_host_of,
    lines,
    reply,
)
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.otlp import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.ray


async def test_a_run_whose_host_is_killed_is_still_one_trace(
    settings_for: Settings, namespace: str, sim: Sim, tmp_path: Path, otlp: OtlpReceiver
) -> None:
    settings = settings_for()
    runs = Runs(settings, await ensure_runtime(settings))
    await create_run_store(settings)
    counter = tmp_path / "paid"
    # The pay tool holds while the hold file exists: the host is killed mid-call.
    sim.script(reply(counter, "pay-1"), {"type": "text", "text": "Paid."})
    await asyncio.to_thread(Path(f"{counter}.hold").touch)
    caller = secrets.token_hex(8)
    trace = RunTrace.start(f"00-{secrets.token_hex(16)}-{caller}-01")

    run_id = await runs.start(agent(), "pay 42", trace=trace)
    reader = asyncio.create_task(collect(runs, run_id))
    await asyncio.to_thread(wait_for, lambda: lines(counter), 30)
    await kill_9_host_of(run_id, namespace)
    await asyncio.to_thread(Path(f"{counter}.hold").unlink, missing_ok=True)
    events = await reader
    assert events[-1].kind == "run.completed", events[-1]
    assert {e.trace_id for e in events} == {trace.trace_id}

    def ended(spans: list[ReceivedSpan]) -> bool:
        return any(s.span_id == trace.span_id for s in spans)

    spans = await asyncio.to_thread(otlp.wait_for_spans, trace.trace_id, ended)
    (run,) = [s for s in spans if s.span_id == trace.span_id]  # exported once
    assert run.name == "invoke_agent support"
    assert run.parent_id == caller
    assert run.start_ns == pytest.approx(events[0].ts * 1e9, abs=1e6)  # from run.created on
    assert run.end_ns >= max(s.end_ns for s in spans)
    # The resuming host's steps hang under the same run span; the dead host's unfinished
    # step never ended, so only spans the dead host ended may name it as parent.
    resumed = [s for s in spans if s.resource["process.pid"] == run.resource["process.pid"]]
    steps = [s for s in resumed if s.name == "step"]
    assert steps and all(s.parent_id == run.span_id for s in steps), spans
    ids = {s.span_id for s in spans}
    assert all(s.parent_id in ids for s in resumed if s is not run)
