"""Five-step runs per second through HTTP + SSE, against the in-process floor, and the
time-to-first-token overhead of an SSE client against the provider's own stream.

Throughput: N closed-loop clients (each starts its next run when the last ends) for a warm-up
and then a measured window; a run counts when its terminal event arrives in the window. The
floor runs the same loop in this process (execute_run + ModelRouter + ToolPool, no Ray).
CPU is read at the measured window's edges (floor: this process; rayfleet: our Ray's
processes, by process) and shown as a share of all the cores and per run.

TTFT: sequential samples, alternating: (a) POST straight to the simulator's streaming chat
endpoint, time to the first chunk carrying text; (b) POST /v1/agents/echo/runs with SSE
(an agent without tools, so step 1 streams text), time to the first `model.delta`, and to
`run.created` (POST -> run.created). TTFT overhead = (b) - (a), paired per sample.

Usage: .venv/bin/python benchmarks/throughput.py [--quick] [--clients N] [--duration S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c


async def closed_loop(
    clients: int,
    warmup_s: float,
    duration_s: float,
    one: Callable[[], Awaitable[Any]],
    probe: Callable[[], Any] = lambda: None,
) -> dict[str, Any]:
    """`clients` loops calling one() until the window ends; counts results ending inside it.
    probe() is called at the window's start and end (CPU snapshots)."""
    start = time.perf_counter()
    probes: list[Any] = []

    async def prober() -> None:
        await asyncio.sleep(warmup_s)
        probes.append(probe())
        await asyncio.sleep(duration_s)
        probes.append(probe())

    window = (start + warmup_s, start + warmup_s + duration_s)
    done: list[float] = []
    latencies: list[float] = []
    failed: list[str] = []

    async def client() -> None:
        while time.perf_counter() < window[1]:
            try:
                took, steps, kind = await one()
            except Exception as exc:
                failed.append(repr(exc)[:200])
                await asyncio.sleep(0.1)
                continue
            now = time.perf_counter()
            if kind != "run.completed" or steps != 5:
                failed.append(f"{kind} after {steps} steps")
            elif window[0] <= now <= window[1]:
                done.append(now)
                latencies.append(took)

    await asyncio.sleep(0)
    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    tasks.append(asyncio.create_task(prober()))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=warmup_s + duration_s + 180)
    return {
        "runs_per_s": len(done) / duration_s,
        "runs": len(done),
        "failed": failed,
        "p50_s": c.percentile(latencies, 50),
        "probes": probes,
    }


async def floor_throughput(sim: c.Simulator, args: argparse.Namespace) -> dict[str, Any]:
    floor = c.Floor(sim)
    try:
        result = await closed_loop(
            args.clients,
            args.warmup,
            args.duration,
            lambda: floor.run(c.FIVE_STEP_INPUT),
            lambda: (c.own_cpu_s(), sim.cpu_s(), time.perf_counter()),
        )
        (cpu0, sim0, t0), (cpu1, sim1, t1) = result["probes"]
        result["cpu_s"], result["sim_cpu_s"] = cpu1 - cpu0, sim1 - sim0
        result["window_s"] = t1 - t0
    finally:
        await floor.aclose()
    return result


async def http_throughput(
    fleet: c.Rayfleet, sim: c.Simulator, args: argparse.Namespace
) -> dict[str, Any]:
    async with c.http_session(args.clients + 10) as session:
        # Warm the runtime (pool, tool pool, run hosts, connections) before the load starts.
        await c.bounded(4, 2, lambda i: c.sse_run(session, fleet, "support", c.FIVE_STEP_INPUT))
        result = await closed_loop(
            args.clients,
            args.warmup,
            args.duration,
            lambda: c.sse_run(session, fleet, "support", c.FIVE_STEP_INPUT),
            # CPU is read at the measured window's edges, like the floor's: not over the
            # warm-up or the drain after the window.
            lambda: (
                c.CpuSnapshot.take(fleet.exclude_pids),
                sim.cpu_s(),
                c.own_cpu_s(),
                time.perf_counter(),
            ),
        )
    (before, sim0, client0, t0), (after, sim1, client1, t1) = result["probes"]
    result["cpu_s"], result["by_kind"] = after.since(before)
    result["sim_cpu_s"], result["client_cpu_s"] = sim1 - sim0, client1 - client0
    result["window_s"] = t1 - t0
    return result


async def ttft(fleet: c.Rayfleet, sim: c.Simulator, samples: int) -> tuple[list[float], ...]:
    text = "Say hello to the benchmark."
    direct_body = {
        "model": "sim-strong",
        "stream": True,
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": text},
        ],
    }
    direct: list[float] = []
    via: list[float] = []
    created: list[float] = []
    async with c.http_session(4) as session:

        async def direct_once() -> float:
            started = time.perf_counter()
            async with session.post(f"{sim.base_url}/v1/chat/completions", json=direct_body) as r:
                async for raw in r.content:
                    line = raw.decode().strip()
                    if not line.startswith("data:") or line.endswith("[DONE]"):
                        continue
                    choices = json.loads(line[5:]).get("choices") or [{}]
                    if choices[0].get("delta", {}).get("content"):
                        elapsed = time.perf_counter() - started
                        break
                else:
                    raise RuntimeError("the simulator stream carried no text")
                async for _ in r.content:  # drain so the connection is reused
                    pass
            return elapsed

        async def via_once() -> float:
            started = time.perf_counter()
            first: float | None = None
            async for kind, _ in c.sse_events(session, c.run_url(fleet, "echo"), {"input": text}):
                if kind == "run.created":
                    created.append(time.perf_counter() - started)
                if kind == "model.delta" and first is None:
                    first = time.perf_counter() - started
            if first is None:
                raise RuntimeError("the run streamed no model.delta")
            return first

        for _ in range(2):  # warm both paths
            await direct_once()
            await via_once()
        for _ in range(samples):
            direct.append(await direct_once())
            via.append(await via_once())
    del created[:2]  # the warm-up runs
    return direct, via, created


async def amain(args: argparse.Namespace) -> None:
    with c.simulator(args.ttft_ms) as sim:
        floor = await floor_throughput(sim, args)
        print(f"floor done: {floor['runs_per_s']:.1f} runs/s", flush=True)
        config = c.app_config(sim, agents=(c.SUPPORT_AGENT, c.ECHO_AGENT))
        async with c.rayfleet(config, sim) as fleet:
            http = await http_throughput(fleet, sim, args)
            print(f"HTTP done: {http['runs_per_s']:.1f} runs/s", flush=True)
            direct, via, created = await ttft(fleet, sim, args.ttft_samples)
    report(args, floor, http, direct, via, created)


def report(
    args: argparse.Namespace,
    floor: dict[str, Any],
    http: dict[str, Any],
    direct: list[float],
    via: list[float],
    created: list[float],
) -> None:
    fd, hd = floor["window_s"], http["window_s"]
    print(
        f"\nfive-step runs/s, {args.clients} runs in flight (closed-loop clients), "
        f"{args.warmup:g} s warm-up, {args.duration:g} s window (measured: floor {fd:.1f} s, "
        f"rayfleet {hd:.1f} s), simulator ttft {args.ttft_ms:g} ms"
    )
    floor_cpu_run = c.ratio(floor["cpu_s"] * 1000, floor["runs"])
    http_cpu_run = c.ratio(http["cpu_s"] * 1000, http["runs"])
    print(
        f"  floor (in-process):  {floor['runs_per_s']:.1f} runs/s, run time p50 "
        f"{floor['p50_s']:.2f} s; floor process CPU {c.cpu_share(floor['cpu_s'], fd)} "
        f"= {floor_cpu_run:.1f} ms/run, simulator {c.cpu_share(floor['sim_cpu_s'], fd)}; "
        f"failures {len(floor['failed'])}"
    )
    print(
        f"  rayfleet HTTP+SSE:   {http['runs_per_s']:.1f} runs/s, run time p50 "
        f"{http['p50_s']:.2f} s; server CPU {c.cpu_share(http['cpu_s'], hd)} "
        f"= {http_cpu_run:.1f} ms/run, simulator {c.cpu_share(http['sim_cpu_s'], hd)}, "
        f"load client {c.cpu_share(http['client_cpu_s'], hd)}; failures {len(http['failed'])}"
    )
    if http["failed"] or floor["failed"]:
        print(f"  first failures: {(http['failed'] or floor['failed'])[:3]}")
    print(
        f"  ratio rayfleet/floor: runs/s {c.ratio(http['runs_per_s'], floor['runs_per_s']):.2f}x "
        f"(target >= 1.0x), CPU per run {c.ratio(http_cpu_run, floor_cpu_run):.1f}x"
    )
    per_run = {k: c.ratio(v * 1000, http["runs"]) for k, v in http["by_kind"].items()}
    print(c.by_process_table({"rayfleet HTTP": per_run}, "ms/run"))

    ms = {"direct": [1000 * v for v in direct], "via": [1000 * v for v in via]}
    created_ms = [1000 * v for v in created]
    overhead = [b - a for a, b in zip(ms["direct"], ms["via"], strict=True)]
    print(f"\ntime to first token, {len(direct)} samples each, 1 in flight (alternating)")
    for name, label in (("direct", "direct to simulator"), ("via", "rayfleet SSE")):
        print(
            f"  {label + ':':<21}p50 {c.percentile(ms[name], 50):.1f} ms  "
            f"p99 {c.percentile(ms[name], 99):.1f} ms"
        )
    print(
        f"  TTFT overhead (paired, SSE client - simulator's own stream): "
        f"p50 {c.percentile(overhead, 50):.1f} ms, p99 {c.percentile(overhead, 99):.1f} ms "
        f"(target p50 <= 5 ms)"
    )
    print(
        f"  POST -> run.created at the SSE client: p50 {c.percentile(created_ms, 50):.1f} ms, "
        f"p99 {c.percentile(created_ms, 99):.1f} ms (target p50 <= 3 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode, < 60 s")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (400)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds (30)")
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds (40)")
    parser.add_argument("--ttft-samples", type=int, default=None, help="TTFT samples (50)")
    parser.add_argument("--ttft-ms", type=float, default=200.0)
    args = parser.parse_args()
    quick = args.quick
    args.clients = args.clients or (32 if quick else 400)
    args.duration = args.duration or (5.0 if quick else 30.0)
    # Long enough for a saturated closed loop to reach its steady state (runs last seconds).
    args.warmup = args.warmup if args.warmup is not None else (5.0 if quick else 40.0)
    args.ttft_samples = args.ttft_samples or (5 if quick else 50)
    c.header("throughput and time to first token", args)
    asyncio.run(asyncio.wait_for(amain(args), timeout=900))


if __name__ == "__main__":
    main()
