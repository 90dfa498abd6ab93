"""Several run-host processes writing to one state at once, on each backend: SQLite's file
lock and PostgreSQL's transactions must keep every group commit whole and every retried
flush harmless. The writers are separate OS processes (tests/state/concurrent_writer.py),
as run hosts on one node (SQLite) or on many (PostgreSQL) are."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from actors.state import STATE_URL_ENV, State
from agents.events import is_terminal
from tests.state.concurrent_writer import (
    EVENTS_PER_RUN,
    RUNS_PER_WRITER,
    flushes,
    host_of,
    planned_events,
    run_ids,
)

WRITERS = 4
# Each writer starts Python, opens the state, and makes ~40 small commits: seconds, even on
# a busy machine; far beyond that, something hangs (a lock never released).
WRITER_TIMEOUT_S = 120.0
ROOT = Path(__file__).resolve().parents[2]


async def _run_writers(url: str, barrier_dir: Path) -> list[dict[str, int]]:
    """Start every writer process, wait for all (bounded); kill them all if one fails."""
    env = {**os.environ, STATE_URL_ENV: url}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.state.concurrent_writer",
            str(w),
            str(WRITERS),
            str(barrier_dir),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for w in range(WRITERS)
    ]
    try:
        outputs = await asyncio.wait_for(
            asyncio.gather(*(p.communicate() for p in procs)), WRITER_TIMEOUT_S
        )
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    reports = []
    for w, (p, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"writer {w} exited {p.returncode}:\n{err.decode()[-3000:]}"
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    return reports


async def test_writer_processes_lose_and_duplicate_nothing(state: State, tmp_path: Path) -> None:
    barrier_dir = tmp_path / "barrier"
    barrier_dir.mkdir()
    reports = await _run_writers(state.url, barrier_dir)
    # Every writer passed both barriers (ready, halfway) and made all its commits.
    assert len(list(barrier_dir.glob("halfway-*"))) == WRITERS
    assert [r["commits"] for r in reports] == [len(flushes(w)) for w in range(WRITERS)]

    fresh = State(state.url)  # nothing cached in this process: what is durable
    try:
        for w in range(WRITERS):
            for run_id in run_ids(w):
                record = await fresh.runs.load_run(run_id)
                assert record is not None, run_id
                assert record.host_id == host_of(w)
                assert [e.seq for e in record.events] == list(range(1, EVENTS_PER_RUN + 1))
                assert record.events == planned_events(run_id)  # none lost, changed or doubled
                assert is_terminal(record.events[-1])
            assert await fresh.runs.live_runs_on(host_of(w)) == []
        assert await fresh.runs.live_hosts() == []
        # No stray rows: exactly the planned events, under the planned runs.
        db = fresh.database("runs")
        assert await db.fetchone("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM events") == (
            WRITERS * RUNS_PER_WRITER * EVENTS_PER_RUN,
            WRITERS * RUNS_PER_WRITER,
        )
    finally:
        await fresh.close()
