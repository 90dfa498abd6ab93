"""The run store's commit cost: events/s and commits/s durable in SQLite (WAL), with
`synchronous=FULL` (what the run store uses: the WAL is fsynced at every commit) against
`synchronous=NORMAL` (what it used before: a power cut could lose the last commits).

Like a run host's group commit: every commit is one `RunStore.append_events` call carrying
`batch` events spread over 8 runs (~64-character `model.delta` events), and `writers`
concurrent callers (run hosts) keep the store busy. No Ray: the store itself, on the disk of
the data directory (not /tmp, which may be a tmpfs where fsync costs nothing).

Usage: .venv/bin/python benchmarks/store_commit.py [--quick] [--seconds S] [--writers W]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

from actors.datadir import default_data_dir, private_dir
from actors.state.db import SqliteDatabase
from actors.state.runs import RunStore
from agents.events import Event, ModelDelta

RUNS_PER_COMMIT = 8
TEXT = "x" * 64


async def measure(
    path: Path, synchronous: Literal["NORMAL", "FULL"], batch: int, writers: int, seconds: float
) -> dict[str, float]:
    db = SqliteDatabase(path, synchronous=synchronous)
    store = RunStore(db)
    seqs = [0] * (writers * RUNS_PER_COMMIT)
    commits = 0
    deadline = time.perf_counter() + seconds

    async def writer(w: int) -> None:
        nonlocal commits
        while time.perf_counter() < deadline:
            events: dict[str, list[Event]] = {}
            for i in range(batch):
                run = w * RUNS_PER_COMMIT + i % RUNS_PER_COMMIT
                seqs[run] += 1
                run_id = f"run-w{w}-{run}"
                events.setdefault(run_id, []).append(
                    ModelDelta(run_id=run_id, seq=seqs[run], step=1, text=TEXT)
                )
            await store.append_events(events)
            commits += 1

    start = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    wall = time.perf_counter() - start
    await db.close()
    return {"commits_per_s": commits / wall, "events_per_s": commits * batch / wall}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 s per case")
    parser.add_argument("--seconds", type=float, default=5.0, help="per case")
    parser.add_argument("--writers", type=int, default=4, help="concurrent callers (hosts)")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    c.header("run store commit cost", args)
    where = Path(tempfile.mkdtemp(prefix="store-bench-", dir=private_dir(default_data_dir())))
    try:
        print(f"{args.writers} writers, one commit in flight each")
        print(f"{'events/commit':>13} {'synchronous':>11} {'commits/s':>10} {'events/s':>10}")
        for batch in (1, 16, 128):
            results = {}
            synchronous: Literal["NORMAL", "FULL"]
            for synchronous in ("NORMAL", "FULL"):
                path = where / f"{synchronous}-{batch}.sqlite"
                results[synchronous] = await measure(
                    path, synchronous, batch, args.writers, seconds
                )
                r = results[synchronous]
                print(
                    f"{batch:>13} {synchronous:>11} {r['commits_per_s']:>10.0f} "
                    f"{r['events_per_s']:>10.0f}",
                    flush=True,
                )
            cost = c.ratio(results["NORMAL"]["events_per_s"], results["FULL"]["events_per_s"])
            print(f"{'':>13} FULL costs {cost:.2f}x NORMAL's time per event")
    finally:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
