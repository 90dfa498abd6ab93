"""One writer process of tests/state/test_concurrent_writers.py: a run host's flushes, alone.

    python -m tests.state.concurrent_writer <writer> <writers> <barrier_dir>

The state is `$RAYFLEET_STATE_URL` (the environment, so a PostgreSQL password never shows
in a process listing). The writer creates its runs (host `host-<writer>`), waits until
every writer is ready, then appends its runs' events in group commits: each flush carries
the next few events of several of its runs, and some flushes are sent twice (a flush
retried after a lost reply), one of them long after its runs moved on. Halfway through it
waits for every other writer to reach halfway too, so the writers' commits really overlap.
It prints one JSON line: how many commits it made.

The test rebuilds what each writer wrote with `planned_events`: both sides share it.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

from actors.credentials import TenantContext
from actors.state import open_state
from agents.events import (
    Event,
    ModelDelta,
    RunCompleted,
    RunCreated,
    StepStarted,
    ToolCalled,
    ToolResulted,
)
from agents.examples import example_specs
from agents.loop import RunInput
from agents.messages import Usage

RUNS_PER_WRITER = 8
EVENTS_PER_RUN = 30
BARRIER_TIMEOUT_S = 60.0


def host_of(writer: int) -> str:
    return f"host-{writer}"


def run_ids(writer: int) -> list[str]:
    return [f"run-w{writer}-r{r}" for r in range(RUNS_PER_WRITER)]


def planned_events(run_id: str) -> list[Event]:
    """The run's whole log, seq 1..EVENTS_PER_RUN, ending in its terminal event: a run that
    streams text, calls a tool now and then, and completes."""
    events: list[Event] = [
        RunCreated(run_id=run_id, seq=1, agent="support", version="v1", input="where is 1001?")
    ]
    step = 1
    for seq in range(2, EVENTS_PER_RUN):
        if seq % 7 == 2:
            step += 1
            events.append(StepStarted(run_id=run_id, seq=seq, step=step))
        elif seq % 7 == 5:
            events.append(
                ToolCalled(
                    run_id=run_id,
                    seq=seq,
                    step=step,
                    call_id=f"call-{seq}",
                    tool="lookup_order",
                    arguments={"order_id": "1001", "fields": ["status", "eta"]},
                )
            )
        elif seq % 7 == 6:
            events.append(
                ToolResulted(
                    run_id=run_id,
                    seq=seq,
                    step=step,
                    call_id=f"call-{seq - 1}",
                    tool="lookup_order",
                    ok=True,
                    output='{"status": "shipped", "eta": "2026-12-02"}',
                )
            )
        else:
            events.append(
                ModelDelta(run_id=run_id, seq=seq, step=step, text=f"{run_id} says {seq} ")
            )
    events.append(
        RunCompleted(
            run_id=run_id,
            seq=EVENTS_PER_RUN,
            output="Order 1001 has shipped.",
            steps=step,
            usage=Usage(input_tokens=120, output_tokens=40),
            cost_usd=0.0004,
        )
    )
    return events


def flushes(writer: int) -> list[dict[str, list[Event]]]:
    """Every flush this writer sends, in order, retries included (seeded by `writer`)."""
    rng = random.Random(writer)
    pending = {run_id: planned_events(run_id) for run_id in run_ids(writer)}
    sent: list[dict[str, list[Event]]] = []
    while any(pending.values()):
        open_runs = [run_id for run_id, left in pending.items() if left]
        chosen = rng.sample(open_runs, min(len(open_runs), rng.randint(2, 5)))
        flush: dict[str, list[Event]] = {}
        for run_id in chosen:
            take = rng.randint(1, 4)
            flush[run_id], pending[run_id] = pending[run_id][:take], pending[run_id][take:]
        sent.append(flush)
        if rng.random() < 0.25:  # the reply was lost: the host sends the same flush again
            sent.append(flush)
    # A retry that arrives late, after its runs went on (and some ended).
    sent.append(sent[len(sent) // 3])
    return sent


def _barrier(directory: Path, name: str, writer: int, writers: int) -> None:
    """Wait until all `writers` have reached `name` (one file each in `directory`)."""
    (directory / f"{name}-{writer}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(directory.glob(f"{name}-*"))) < writers:
        if time.monotonic() > deadline:
            raise SystemExit(f"writer {writer}: the others did not reach {name!r} in time")
        time.sleep(0.005)


async def write(writer: int, writers: int, barrier_dir: Path) -> int:
    state = open_state(None)
    try:
        spec = example_specs()[0]
        for run_id in run_ids(writer):
            request = RunInput(run_id=run_id, input="where is 1001?", tenant="acme")
            await state.runs.create_run(
                spec, request, TenantContext(tenant="acme"), host_of(writer)
            )
        plan = flushes(writer)
        await asyncio.to_thread(_barrier, barrier_dir, "ready", writer, writers)
        for number, flush in enumerate(plan):
            if number == len(plan) // 2:
                await asyncio.to_thread(_barrier, barrier_dir, "halfway", writer, writers)
            await state.runs.append_events(flush)
        return len(plan)
    finally:
        await state.close()


def main() -> None:
    writer, writers, barrier_dir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    commits = asyncio.run(write(writer, writers, barrier_dir))
    print(json.dumps({"writer": writer, "commits": commits}))


if __name__ == "__main__":
    main()
