"""Added latency and server CPU per agent step: rayfleet (HTTP + SSE, and the handle API)
against the in-process floor, side by side in one run, each at the same number of runs in
flight as its floor.

Floor: execute_run + ModelRouter + an in-process ToolPool in this process, no Ray, talking to
the same standalone simulator (ttft 200 ms). rayfleet: the `support` agent through the Serve
proxy with SSE. Same five-step input (four tool calls, then an answer).

Two pairs of phases, for the two targets of issue 11:

    latency: 8 runs in flight (--concurrency): floor vs rayfleet HTTP+SSE (and the handle API)
        added latency per step = (rayfleet run time - floor run time) / steps  (p50 and p99)
        target: p50 <= 2 ms, p99 <= 8 ms
    CPU: 32 runs in flight (--cpu-concurrency): floor vs rayfleet HTTP+SSE
        server CPU per step = CPU of our Ray's processes (gcs, raylet, workers) / steps
        floor CPU per step  = CPU of the floor process / steps
        target: server CPU per step <= 2.5x the floor's

Both pairs print both figures; the target applies where it is stated.

The state backend (`--state sqlite|postgresql`): SQLite files (the embedded default) or a
private PostgreSQL server with fsync on; "postgresql" in the by-process figures is that server.

Usage: .venv/bin/python benchmarks/step_overhead.py [--quick] [--runs N] [--concurrency C]
       [--cpu-runs N] [--cpu-concurrency C] [--no-handle] [--state sqlite|postgresql]
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

LATENCY_TARGET = "target p50 <= 2 ms, p99 <= 8 ms at 8 in flight"
CPU_TARGET = "target <= 2.5x at >= 32 in flight"


async def floor_phase(sim: c.Simulator, runs: int, concurrency: int) -> dict[str, Any]:
    floor = c.Floor(sim)
    try:
        # Warm the connection pool up to the phase's concurrency.
        await c.bounded(concurrency, concurrency, lambda i: floor.run(c.FIVE_STEP_INPUT))
        cpu0, wall0 = c.own_cpu_s(), time.perf_counter()
        results = await c.bounded(runs, concurrency, lambda i: floor.run(c.FIVE_STEP_INPUT))
        cpu, wall = c.own_cpu_s() - cpu0, time.perf_counter() - wall0
    finally:
        await floor.aclose()
    return _summarise("floor (in-process)", concurrency, results, cpu, {"floor": cpu}, wall)


async def http_phase(fleet: c.Rayfleet, runs: int, concurrency: int) -> dict[str, Any]:
    async with c.http_session(concurrency * 2) as session:

        async def one(i: int) -> tuple[float, int, str]:
            return await c.sse_run(session, fleet, "support", c.FIVE_STEP_INPUT)

        # Warm at the phase's concurrency: runtime actors, run hosts, connections, imports.
        await c.bounded(concurrency, concurrency, one)
        before = c.CpuSnapshot.take(fleet.exclude_pids)
        wall0 = time.perf_counter()
        results = await c.bounded(runs, concurrency, one)
        wall = time.perf_counter() - wall0
        cpu, by_kind = c.CpuSnapshot.take(fleet.exclude_pids).since(before)
    return _summarise("rayfleet HTTP+SSE", concurrency, results, cpu, by_kind, wall)


async def handle_phase(fleet: c.Rayfleet, runs: int, concurrency: int) -> dict[str, Any]:
    handle = fleet.handle().options(stream=True)

    async def one(i: int) -> tuple[float, int, str]:
        started = time.perf_counter()
        async for event in handle.stream_run.remote("support", c.FIVE_STEP_INPUT):
            if event.kind in c.TERMINAL_KINDS:
                return time.perf_counter() - started, int(event.steps), event.kind
        raise RuntimeError("handle stream ended without a terminal event")

    await c.bounded(concurrency, concurrency, one)
    before = c.CpuSnapshot.take(fleet.exclude_pids)
    wall0 = time.perf_counter()
    results = await c.bounded(runs, concurrency, one)
    wall = time.perf_counter() - wall0
    cpu, by_kind = c.CpuSnapshot.take(fleet.exclude_pids).since(before)
    return _summarise("rayfleet handle (driver)", concurrency, results, cpu, by_kind, wall)


def _summarise(
    name: str,
    in_flight: int,
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
        "in_flight": in_flight,
        "runs": len(results),
        "steps": steps,
        "p50_s": c.percentile(times, 50),
        "p99_s": c.percentile(times, 99),
        "cpu_ms_per_step": cpu_s * 1000 / steps,
        "cpu_by_kind_ms_per_step": {k: v * 1000 / steps for k, v in sorted(by_kind.items())},
        "wall_s": wall_s,
    }


def report(pairs: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
    """Each pair: a floor and the rayfleet phases at the same number of runs in flight."""
    tables: dict[str, dict[str, float]] = {}
    for i, (f, others) in enumerate(pairs):
        n = f["in_flight"]
        print(f"\n-- {n} runs in flight ({'latency' if i == 0 else 'CPU'} target) --")
        print(
            f"{f['name']}: {f['runs']} runs, run time p50 {f['p50_s'] * 1000:.1f} ms "
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
                f"  added latency per step: p50 {added50:.2f} ms, p99 {added99:.2f} ms"
                + (f" ({LATENCY_TARGET})" if i == 0 else "")
            )
            print(
                f"  server CPU per step: {o['cpu_ms_per_step']:.3f} ms = {cpu_ratio:.1f}x the "
                f"floor's {f['cpu_ms_per_step']:.3f} ms" + (f" ({CPU_TARGET})" if i > 0 else "")
            )
            tables[f"{o['name'].split()[1]} @{n}"] = o["cpu_by_kind_ms_per_step"]
        tables[f"floor @{n}"] = f["cpu_by_kind_ms_per_step"]
    print()
    print(c.by_process_table(tables, "ms/step", top=16))


async def amain(args: argparse.Namespace) -> None:
    in_flight = [args.concurrency] + ([args.cpu_concurrency] if args.cpu_concurrency else [])
    runs = {args.concurrency: args.runs, args.cpu_concurrency: args.cpu_runs}
    with c.simulator(args.ttft_ms) as sim:
        floors = []
        for n in in_flight:
            floors.append(await floor_phase(sim, runs[n], n))
            print(f"floor, {n} in flight: {runs[n]} runs in {floors[-1]['wall_s']:.1f} s")
        sim_cpu0 = sim.cpu_s()
        with c.state_server(args.state) as backend:
            print(f"state: {backend}", flush=True)
            others = await rayfleet_phases(sim, args, in_flight, runs)
        print(f"(simulator process CPU during rayfleet phases: {sim.cpu_s() - sim_cpu0:.1f} s)")
    report(list(zip(floors, others, strict=True)))


async def rayfleet_phases(
    sim: c.Simulator, args: argparse.Namespace, in_flight: list[int], runs: dict[int, int]
) -> list[list[dict[str, Any]]]:
    """rayfleet's phases at each concurrency of `in_flight`; the handle API at the first."""
    by_concurrency: list[list[dict[str, Any]]] = []
    async with c.rayfleet(c.app_config(sim), sim) as fleet:
        for n in in_flight:
            phases = [await http_phase(fleet, runs[n], n)]
            print(f"HTTP, {n} in flight: {runs[n]} runs in {phases[0]['wall_s']:.1f} s", flush=True)
            if not args.no_handle and n == in_flight[0]:
                phases.append(await handle_phase(fleet, runs[n], n))
            by_concurrency.append(phases)
    return by_concurrency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode, ~1-2 min")
    parser.add_argument("--runs", type=int, default=None, help="runs per latency phase (64)")
    parser.add_argument("--concurrency", type=int, default=8, help="in flight, latency phases")
    parser.add_argument("--cpu-runs", type=int, default=None, help="runs per CPU phase (160)")
    parser.add_argument(
        "--cpu-concurrency", type=int, default=32, help="in flight, CPU phases (0: skip them)"
    )
    parser.add_argument("--ttft-ms", type=float, default=200.0)
    parser.add_argument("--no-handle", action="store_true", help="skip the handle-API phase")
    parser.add_argument(
        "--state", choices=("sqlite", "postgresql"), default="sqlite", help="state backend"
    )
    args = parser.parse_args()
    if args.cpu_concurrency == args.concurrency:
        parser.error("--cpu-concurrency must differ from --concurrency (or be 0 to skip)")
    if args.runs is None:
        args.runs = args.concurrency if args.quick else 64
    if args.cpu_runs is None:
        args.cpu_runs = args.cpu_concurrency if args.quick else 160
    c.header("step overhead", args)
    asyncio.run(asyncio.wait_for(amain(args), timeout=1200))


if __name__ == "__main__":
    main()
