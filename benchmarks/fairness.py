"""Tenant fairness (issue 4): does one tenant hammering past its limits raise another
tenant's latency? Both phases run in the same Ray + Serve instance, one after the other.

Two tenants, each with its own API key (`Authorization: Bearer <key>`):
  quiet  unlimited; N closed-loop clients running five-step `support` runs over HTTP + SSE
  noisy  requests_per_min=R (600 by default); open-loop POSTs (no SSE: 202 or 429) of
         one-step `echo` runs

Phases (each a window of D seconds of quiet runs; quiet's load is the same in each):
  alone       quiet only
  noisy 3x    noisy at 3x its limit (R/20 requests/s); its token bucket is drained first
              (it starts full: R runs), so the limit refuses ~2/3 of noisy's requests
  noisy 0.9x  noisy just under its limit: its admitted work alone, (almost) no refusals
  alone again quiet only (drift check on a shared machine)

For each quiet run the time is split by hop, from the run's own events (`ts`, the
`latency_ms` of model calls and tool calls) and the client's clock (same machine):
  admit+start  POST -> run.created recorded (proxy, gateway, limiter, agent deployment,
               run pool, run host, run store)
  model        sum of the model calls' latency_ms (includes the simulator's ttft)
  tools        sum of the tool calls' latency_ms
  loop         run.created -> terminal event recorded, minus model and tools: the run
               host's loop between events (event log, store writes, scheduling)
  relay        terminal event recorded -> received by the client (run host -> gateway ->
               proxy -> SSE)
  (these five add up to the run time; `stream open`, run.created recorded -> received by
  the client, overlaps the run and is shown on its own)
Server CPU per phase is split by process kind, as in step_overhead.py.

Usage: .venv/bin/python benchmarks/fairness.py [--quick] [--duration S] [--clients N]
           [--noisy-rpm R] [--factor F] [--ttft-ms T]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

QUIET_KEY = "rf-bench-quiet-key"
NOISY_KEY = "rf-bench-noisy-key"
NOISY_INPUT = "Say hello to the benchmark."
HOPS = ("admit+start", "model", "tools", "loop", "relay", "stream open")
MAX_NOISY_IN_FLIGHT = 256  # the open-loop generator never holds more requests than this


def tenancy(noisy_rpm: int) -> Any:
    from actors.limiter import TenantLimits
    from serve_app.tenancy import TenancyConfig, TenantConfig, digest

    return TenancyConfig(
        tenants=(
            TenantConfig(id="quiet", api_key_sha256=(digest(QUIET_KEY),)),
            TenantConfig(
                id="noisy",
                api_key_sha256=(digest(NOISY_KEY),),
                limits=TenantLimits(requests_per_min=noisy_rpm),
            ),
        ),
        anonymous_tenant=None,
    )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- quiet: closed-loop five-step runs, timed by hop ----------------------------------------


@dataclass
class QuietRun:
    total_s: float
    hops: dict[str, float]
    kind: str
    steps: int


async def quiet_run(session: Any, fleet: c.Rayfleet) -> QuietRun:
    posted = time.time()
    created_ts = created_rx = 0.0
    model_s = tools_s = 0.0
    async for kind, data in c.sse_events(
        session,
        c.run_url(fleet, "support"),
        {"input": c.FIVE_STEP_INPUT},
        headers=auth(QUIET_KEY),
    ):
        now = time.time()
        event = json.loads(data)
        if kind == "run.created":
            created_ts, created_rx = float(event["ts"]), now
        elif kind == "model.completed":
            model_s += float(event["latency_ms"]) / 1000
        elif kind == "tool.result":
            tools_s += float(event["latency_ms"]) / 1000
        elif kind in c.TERMINAL_KINDS:
            total, ended_ts = now - posted, float(event["ts"])
            hops = {
                "admit+start": created_ts - posted,
                "model": model_s,
                "tools": tools_s,
                "loop": (ended_ts - created_ts) - model_s - tools_s,
                "relay": now - ended_ts,
                # Overlaps the run (it goes on while the stream opens): not part of the sum.
                "stream open": created_rx - created_ts,
            }
            return QuietRun(total, hops, kind, int(event.get("steps", 0)))
    raise RuntimeError("SSE stream ended without a terminal event")


async def quiet_load(session: Any, fleet: c.Rayfleet, clients: int, duration: float) -> list[Any]:
    """`clients` closed loops; a run counts if it started inside the window."""
    deadline = time.monotonic() + duration
    runs: list[QuietRun] = []

    async def client() -> None:
        while time.monotonic() < deadline:
            runs.append(await quiet_run(session, fleet))

    await asyncio.gather(*(client() for _ in range(clients)))
    return runs


# -- noisy: open-loop POSTs, 202 (admitted, the run goes on) or 429 ------------------------


@dataclass
class NoisyStats:
    sent: int = 0
    skipped: int = 0  # the generator's in-flight cap was hit: not sent
    status: Counter[int] = field(default_factory=Counter)
    admitted_s: list[float] = field(default_factory=list)
    refused_s: list[float] = field(default_factory=list)
    retry_after: Counter[str] = field(default_factory=Counter)
    last_run: str | None = None


async def noisy_post(session: Any, fleet: c.Rayfleet, stats: NoisyStats) -> int:
    import aiohttp

    started = time.perf_counter()
    stats.sent += 1
    try:
        async with session.post(
            c.run_url(fleet, "echo"),
            json={"input": NOISY_INPUT},
            headers=auth(NOISY_KEY),
            timeout=aiohttp.ClientTimeout(total=60),
        ) as resp:
            body = await resp.read()
            status = resp.status
            if status == 202:
                stats.last_run = json.loads(body)["run_id"]
            elif status == 429:
                stats.retry_after[resp.headers.get("Retry-After", "-")] += 1
    except (aiohttp.ClientError, TimeoutError):
        status = -1
    elapsed = time.perf_counter() - started
    stats.status[status] += 1
    (stats.admitted_s if status == 202 else stats.refused_s).append(elapsed)
    return status


async def noisy_load(
    session: Any, fleet: c.Rayfleet, rate: float, duration: float, stats: NoisyStats
) -> None:
    """Open loop: one POST every 1/rate s for `duration` s (rate * duration at most)."""
    in_flight: set[asyncio.Task[int]] = set()
    t0 = time.monotonic()
    for i in range(int(rate * duration)):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= MAX_NOISY_IN_FLIGHT:
            stats.skipped += 1
            continue
        task = asyncio.create_task(noisy_post(session, fleet, stats))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=60)


async def drain_bucket(session: Any, fleet: c.Rayfleet, rpm: int) -> NoisyStats:
    """Empty noisy's token bucket (it starts full: `rpm` runs) with a burst, then wait for
    the burst's runs to end, so the measured phase starts with noisy at its limit."""
    stats = NoisyStats()
    refused = False

    async def one(i: int) -> None:
        nonlocal refused
        if not refused and await noisy_post(session, fleet, stats) == 429:
            refused = True

    await c.bounded(rpm * 3, 32, one)  # bounded: it refills at rpm/60 per s meanwhile
    await wait_finished(session, fleet, stats.last_run)
    return stats


async def wait_finished(session: Any, fleet: c.Rayfleet, run_id: str | None) -> None:
    if run_id is None:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        url = f"{fleet.base_url}/v1/runs/{run_id}"
        async with session.get(url, headers=auth(NOISY_KEY)) as resp:
            if resp.status == 200 and (await resp.json()).get("status") != "running":
                return
        await asyncio.sleep(0.2)


# -- phases ------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    runs: list[QuietRun]
    window_s: float
    cpu_s: float
    by_kind: dict[str, float]
    sim_cpu_s: float
    client_cpu_s: float
    machine_cpu_s: float  # every process on the machine (/proc/stat), to see other users
    noisy: NoisyStats | None = None
    noisy_rate: float = 0.0


async def phase(
    name: str,
    fleet: c.Rayfleet,
    sim: c.Simulator,
    quiet: Any,
    noisy: Any,
    args: argparse.Namespace,
    noisy_rate: float = 0.0,
) -> Phase:
    stats = NoisyStats() if noisy_rate else None
    before, sim0, own0 = c.CpuSnapshot.take(fleet.exclude_pids), sim.cpu_s(), c.own_cpu_s()
    machine0 = machine_cpu_s()
    t0 = time.perf_counter()
    jobs = [quiet_load(quiet, fleet, args.clients, args.duration)]
    if stats is not None:
        # Noisy starts a moment before and ends after quiet's window (its tail is bounded).
        jobs.append(noisy_load(noisy, fleet, noisy_rate, args.duration + 2, stats))
    runs = (await asyncio.gather(*jobs))[0]
    window = time.perf_counter() - t0
    cpu, by_kind = c.CpuSnapshot.take(fleet.exclude_pids).since(before)
    sim_cpu, own_cpu = sim.cpu_s() - sim0, c.own_cpu_s() - own0
    result = Phase(
        name, runs, window, cpu, by_kind, sim_cpu, own_cpu, machine_cpu_s() - machine0, stats
    )
    result.noisy_rate = noisy_rate
    bad = Counter(r.kind for r in runs if r.kind != "run.completed" or r.steps != 5)
    print(
        f"  {name}: {len(runs)} quiet runs, p50 {ms(pct(runs, 50))}, "
        f"load average {os.getloadavg()[0]:.1f}"
        + (f"  (not 5-step completions: {dict(bad)})" if bad else "")
        + (f"; noisy {dict(stats.status)}" if stats else ""),
        flush=True,
    )
    return result


def machine_cpu_s() -> float:
    import psutil  # vendored by ray

    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system + times.irq + times.softirq)


def pct(runs: list[QuietRun], q: float, hop: str | None = None) -> float:
    return c.percentile([r.total_s if hop is None else r.hops[hop] for r in runs], q)


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


async def amain(args: argparse.Namespace) -> list[Phase]:
    limit_rate = args.noisy_rpm / 60
    with c.simulator(args.ttft_ms) as sim:
        config = c.app_config(
            sim, agents=(c.SUPPORT_AGENT, c.ECHO_AGENT), tenancy=tenancy(args.noisy_rpm)
        )
        async with (
            c.rayfleet(config, sim) as fleet,
            c.http_session(args.clients * 2) as quiet,
            c.http_session(MAX_NOISY_IN_FLIGHT) as noisy,
        ):
            # Warm both paths: runtime actors, both agent deployments, connections.
            await c.bounded(6, 3, lambda i: quiet_run(quiet, fleet))
            for _ in range(3):
                await noisy_post(noisy, fleet, NoisyStats())
            phases = [await phase("alone", fleet, sim, quiet, noisy, args)]
            t0 = time.perf_counter()
            drained = await drain_bucket(noisy, fleet, args.noisy_rpm)
            print(
                f"  drained noisy's bucket: {drained.status[202]} admitted, "
                f"{drained.status[429]} refused, {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            rate_hi, rate_lo = limit_rate * args.factor, limit_rate * 0.9
            for name, rate in ((f"noisy {args.factor:g}x", rate_hi), ("noisy 0.9x", rate_lo)):
                phases.append(await phase(name, fleet, sim, quiet, noisy, args, rate))
            phases.append(await phase("alone again", fleet, sim, quiet, noisy, args))
    return phases


def report(args: argparse.Namespace, phases: list[Phase]) -> None:
    base = phases[0]
    print(
        f"\nquiet: {args.clients} closed-loop clients, five-step `support` runs (HTTP + SSE), "
        f"{args.duration:g} s per phase; noisy: requests_per_min={args.noisy_rpm}, one-step "
        f"`echo` runs (POST -> 202/429); simulator ttft {args.ttft_ms:g} ms"
    )
    print(f"\n{'phase':<13}{'runs':>6}{'p50':>11}{'p99':>11}{'p50/alone':>11}{'p99/alone':>11}")
    for p in phases:
        p50, p99 = pct(p.runs, 50), pct(p.runs, 99)
        print(
            f"{p.name:<13}{len(p.runs):>6}{ms(p50):>11}{ms(p99):>11}"
            f"{c.ratio(p50, pct(base.runs, 50)):>10.2f}x{c.ratio(p99, pct(base.runs, 99)):>10.2f}x"
        )

    print("\nquiet run time by hop, p50 (ms; the first five add up per run, not their p50s)")
    print(f"{'phase':<13}" + "".join(f"{h:>13}" for h in HOPS))
    for p in phases:
        print(f"{p.name:<13}" + "".join(f"{pct(p.runs, 50, h) * 1000:>13.1f}" for h in HOPS))
    print("quiet run time by hop, p99 (ms)")
    for p in phases:
        print(f"{p.name:<13}" + "".join(f"{pct(p.runs, 99, h) * 1000:>13.1f}" for h in HOPS))

    print("\nnoisy (open loop, during each phase)")
    for p in phases:
        n = p.noisy
        if n is None:
            continue
        admitted, refused = n.status[202], n.status[429]
        others = {k: v for k, v in n.status.items() if k not in (202, 429)}
        print(
            f"  {p.name}: sent {n.sent} at {p.noisy_rate:.1f}/s (limit {args.noisy_rpm / 60:.1f}/s)"
            f": admitted {admitted}, refused 429 {refused}"
            + (f", other {others}" if others else "")
            + (f", not sent (in-flight cap) {n.skipped}" if n.skipped else "")
        )
        print(
            f"    POST -> 202 p50 {ms(c.percentile(n.admitted_s, 50))} "
            f"p99 {ms(c.percentile(n.admitted_s, 99))}; POST -> 429 p50 "
            f"{ms(c.percentile(n.refused_s, 50))} p99 {ms(c.percentile(n.refused_s, 99))}; "
            f"Retry-After {dict(n.retry_after)}"
        )

    print("\nserver CPU per phase (% of one core over the phase; 100% x cores = the machine)")
    print(
        c.by_process_table(
            {p.name: {k: v / p.window_s * 100 for k, v in p.by_kind.items()} for p in phases},
            "% of one core",
            top=8,
        )
    )
    rows = [("simulator", [p.sim_cpu_s for p in phases])]
    rows += [("this client + driver", [p.client_cpu_s for p in phases])]
    rows += [("machine (every process)", [p.machine_cpu_s for p in phases])]
    rows += [
        (
            "others (not this benchmark)",
            [p.machine_cpu_s - p.cpu_s - p.sim_cpu_s - p.client_cpu_s for p in phases],
        )
    ]
    for label, values in rows:
        cells = "".join(
            f"{v / p.window_s * 100:>15.0f}%" for v, p in zip(values, phases, strict=True)
        )
        print(f"{label:<26}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode (< 60 s)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--clients", type=int, default=5, help="quiet's closed-loop clients")
    parser.add_argument("--noisy-rpm", type=int, default=600, help="noisy's requests_per_min")
    parser.add_argument("--factor", type=float, default=3.0, help="noisy's rate / its limit")
    parser.add_argument("--ttft-ms", type=float, default=100.0, help="simulator time to 1st token")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.noisy_rpm = 2.0, 120
    c.header("fairness", args)
    started = time.perf_counter()
    phases = asyncio.run(amain(args))
    report(args, phases)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
