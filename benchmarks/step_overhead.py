"""Added latency and server CPU per agent step: rayfleet (HTTP + SSE, and the handle API)
against the in-process floor, side by side in one run.

Floor: execute_run + ModelRouter + an in-process ToolPool in this process, no Ray, talking to
the same standalone simulator (ttft 200 ms). rayfleet: the `support` agent through the Serve
proxy with SSE. Same five-step input (four tool calls, then an answer).

    added latency per step = (rayfleet run time - floor run time) / steps   (at p50 and p99)
    server CPU per step    = CPU of our Ray's processes (gcs, raylet, workers) / steps
    floor CPU per step     = CPU of the floor process / steps

The state backend (`--state sqlite|postgresql`): SQLite files (the embedded default) or a
private PostgreSQL server with fsync on; "state" in the by-process figures is that server.

Usage: .venv/bin/python benchmarks/step_overhead.py [--quick] [--runs N] [--concurrency C]
       [--state sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c


async def floor_phase(sim: c.Simulator, runs: int, concurrency: int) -> dict[str, Any]:
    floor = c.Floor(sim)
    try:
        await c.bounded(2, 2, lambda i: floor.run(c.FIVE_STEP_INPUT))  # warm the pool
        cpu0, wall0 = c.own_cpu_s(), time.perf_counter()
        results = await c.bounded(runs, concurrency, lambda i: floor.run(c.FIVE_STEP_INPUT))
        cpu, wall = c.own_cpu_s() - cpu0, time.perf_counter() - wall0
    finally:
        await floor.aclose()
    return _summarise("floor (in-process)", results, cpu, {"floor process": cpu}, wall)


async def http_phase(fleet: c.Rayfleet, runs: int, concurrency: int) -> dict[str, Any]:
    async with c.http_session(concurrency * 2) as session:

        async def one(i: int) -> tuple[float, int, str]:
            return await c.sse_run(session, fleet, "support", c.FIVE_STEP_INPUT)

        await c.bounded(4, 2, one)  # warm: runtime actors, connections, imports
        before = c.CpuSnapshot.take(fleet.exclude_pids)
        wall0 = time.perf_counter()
        results = await c.bounded(runs, concurrency, one)
        wall = time.perf_counter() - wall0
        cpu, by_kind = c.CpuSnapshot.take(fleet.exclude_pids).since(before)
    return _summarise("rayfleet HTTP+SSE", results, cpu, by_kind, wall)


async def handle_phase(fleet: c.Rayfleet, runs: int, concurrency: int) -> dict[str, Any]:
    handle = fleet.handle().options(stream=True)

    async def one(i: int) -> tuple[float, int, str]:
        started = time.perf_counter()
        async for event in handle.stream_run.remote("support", c.FIVE_STEP_INPUT):
            if event.kind in c.TERMINAL_KINDS:
                return time.perf_counter() - started, int(event.steps), event.kind
        raise RuntimeError("handle stream ended without a terminal event")

    await c.bounded(4, 2, one)
    before = c.CpuSnapshot.take(fleet.exclude_pids)
    wall0 = time.perf_counter()
    results = await c.bounded(runs, concurrency, one)
    wall = time.perf_counter() - wall0
    cpu, by_kind = c.CpuSnapshot.take(fleet.exclude_pids).since(before)
    return _summarise("rayfleet handle (driver)", results, cpu, by_kind, wall)


def _summarise(
    name: str,
    results: list[tuple[float, int, str]],
    cpu_s: float,
    by_kind: dict[str, float],
    wall_s: float,
) -> dict[str, Any]:
    bad = [r for r in results if r[2] != "run.completed" or r[1] != 5]
    if bad:
        print(f"  WARNING {name}: {len(bad)} runs not completed in 5 steps: {bad[:3]}")
    steps = sum(r[1] for r in results) or 1
    times = [r[0] for r in results]
    return {
        "name": name,
        "runs": len(results),
        "steps": steps,
        "p50_s": c.percentile(times, 50),
        "p99_s": c.percentile(times, 99),
        "cpu_ms_per_step": cpu_s * 1000 / steps,
        "cpu_by_kind_ms_per_step": {k: v * 1000 / steps for k, v in sorted(by_kind.items())},
        "wall_s": wall_s,
    }


def report(floor: dict[str, Any], others: list[dict[str, Any]]) -> None:
    f = floor
    print(
        f"\n{f['name']}: {f['runs']} runs, run time p50 {f['p50_s'] * 1000:.1f} ms "
        f"p99 {f['p99_s'] * 1000:.1f} ms; CPU {f['cpu_ms_per_step']:.3f} ms/step"
    )
    for o in others:
        steps_per_run = o["steps"] / o["runs"]
        added50 = (o["p50_s"] - f["p50_s"]) * 1000 / steps_per_run
        added99 = (o["p99_s"] - f["p99_s"]) * 1000 / steps_per_run
        cpu_ratio = c.ratio(o["cpu_ms_per_step"], f["cpu_ms_per_step"])
        print(
            f"{o['name']}: {o['runs']} runs, run time p50 {o['p50_s'] * 1000:.1f} ms "
            f"p99 {o['p99_s'] * 1000:.1f} ms"
        )
        print(
            f"  added latency per step: p50 {added50:.2f} ms, p99 {added99:.2f} ms "
            f"(target p50 <= 1 ms, p99 <= 5 ms)"
        )
        print(
            f"  server CPU per step: {o['cpu_ms_per_step']:.3f} ms = {cpu_ratio:.1f}x the floor "
            f"({f['cpu_ms_per_step']:.3f} ms) (target <= 3x)"
        )
        parts = ", ".join(f"{k} {v:.3f}" for k, v in o["cpu_by_kind_ms_per_step"].items())
        print(f"  by process (ms/step): {parts}")


async def amain(args: argparse.Namespace) -> None:
    with c.simulator(args.ttft_ms) as sim:
        floor = await floor_phase(sim, args.runs, args.concurrency)
        print(f"floor done: {floor['runs']} runs in {floor['wall_s']:.1f} s", flush=True)
        sim_cpu0 = sim.cpu_s()
        with c.state_server(args.state) as backend:
            print(f"state: {backend}", flush=True)
            others = await rayfleet_phases(sim, args)
        print(f"(simulator process CPU during rayfleet phases: {sim.cpu_s() - sim_cpu0:.1f} s)")
    report(floor, others)


async def rayfleet_phases(sim: c.Simulator, args: argparse.Namespace) -> list[dict[str, Any]]:
    async with c.rayfleet(c.app_config(sim), sim) as fleet:
        others = [await http_phase(fleet, args.runs, args.concurrency)]
        print(f"HTTP done in {others[0]['wall_s']:.1f} s", flush=True)
        if not args.no_handle:
            others.append(await handle_phase(fleet, args.runs, args.concurrency))
    return others


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode, < 60 s")
    parser.add_argument("--runs", type=int, default=None, help="runs per phase (default 60)")
    parser.add_argument("--concurrency", type=int, default=4, help="runs in flight per phase")
    parser.add_argument("--ttft-ms", type=float, default=200.0)
    parser.add_argument("--no-handle", action="store_true", help="skip the handle-API phase")
    parser.add_argument(
        "--state", choices=("sqlite", "postgresql"), default="sqlite", help="state backend"
    )
    args = parser.parse_args()
    if args.runs is None:
        args.runs = 8 if args.quick else 60
    c.header("step overhead", args)
    asyncio.run(asyncio.wait_for(amain(args), timeout=900))


if __name__ == "__main__":
    main()
