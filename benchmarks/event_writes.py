"""Events committed per second through the state layer (`state.runs.append_events`), by one
writer process and by several at once, on both backends as shipped:

  sqlite      the runs file in a private directory of the data directory, WAL,
              `synchronous=FULL` (an fsync per commit)
  postgresql  a private server started here (tests/postgres.py) with fsync ON and the
              defaults otherwise (synchronous_commit on): a commit is on disk, as in
              production. Same machine, loopback TCP.

A writer is a run host's flush loop in its own OS process: one commit in flight at a time,
each commit one `append_events` call carrying `--runs-per-commit` runs x
`--events-per-run` events (default 8 x 4 = 32), a realistic mix of ModelDelta, ToolCalled,
ToolResulted, StepStarted and ModelCompleted (their JSON size is printed). The writers
start together (a start file) and each writes for `--seconds`. Per case: commits/s and
events/s (totals over the whole window), latency per `append_events` call, the writers' CPU
per commit inside `append_events` (serialising, the driver, SQLite itself; building the
events is the run loop's and stays outside), and PostgreSQL's (its postmaster and every
child: backends, WAL writer, checkpointer) per commit.

Baseline, measured in the same run: raw `sqlite3` in this process, the same rows already
serialised, WAL + FULL, one `executemany` per commit: what the disk allows with no state
layer around it. It runs first and last (the disk's fsync cost drifts with the machine's
other traffic); `x baseline` is each case's events/s over the mean of the two.

Usage: .venv/bin/python benchmarks/event_writes.py [--quick] [--seconds S] [--writers 1,4]
       [--runs-per-commit R] [--events-per-run E] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.postgres

import _common as c

from actors.credentials import TenantContext
from actors.datadir import default_data_dir, private_dir
from actors.state import STATE_URL_ENV, open_state
from agents.events import (
    Event,
    ModelCompleted,
    ModelDelta,
    StepStarted,
    ToolCalled,
    ToolResulted,
)
from agents.examples import example_specs
from agents.loop import RunInput
from agents.messages import Usage

SETUP_TIMEOUT_S = 90.0  # a worker's start (imports, connect, schema) on a busy machine
HIDDEN = ("worker", "barrier")  # the parent's arguments for its writer processes
DELTA = "Your order 1001 shipped on Monday and should arrive by Wednesday; the tracking "


def next_event(run_id: str, seq: int) -> Event:
    """The run's event number `seq`: one step = 6 coalesced deltas, the model's completion,
    a tool call and its result, then the next step (JSON of 70-500 bytes, ~210 on average)."""
    step, position = divmod(seq, 10)
    if position == 0:
        return StepStarted(run_id=run_id, seq=seq, step=step)
    if position <= 6:
        return ModelDelta(run_id=run_id, seq=seq, step=step, text=DELTA)
    if position == 7:
        return ModelCompleted(
            run_id=run_id,
            seq=seq,
            step=step,
            tier="fast",
            provider="openai",
            model="gpt-4o-mini",
            text=DELTA * 2,
            tool_calls=1,
            usage=Usage(input_tokens=812, output_tokens=64),
            cost_usd=0.00016,
            latency_ms=412.5,
        )
    if position == 8:
        return ToolCalled(
            run_id=run_id,
            seq=seq,
            step=step,
            call_id=f"call_{step}",
            tool="lookup_order",
            arguments={"order_id": "1001", "fields": ["status", "eta", "carrier"]},
        )
    return ToolResulted(
        run_id=run_id,
        seq=seq,
        step=step,
        call_id=f"call_{step}",
        tool="lookup_order",
        ok=True,
        output='{"status": "shipped", "eta": "2026-12-02", "carrier": "UPS", '
        '"tracking": "1Z999AA10123456784"}',
        latency_ms=3.2,
    )


def run_ids(writer: int, runs: int) -> list[str]:
    return [f"run-w{writer}-r{r}" for r in range(runs)]


def flushes(writer: int, runs: int, per_run: int) -> Iterator[dict[str, list[Event]]]:
    """A host's flushes, forever: each carries the next `per_run` events of each of its
    `runs` runs."""
    for n in itertools.count():
        yield {
            run_id: [next_event(run_id, n * per_run + i + 1) for i in range(per_run)]
            for run_id in run_ids(writer, runs)
        }


# -- a writer process ----------------------------------------------------------------------


async def worker(writer: int, args: argparse.Namespace) -> dict[str, Any]:
    """Set up, say ready, wait for the start file, write for `args.seconds`."""
    state = open_state(None)  # $RAYFLEET_STATE_URL, set by the parent
    try:
        spec = example_specs()[0]
        plan = flushes(writer, args.runs_per_commit, args.events_per_run)
        # Before the clock: the runs exist, the schema is ready, the connection is open.
        for run_id in run_ids(writer, args.runs_per_commit):
            request = RunInput(run_id=run_id, input="where is 1001?")
            await state.runs.create_run(spec, request, TenantContext(tenant="default"), "h")
        barrier = Path(args.barrier)
        (barrier / f"ready-{writer}").touch()
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while not (barrier / "go").exists():  # ms-polling: the writers start within ~1 ms
            if time.monotonic() > deadline:
                raise SystemExit(f"writer {writer}: no start signal")
            await asyncio.sleep(0.001)
        latencies: list[float] = []
        events = 0
        cpu = 0.0
        start = time.time()
        end_at = time.monotonic() + args.seconds
        while time.monotonic() < end_at:
            flush = next(plan)  # built by the run loop in a host, not by the flush
            began, cpu_began = time.perf_counter(), time.process_time()
            await state.runs.append_events(flush)
            latencies.append(time.perf_counter() - began)
            cpu += time.process_time() - cpu_began  # this process's threads: SQLite's too
            events += sum(len(es) for es in flush.values())
        return {
            "start": start,
            "end": time.time(),
            "cpu_s": cpu,
            "events": events,
            "latencies": latencies,
        }
    finally:
        await state.close()


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds of process `pid` and of its children, live or exited (from /proc: a
    PostgreSQL backend exits with its connection, and is then counted in its parent's
    cutime/cstime)."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(p: int | str) -> list[str]:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # after the command name

    own = fields(pid)  # [1] = ppid, [11..14] = utime stime cutime cstime
    total = sum(int(x) for x in own[11:15])
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                child = fields(entry)
                if int(child[1]) == pid:
                    total += int(child[11]) + int(child[12])
    return total / tick


def run_case(
    url: str, writers: int, args: argparse.Namespace, server_pid: int | None = None
) -> dict[str, float]:
    """`writers` worker processes on `url`, started together; totals and latencies.
    `server_pid`: the PostgreSQL postmaster, whose CPU is counted too."""
    barrier = Path(tempfile.mkdtemp(prefix="event-writes-"))
    env = {**os.environ, STATE_URL_ENV: url}
    command = [sys.executable, __file__, "--seconds", str(args.seconds)]
    command += ["--runs-per-commit", str(args.runs_per_commit)]
    command += ["--events-per-run", str(args.events_per_run), "--barrier", str(barrier)]
    procs = [
        subprocess.Popen([*command, "--worker", str(w)], env=env, stdout=subprocess.PIPE, text=True)
        for w in range(writers)
    ]
    try:
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while len(list(barrier.glob("ready-*"))) < writers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the {writers} writers did not all get ready")
            time.sleep(0.01)
        server_cpu = process_tree_cpu_s(server_pid) if server_pid else 0.0
        (barrier / "go").touch()
        reports = []
        for p in procs:
            out, _ = p.communicate(timeout=args.seconds + SETUP_TIMEOUT_S)
            if p.returncode != 0:
                raise RuntimeError(f"a writer exited with {p.returncode}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        if server_pid:
            server_cpu = process_tree_cpu_s(server_pid) - server_cpu
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        shutil.rmtree(barrier, ignore_errors=True)
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    latencies = [x for r in reports for x in r["latencies"]]
    events, cpu_s = sum(r["events"] for r in reports), sum(r["cpu_s"] for r in reports)
    return summary(len(latencies), events, wall, cpu_s, latencies, server_cpu)


def summary(
    commits: int,
    events: int,
    wall: float,
    cpu_s: float,
    latencies: list[float],
    server_cpu_s: float = 0.0,
) -> dict[str, float]:
    return {
        "commits_per_s": commits / wall,
        "events_per_s": events / wall,
        # The writer's own CPU (building, serialising, the driver): the database server's
        # (PostgreSQL's backends) is not in it.
        "cpu_ms_per_commit": cpu_s * 1000 / commits,
        "server_cpu_ms_per_commit": server_cpu_s * 1000 / commits,
        "p50_ms": c.percentile(latencies, 50) * 1000,
        "p99_ms": c.percentile(latencies, 99) * 1000,
    }


# -- the baseline: raw sqlite3, no state layer ----------------------------------------------


def baseline(path: Path, args: argparse.Namespace) -> dict[str, float]:
    """One process, one connection, WAL + FULL, the rows serialised before the clock
    starts: one BEGIN / executemany / COMMIT per flush."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE events (run_id TEXT NOT NULL, seq BIGINT NOT NULL, event TEXT NOT NULL, "
        "PRIMARY KEY (run_id, seq))"
    )
    # The JSON of one whole step of each run (10 events), serialised once; flush n writes
    # seqs n * per_run + 1 ... with the JSON of the same position in the step.
    plan = flushes(0, args.runs_per_commit, 10)
    templates = [e.model_dump_json() for es in next(plan).values() for e in es]
    per_run = args.events_per_run
    latencies: list[float] = []
    events = 0
    start, cpu = time.perf_counter(), time.process_time()
    end_at = start + args.seconds
    for n in itertools.count():
        if time.perf_counter() >= end_at:
            break
        rows = [
            (run_id, seq, templates[r * 10 + (seq - 1) % 10])
            for r, run_id in enumerate(run_ids(0, args.runs_per_commit))
            for seq in range(n * per_run + 1, (n + 1) * per_run + 1)
        ]
        began = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO events VALUES (?, ?, ?) ON CONFLICT DO NOTHING", rows)
        db.execute("COMMIT")
        latencies.append(time.perf_counter() - began)
        events += len(rows)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    db.close()
    return summary(len(latencies), events, wall, cpu, latencies)


# -- the parent ----------------------------------------------------------------------------


@contextlib.contextmanager
def postgres() -> Iterator[Any]:
    """A private PostgreSQL server with fsync on."""
    from tests.postgres import PostgresServer

    class Server(PostgresServer):
        def postmaster_pid(self) -> int:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    with Server(fsync=True) as server:
        yield server


def event_sizes(args: argparse.Namespace) -> str:
    flush = next(flushes(0, args.runs_per_commit, 10))
    sizes = [len(e.model_dump_json()) for es in flush.values() for e in es]
    return f"{min(sizes)}-{max(sizes)} bytes, mean {sum(sizes) / len(sizes):.0f}"


def print_table(rows: list[tuple[str, str, dict[str, float]]]) -> None:
    """The cases between the two baselines (the first and last rows), each with its ratio
    to the baselines' mean events/s."""
    floor = (rows[0][2]["events_per_s"] + rows[-1][2]["events_per_s"]) / 2
    columns = f"{'backend':<17} {'writers':>7} {'commits/s':>10} {'events/s':>10}"
    columns += f" {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/commit':>13} {'server CPU':>10}"
    print("commits in flight = writers (one commit in flight per writer process)")
    print(f"{columns} {'x baseline':>10}")
    for backend, writers, r in rows:
        server = r["server_cpu_ms_per_commit"]
        print(
            f"{backend:<17} {writers:>7} {r['commits_per_s']:>10.0f} "
            f"{r['events_per_s']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['cpu_ms_per_commit']:>13.2f} "
            f"{f'{server:.2f}' if backend == 'postgresql' else '-':>10} "
            f"{c.ratio(r['events_per_s'], floor):>10.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 s per case")
    parser.add_argument("--seconds", type=float, default=4.0, help="per case")
    parser.add_argument("--writers", default="1,4", help="writer process counts, comma-separated")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--runs-per-commit", type=int, default=8)
    parser.add_argument("--events-per-run", type=int, default=4)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seconds = 1.0
    if args.worker is not None:
        print(json.dumps(asyncio.run(worker(args.worker, args))))
        return

    shown = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in HIDDEN})
    c.header("events committed through state.runs.append_events", shown)
    per_commit = args.runs_per_commit * args.events_per_run
    print(
        f"{per_commit} events per commit ({args.runs_per_commit} runs x "
        f"{args.events_per_run}); event JSON {event_sizes(args)}",
        flush=True,
    )
    where = Path(tempfile.mkdtemp(prefix="event-writes-", dir=private_dir(default_data_dir())))
    try:
        # The disk's fsync cost drifts with the machine's other traffic: the baseline runs
        # first and last, and each case is compared with the mean of the two.
        first = baseline(where / "first.sqlite", args)
        results: list[tuple[str, str, dict[str, float]]] = []
        counts = [int(n) for n in args.writers.split(",")]
        for backend in args.backends.split(","):
            if backend not in ("sqlite", "postgresql"):
                raise SystemExit(f"unknown backend {backend!r} (known: sqlite, postgresql)")
            with contextlib.ExitStack() as stack:
                server = stack.enter_context(postgres()) if backend == "postgresql" else None
                for writers in counts:
                    # Each case on an empty store of its own.
                    if server is None:
                        url = f"sqlite://{where / f'state-{writers}'}"
                    else:
                        url = server.url(server.create_database(f"writers_{writers}"))
                    pid = None if server is None else server.postmaster_pid()
                    result = run_case(url, writers, args, pid)
                    results.append((backend, str(writers), result))
                    print(
                        f"  {backend} x{writers}: {result['events_per_s']:.0f} events/s", flush=True
                    )
        last = baseline(where / "last.sqlite", args)
        print_table([("raw sqlite3 first", "1", first), *results, ("raw sqlite3 last", "1", last)])
    finally:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
