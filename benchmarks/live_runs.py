"""Live runs per node and memory per live run.

The simulator answers after a very long time-to-first-token, so every run stays live in its
first model call. Runs are started through the handle API (`start_run`, what POST without
SSE does), held, counted, measured, then all cancelled.

  isolated: runs_per_actor=1 — one run-host process per run: creation time per run and
            RSS/USS per run process.
  packed:   runs_per_actor as configured (default: RuntimeSettings' default) — K live runs;
            RSS growth of the run-host processes per live run, in KB (new host processes
            included), and the marginal KB per run inside a full host.

Usage: .venv/bin/python benchmarks/live_runs.py [--quick] [--isolated N] [--packed K]
       [--runs-per-actor R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

LONG_TTFT_MS = 3_600_000.0  # an hour: nothing finishes by itself during the benchmark
TEXT = "Hold on."
# model_call_timeout_s 3600: the `support` agent's 60 s timeout would end held runs early.
HOLD_AGENT = c.HERE / "agents" / "hold.yaml"
IN_FLIGHT = 64  # run starts (and cancels) in flight at once


def host_memory(fleet: c.Rayfleet) -> dict[int, tuple[int, int]]:
    """pid -> (RSS, USS) in bytes of every run-host process of our Ray."""
    import psutil

    out: dict[int, tuple[int, int]] = {}
    for proc in c.server_processes(fleet.exclude_pids):
        with contextlib.suppress(psutil.Error):
            if "RunHostActor" in " ".join(proc.cmdline()):
                info = proc.memory_full_info()
                out[proc.pid] = (info.rss, info.uss)
    return out


async def pool_stats() -> dict[str, int]:
    import ray

    pool = ray.get_actor("rayfleet-pool", namespace="rayfleet")
    stats: dict[str, int] = await pool.stats.remote()
    return stats


async def start_many(
    handle: Any, n: int, concurrency: int, deadline: float, on_progress: Any = None
) -> tuple[list[str], list[float]]:
    """Start n runs (at most `concurrency` starts in flight); (run ids, start latencies)."""
    run_ids: list[str] = []
    latencies: list[float] = []
    slots = asyncio.Semaphore(concurrency)
    step = max(n // 10, 1)

    async def one(i: int) -> None:
        async with slots:
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            run_ids.append(await handle.start_run.remote("hold", TEXT))
            latencies.append(time.perf_counter() - started)
            if on_progress is not None and len(run_ids) % step == 0:
                await on_progress(len(run_ids))

    await asyncio.gather(*(one(i) for i in range(n)))
    return run_ids, latencies


async def cancel_all(handle: Any, run_ids: list[str], concurrency: int) -> tuple[int, float]:
    started = time.perf_counter()
    slots = asyncio.Semaphore(concurrency)
    cancelled = 0

    async def one(run_id: str) -> None:
        nonlocal cancelled
        async with slots:
            summary = await handle.cancel_run.remote(run_id)
            cancelled += summary.status == "cancelled"

    await asyncio.wait_for(asyncio.gather(*(one(r) for r in run_ids)), timeout=300)
    return cancelled, time.perf_counter() - started


async def isolated(sim: c.Simulator, n: int) -> dict[str, Any]:
    config = c.app_config(sim, agents=(HOLD_AGENT,), runs_per_actor=1)
    async with c.rayfleet(config, sim) as fleet:
        handle = fleet.handle()
        idle = host_memory(fleet)
        run_ids, latencies = await start_many(handle, n, 1, time.monotonic() + 300)
        await asyncio.sleep(1)
        stats = await pool_stats()
        mem = host_memory(fleet)
        status = (await handle.get_run.remote(run_ids[-1])).status
        cancelled, cancel_s = await cancel_all(handle, run_ids, 8)
    rss = [v[0] for v in mem.values()]
    uss = [v[1] for v in mem.values()]
    return {
        "runs": len(run_ids),
        "idle_hosts": len(idle),
        "hosts": len(mem),
        "pool": stats,
        "last_status": status,
        "start_p50_ms": c.percentile(latencies, 50) * 1000,
        "start_max_ms": max(latencies) * 1000,
        "rss_mb_p50": c.percentile(rss, 50) / 2**20,
        "uss_mb_p50": c.percentile(uss, 50) / 2**20,
        "cancelled": cancelled,
        "cancel_s": cancel_s,
    }


async def packed(sim: c.Simulator, n: int, runs_per_actor: int | None, limit_s: float) -> Any:
    runtime = {} if runs_per_actor is None else {"runs_per_actor": runs_per_actor}
    config = c.app_config(sim, agents=(HOLD_AGENT,), **runtime)
    per_actor = config.runtime.runs_per_actor
    async with c.rayfleet(config, sim) as fleet:
        handle = fleet.handle()
        # One run started and cancelled: imports, connections and first-use costs paid.
        warm, _ = await start_many(handle, 1, 1, time.monotonic() + 60)
        await cancel_all(handle, warm, 1)
        idle = host_memory(fleet)
        checkpoints: list[tuple[int, int, float, float]] = []

        async def progress(count: int) -> None:
            mem = host_memory(fleet)
            rss = sum(v[0] for v in mem.values()) / 2**20
            uss = sum(v[1] for v in mem.values()) / 2**20
            checkpoints.append((count, len(mem), rss, uss))
            print(f"  {count} runs started: {len(mem)} run hosts, RSS {rss:.0f} MB", flush=True)

        started = time.perf_counter()
        run_ids, latencies = await start_many(
            handle, n, IN_FLIGHT, time.monotonic() + limit_s, progress
        )
        start_s = time.perf_counter() - started
        await asyncio.sleep(2)
        stats = await pool_stats()
        mem = host_memory(fleet)
        sample = run_ids[:: max(len(run_ids) // 20, 1)]
        statuses = [(await handle.get_run.remote(r)).status for r in sample]
        cancelled, cancel_s = await cancel_all(handle, run_ids, IN_FLIGHT)
    idle_rss = sum(v[0] for v in idle.values())
    idle_uss = sum(v[1] for v in idle.values())
    rss = sum(v[0] for v in mem.values())
    uss = sum(v[1] for v in mem.values())
    # Marginal cost inside a host: the fullest host's growth over its idle size.
    first_pid = next(iter(idle), None)
    marginal_kb = None
    if first_pid is not None and first_pid in mem and len(run_ids) >= per_actor:
        marginal_kb = (mem[first_pid][0] - idle[first_pid][0]) / 1024 / per_actor
    return {
        "runs_per_actor": per_actor,
        "runs": len(run_ids),
        "live_in_pool": stats.get("runs"),
        "running_sampled": f"{statuses.count('running')}/{len(statuses)}",
        "hosts": len(mem),
        "start_s": start_s,
        "starts_per_s": len(run_ids) / start_s if start_s else 0.0,
        "start_p50_ms": c.percentile(latencies, 50) * 1000,
        "start_p99_ms": c.percentile(latencies, 99) * 1000,
        "rss_kb_per_run": (rss - idle_rss) / 1024 / max(len(run_ids), 1),
        "uss_kb_per_run": (uss - idle_uss) / 1024 / max(len(run_ids), 1),
        "rss_total_mb": rss / 2**20,
        "marginal_rss_kb_per_run_in_host": marginal_kb,
        "checkpoints": checkpoints,
        "cancelled": cancelled,
        "cancel_s": cancel_s,
    }


async def amain(args: argparse.Namespace) -> None:
    with c.simulator(LONG_TTFT_MS) as sim:
        iso = await isolated(sim, args.isolated) if args.isolated else None
        if iso:
            print(f"isolated done: {iso['runs']} runs", flush=True)
        pk = await packed(sim, args.packed, args.runs_per_actor, args.limit_s)
    print()
    if iso:
        print(f"runs_per_actor=1: {iso['runs']} live runs on {iso['hosts']} run-host processes")
        print(
            f"  start (incl. a new process when the warm one is taken): p50 "
            f"{iso['start_p50_ms']:.0f} ms, max {iso['start_max_ms']:.0f} ms; "
            f"pool {iso['pool']}; last run {iso['last_status']}"
        )
        print(
            f"  per run process: RSS p50 {iso['rss_mb_p50']:.1f} MB, "
            f"USS p50 {iso['uss_mb_p50']:.1f} MB; cancelled {iso['cancelled']} "
            f"in {iso['cancel_s']:.1f} s"
        )
    print(f"runs_per_actor={pk['runs_per_actor']}: {pk['runs']} live runs on {pk['hosts']} hosts")
    print(
        f"  pool says {pk['live_in_pool']} live; sampled statuses running "
        f"{pk['running_sampled']}; started in {pk['start_s']:.1f} s "
        f"({pk['starts_per_s']:.0f}/s, {IN_FLIGHT} starts in flight, "
        f"start p50 {pk['start_p50_ms']:.0f} ms, "
        f"p99 {pk['start_p99_ms']:.0f} ms)"
    )
    marginal = pk["marginal_rss_kb_per_run_in_host"]
    marginal_text = "n/a" if marginal is None else f"{marginal:.0f} KB"
    print(
        f"  run-host RSS growth per live run: {pk['rss_kb_per_run']:.0f} KB "
        f"(USS {pk['uss_kb_per_run']:.0f} KB; host processes included; total "
        f"{pk['rss_total_mb']:.0f} MB); inside one full host: {marginal_text} per run"
    )
    verdict = pk["runs"] >= 10_000 and pk["rss_kb_per_run"] <= 100
    print(
        f"  target >= 10,000 live runs at <= 100 KB each: {'met' if verdict else 'not met'} "
        f"({pk['runs']} runs, {pk['rss_kb_per_run']:.0f} KB each; "
        f"ratio to target size {pk['rss_kb_per_run'] / 100:.2f})"
    )
    print(f"  cancelled {pk['cancelled']} in {pk['cancel_s']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode, < 60 s")
    parser.add_argument("--isolated", type=int, default=None, help="runs at runs_per_actor=1")
    parser.add_argument("--packed", type=int, default=None, help="live runs in packed mode")
    parser.add_argument("--runs-per-actor", type=int, default=None, help="default: settings'")
    parser.add_argument("--limit-s", type=float, default=600.0, help="stop starting after this")
    args = parser.parse_args()
    if args.isolated is None:
        args.isolated = 0 if args.quick else 20
    if args.packed is None:
        args.packed = 1000 if args.quick else 10_000
    c.header("live runs per node", args)
    asyncio.run(asyncio.wait_for(amain(args), timeout=1800))


if __name__ == "__main__":
    main()
