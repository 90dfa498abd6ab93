"""How long starting a run takes, and what it costs the server: POST -> answer.

Latency: sequential samples, alternating: (a) POST /v1/agents/echo/runs with JSON, time to
the 202 (the run id: `run.created` is durable by then); (b) the same POST with SSE, time to
the `run.created` event (the start plus the first read of the stream). One request in
flight, so this is the path's own latency, not queueing.

CPU: `--concurrency` closed-loop clients POST JSON starts for `--duration` seconds (the runs
then go on: echo runs take one model call of `--ttft-ms`); server CPU per start, by process.

Usage: .venv/bin/python benchmarks/run_start.py [--quick] [--samples N] [--concurrency C]
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

TEXT = "Say hello to the benchmark."


async def post_json(session: Any, fleet: c.Rayfleet) -> float:
    started = time.perf_counter()
    async with session.post(c.run_url(fleet, "echo"), json={"input": TEXT}) as resp:
        if resp.status != 202:
            raise RuntimeError(f"POST -> {resp.status}: {(await resp.text())[:300]}")
        await resp.read()
    return time.perf_counter() - started


async def post_sse(session: Any, fleet: c.Rayfleet) -> float:
    started = time.perf_counter()
    async for kind, _ in c.sse_events(session, c.run_url(fleet, "echo"), {"input": TEXT}):
        if kind == "run.created":
            return time.perf_counter() - started
    raise RuntimeError("the stream carried no run.created")


async def latency(fleet: c.Rayfleet, samples: int) -> tuple[list[float], list[float]]:
    plain: list[float] = []
    sse: list[float] = []
    async with c.http_session(4) as session:
        for _ in range(3):  # warm both paths (replicas' clients, the pool view, connections)
            await post_json(session, fleet)
            await post_sse(session, fleet)
        for _ in range(samples):
            plain.append(await post_json(session, fleet))
            sse.append(await post_sse(session, fleet))
    return plain, sse


async def cpu_per_start(
    fleet: c.Rayfleet, concurrency: int, duration_s: float
) -> tuple[int, float, dict[str, float]]:
    starts = 0
    async with c.http_session(concurrency + 4) as session:
        before = c.CpuSnapshot.take(fleet.exclude_pids)
        deadline = time.perf_counter() + duration_s

        async def client() -> None:
            nonlocal starts
            while time.perf_counter() < deadline:
                await post_json(session, fleet)
                starts += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
        cpu, by_kind = c.CpuSnapshot.take(fleet.exclude_pids).since(before)
    return starts, cpu, by_kind


async def amain(args: argparse.Namespace) -> None:
    with c.simulator(args.ttft_ms) as sim:
        config = c.app_config(sim, agents=(c.ECHO_AGENT,))
        async with c.rayfleet(config, sim) as fleet:
            plain, sse = await latency(fleet, args.samples)
            starts, cpu, by_kind = await cpu_per_start(fleet, args.concurrency, args.duration)
            # Let the runs started above end before Ray goes (no figures from here on).
            await asyncio.sleep(args.ttft_ms / 1000 + 1)
    ms = lambda values: [1000 * v for v in values]  # noqa: E731
    print(f"\nPOST -> run started, {len(plain)} sequential samples each (1 in flight)")
    for name, values in (("JSON 202 (run id)", ms(plain)), ("SSE run.created", ms(sse))):
        print(
            f"  {name:<18} p50 {c.percentile(values, 50):6.1f} ms  "
            f"p99 {c.percentile(values, 99):6.1f} ms  (target p50 <= 3 ms)"
        )
    print(
        f"\nserver CPU per start, {args.concurrency} clients POSTing for {args.duration:g} s: "
        f"{starts} starts ({starts / args.duration:.0f}/s), {1000 * cpu / max(starts, 1):.1f} ms"
    )
    top = sorted(by_kind.items(), key=lambda kv: -kv[1])[:8]
    print("  by process (ms/start): " + ", ".join(f"{k} {1000 * v / starts:.2f}" for k, v in top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode")
    parser.add_argument("--samples", type=int, default=None, help="latency samples (100)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients in the CPU phase")
    parser.add_argument("--duration", type=float, default=None, help="CPU phase seconds (10)")
    parser.add_argument("--ttft-ms", type=float, default=200.0)
    args = parser.parse_args()
    args.samples = args.samples or (10 if args.quick else 100)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    c.header("run start latency and CPU", args)
    asyncio.run(asyncio.wait_for(amain(args), timeout=900))


if __name__ == "__main__":
    main()
