"""MCP tool calls: rayfleet's long-lived session per server vs a new session per call (what
MCP gateways that open a client per request do), against one real MCP server, side by side.

Each phase makes `--calls` (400) calls of the server's read-only `lookup` tool with
`--concurrency` (16) in flight, in this process:

    session-per-call   every call opens an SDK client (streamable HTTP, its handshake),
                       calls the tool and closes it: the baseline
    rayfleet           every call goes through `McpSessions.call` (actors/mcp_sessions.py):
                       one session, owned by one task, shared by every call

The server is tests/mcp_server.py (the `mcp` SDK's own server under uvicorn) in its own
process; its CPU is not counted. Printed per phase (`--rounds` of each, alternating): calls/s,
latency p50/p99, this process's CPU per call and the HTTP requests the server received per
call (a new session costs its handshake); then the ratios rayfleet / session-per-call over all
rounds. No target is set for this in DESIGN.md.

Usage: .venv/bin/python benchmarks/mcp_calls.py [--quick] [--calls N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as c


@dataclass
class Phase:
    name: str
    latencies: list[float]
    seconds: float
    cpu_s: float
    requests: int
    """HTTP requests the server received during the phase."""

    @property
    def calls_per_s(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        p50 = c.percentile(self.latencies, 50) * 1000
        p99 = c.percentile(self.latencies, 99) * 1000
        per_call = self.cpu_s / len(self.latencies) * 1000
        http = self.requests / len(self.latencies)
        return (
            f"{self.name:<18} {self.calls_per_s:8.1f} calls/s   p50 {p50:7.2f} ms   "
            f"p99 {p99:7.2f} ms   client CPU {per_call:6.2f} ms/call   "
            f"{http:4.1f} HTTP requests/call"
        )


async def session_per_call(url: str, city: str) -> str:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types import TextContent

    async with (
        httpx2.AsyncClient(timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        result = await client.call_tool("lookup", {"city": city})
    return "".join(b.text for b in result.content if isinstance(b, TextContent))


async def measure(name: str, calls: int, concurrency: int, call: object, server: object) -> Phase:
    requests_before = len(server.auth())  # type: ignore[attr-defined]
    latencies: list[float] = []

    async def one(i: int) -> None:
        started = time.perf_counter()
        answer = await call(f"c{i}")  # type: ignore[operator]
        latencies.append(time.perf_counter() - started)
        if answer != f"weather in c{i}: sunny":
            raise AssertionError(f"{name}: unexpected answer {answer!r}")

    cpu_before, started = c.own_cpu_s(), time.perf_counter()
    await c.bounded(calls, concurrency, one)
    seconds, cpu_s = time.perf_counter() - started, c.own_cpu_s() - cpu_before
    requests = len(server.auth()) - requests_before  # type: ignore[attr-defined]
    return Phase(name, latencies, seconds, cpu_s, requests)


async def main(args: argparse.Namespace) -> None:
    from actors.mcp_sessions import McpSessions
    from agents.mcp import McpLocator
    from tests.mcp_server import McpServerProcess

    c.header("MCP tool calls: one session per server vs one per call", args)
    with tempfile.TemporaryDirectory() as state:
        server = McpServerProcess(Path(state))
        server.start()
        sessions = McpSessions()
        locator = McpLocator(url=server.url, server="bench", tool="lookup")
        try:

            async def pooled(city: str) -> str:
                answer: str = await sessions.call(locator, {"city": city}, None)
                return answer

            # Warm both paths (imports, the first connect) outside the measured windows.
            await session_per_call(server.url, "c0")
            await pooled("c0")
            print(f"{args.calls} calls of `lookup`, {args.concurrency} in flight", flush=True)
            phases = []
            for _ in range(args.rounds):  # alternating, so drift on the machine hits both
                phases.append(
                    await measure(
                        "session-per-call",
                        args.calls,
                        args.concurrency,
                        lambda city: session_per_call(server.url, city),
                        server,
                    )
                )
                phases.append(
                    await measure("rayfleet", args.calls, args.concurrency, pooled, server)
                )
        finally:
            await sessions.aclose()
            server.stop()
    for phase in phases:
        print(phase.line())
    base = [p for p in phases if p.name == "session-per-call"]
    ours = [p for p in phases if p.name == "rayfleet"]

    def total(group: list[Phase]) -> tuple[float, float, float]:
        n = sum(len(p.latencies) for p in group)
        lat = [x for p in group for x in p.latencies]
        return (
            n / sum(p.seconds for p in group),
            c.percentile(lat, 50),
            sum(p.cpu_s for p in group) / n,
        )

    (base_rate, base_p50, base_cpu), (our_rate, our_p50, our_cpu) = total(base), total(ours)
    print(
        f"ratios rayfleet / session-per-call: calls/s {c.ratio(our_rate, base_rate):.1f}x, "
        f"p50 latency {c.ratio(our_p50, base_p50):.2f}x, client CPU per call "
        f"{c.ratio(our_cpu, base_cpu):.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="40 calls, 1 round")
    parsed = parser.parse_args()
    if parsed.quick:
        parsed.calls, parsed.rounds = 40, 1
    asyncio.run(main(parsed))
