"""Shared benchmark helpers: the simulator subprocess, a local Ray + Serve, CPU accounting,
percentiles, an in-process floor loop and a cheap SSE client.

Every benchmark starts its OWN local Ray (`ray.init` without an address), on free ports, and
shuts down only what it started. The provider simulator runs in a separate process so its
CPU is never counted as rayfleet's.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A Serve long-poll callback that fires after ray.shutdown() must not auto-start a new Ray.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
# Keep every Ray process on loopback (see tests/conftest.py); read when `ray` is first
# imported, so it is set before any benchmark imports ray.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# An agent without tools: its first step streams text (for time-to-first-token).
ECHO_AGENT = HERE / "agents" / "echo.yaml"
SUPPORT_AGENT = ROOT / "agents" / "examples" / "support.yaml"
# Policy mode: four tool calls, then an answer = a five-step run.
FIVE_STEP_INPUT = "Where is my order 1001? steps=5"
TERMINAL_KINDS = frozenset({"run.completed", "run.failed", "run.cancelled"})


# -- small things ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def machine() -> str:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}"


def header(title: str, args: Any) -> None:
    print(f"== {title} ==  ({machine()}; args: {vars(args)})", flush=True)


def ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def cores() -> int:
    """CPUs this process may run on (its affinity set): what a CPU share is a share of."""
    return len(os.sched_getaffinity(0))


def cpu_share(cpu_s: float, window_s: float) -> str:
    """CPU seconds used over a measured window, as a share of all the cores (<= 100%)."""
    n = cores()
    return f"{cpu_s / window_s / n * 100:.0f}% of {n} cores" if window_s > 0 else "n/a"


def by_process_table(columns: dict[str, dict[str, float]], unit: str, top: int = 10) -> str:
    """The by-process CPU table every benchmark prints: one column per phase, one row per
    process kind (largest first, the rest summed as "others"), then the total. Values are
    already in `unit` (e.g. ms per step)."""
    names = list(columns)
    kinds = sorted(
        {k for col in columns.values() for k in col},
        key=lambda k: -max(col.get(k, 0.0) for col in columns.values()),
    )
    width = max([26, *(len(k) + 2 for k in kinds[:top])])
    col = max([16, *(len(n) + 2 for n in names)])

    def row(label: str, values: list[float]) -> str:
        return f"{label:<{width}}" + "".join(f"{v:>{col}.3f}" for v in values)

    lines = [f"{'by process (' + unit + ')':<{width}}" + "".join(f"{n:>{col}}" for n in names)]
    lines += [row(k, [columns[n].get(k, 0.0) for n in names]) for k in kinds[:top]]
    if len(kinds) > top:
        lines.append(
            row("others", [sum(columns[n].get(k, 0.0) for k in kinds[top:]) for n in names])
        )
    lines.append(row("total", [sum(columns[n].values()) for n in names]))
    return "\n".join(lines)


# -- the simulator in its own process -------------------------------------------------------

_SIM_CODE = """
import sys, uvicorn
from serve_app.simulator.app import SimSettings, build_simulator_app, install_log_filter
install_log_filter()
settings = SimSettings(
    ttft_ms=float(sys.argv[2]), tokens_per_s=float(sys.argv[3]), control_api=True
)
uvicorn.run(build_simulator_app(settings), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning", access_log=False, lifespan="off", ws="none",
            backlog=16384, timeout_keep_alive=120)
"""


@dataclass
class Simulator:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        import psutil  # vendored by ray; `import ray` first puts it on sys.path

        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_simulator(ttft_ms: float, tokens_per_s: float = 0.0) -> Simulator:
    """The provider simulator on a free loopback port, in a subprocess; waits until it answers."""
    import httpx2

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIM_CODE, str(port), str(ttft_ms), str(tokens_per_s)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sim = Simulator(port, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the simulator exited with {proc.returncode}")
        try:
            if httpx2.get(f"{sim.base_url}/v1/models", timeout=1).status_code == 200:
                return sim
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)
    sim.stop()
    raise RuntimeError("the simulator did not start within 30 s")


@contextlib.contextmanager
def simulator(ttft_ms: float, tokens_per_s: float = 0.0) -> Iterator[Simulator]:
    sim = start_simulator(ttft_ms, tokens_per_s)
    try:
        yield sim
    finally:
        sim.stop()


# -- Ray + Serve --------------------------------------------------------------------------


@dataclass
class Rayfleet:
    http_port: int
    exclude_pids: set[int] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def handle(self) -> Any:
        from ray import serve

        return serve.get_app_handle("rayfleet")


def app_config(
    sim: Simulator, agents: tuple[Path, ...] = (), tenancy: Any = None, **runtime: Any
) -> Any:
    """The app's config; `tenancy` (a serve_app.tenancy.TenancyConfig) replaces the default
    single anonymous tenant. The state is $RAYFLEET_STATE_URL if set (see `state_server`),
    else SQLite in a fresh private directory: the data directory's is shared with every
    other rayfleet of this user (and may hold another schema version)."""
    import tempfile

    from actors.settings import RuntimeSettings, simulator_providers
    from actors.state import STATE_URL_ENV
    from serve_app.config import AppConfig

    if not os.environ.get(STATE_URL_ENV):
        private = Path(tempfile.mkdtemp(prefix="rayfleet-bench-"))
        runtime.setdefault("state_url", f"sqlite://{private}")
    extra = {} if tenancy is None else {"tenancy": tenancy}
    return AppConfig(
        agents=tuple(str(p) for p in agents),
        runtime=RuntimeSettings(providers=simulator_providers(sim.base_url), **runtime),
        **extra,
    )


@contextlib.contextmanager
def state_server(backend: str) -> Iterator[str]:
    """The state backend for a benchmark's rayfleet: "sqlite" (the embedded default, in a
    private directory: see `app_config`) or "postgresql" (a private PostgreSQL 15 server on
    127.0.0.1 with fsync on, as in production, its URL exported as $RAYFLEET_STATE_URL for
    every Ray process started afterwards). Yields what to print."""
    from actors.state import STATE_URL_ENV, describe

    if backend == "sqlite":
        yield "SQLite (WAL, synchronous=FULL), one file per concern"
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.postgres import PostgresServer

    with PostgresServer(fsync=True) as server:
        url = server.url(server.create_database("rayfleet"))
        os.environ[STATE_URL_ENV] = url
        pid_file = server.data_dir / "postmaster.pid"
        STATE_SERVER_PIDS.append(int(pid_file.read_text().split()[0]))
        try:
            yield f"PostgreSQL 15 (private server, fsync on) at {describe(url)}"
        finally:
            os.environ.pop(STATE_URL_ENV, None)
            STATE_SERVER_PIDS.clear()


@contextlib.asynccontextmanager
async def rayfleet(config: Any, sim: Simulator) -> AsyncIterator[Rayfleet]:
    """A private local Ray (2 CPUs) + Serve in throughput mode + the rayfleet app.

    The instance is ours alone, so `ray.shutdown()` ends every process of it; Serve's own
    shutdown is skipped (from inside this loop it waits 30 s for the controller).
    """
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"  # before ray.init
    import httpx2
    import ray
    from ray import serve

    from serve_app.app import build_app

    ray.init(
        address="local",  # a new Ray, whatever /tmp/ray/ray_current_cluster names
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name="rayfleet", route_prefix="/")
        fleet = Rayfleet(port, {sim.proc.pid})
        deadline = time.monotonic() + 60
        async with httpx2.AsyncClient(timeout=2) as client:
            while True:
                try:
                    if (await client.get(f"{fleet.base_url}/healthz")).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("rayfleet did not become healthy within 60 s")
                await asyncio.sleep(0.2)
        yield fleet
    finally:
        ray.shutdown()


# -- CPU and memory of our own Ray's processes ----------------------------------------------


def process_kind(cmdline: str) -> str:
    """The row a process counts under in the by-process table."""
    if cmdline.startswith("postgres"):
        return "postgresql"
    if "haproxy" in cmdline.split(" ", 1)[0]:
        return "haproxy"
    if "gcs_server" in cmdline:
        return "gcs"
    if "raylet" in cmdline and "ray::" not in cmdline:
        return "raylet"
    if "ray::" in cmdline:
        name = cmdline.split("ray::", 1)[1].split()[0] if "ray::" in cmdline else "worker"
        return "ray::" + name.split(".")[0].split(":")[0]
    return "other"


def server_processes(exclude: set[int]) -> list[Any]:
    """Every process under this driver (gcs, raylet, workers, agents) except `exclude`'s trees.

    Children of this driver only: another engineer's Ray on the same machine is not counted.
    """
    import psutil

    skip: set[int] = set(exclude)
    for pid in exclude:
        with contextlib.suppress(psutil.Error):
            skip.update(c.pid for c in psutil.Process(pid).children(recursive=True))
    found = [p for p in psutil.Process().children(recursive=True) if p.pid not in skip]
    for pid in STATE_SERVER_PIDS:  # a daemon, not our child: its server processes count too
        with contextlib.suppress(psutil.Error):
            postmaster = psutil.Process(pid)
            found += [postmaster, *postmaster.children(recursive=True)]
    return found


STATE_SERVER_PIDS: list[int] = []
"""The PostgreSQL postmaster started by `state_server`, if any."""


@dataclass
class CpuSnapshot:
    at: float
    by_pid: dict[int, tuple[str, float]]

    @classmethod
    def take(cls, exclude: set[int]) -> CpuSnapshot:
        import psutil

        by_pid: dict[int, tuple[str, float]] = {}
        for proc in server_processes(exclude):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                cmd = " ".join(proc.cmdline())
                by_pid[proc.pid] = (process_kind(cmd), times.user + times.system)
        return cls(time.monotonic(), by_pid)

    def since(self, before: CpuSnapshot) -> tuple[float, dict[str, float]]:
        """CPU seconds used between the two snapshots: total and by process kind."""
        by_kind: dict[str, float] = {}
        for pid, (kind, cpu) in self.by_pid.items():
            used = cpu - before.by_pid.get(pid, (kind, 0.0))[1]
            by_kind[kind] = by_kind.get(kind, 0.0) + used
        return sum(by_kind.values()), by_kind


def own_cpu_s() -> float:
    """CPU seconds of this process (all threads)."""
    return time.process_time()


# -- the in-process floor: execute_run + ModelRouter + ToolPool, no Ray --------------------


class Floor:
    """The floor loop the targets compare against: one process, no Ray hops, real HTTP to
    the simulator, a real event log per run."""

    def __init__(self, sim: Simulator, agent: Path = SUPPORT_AGENT) -> None:
        import httpx2

        from actors.router import ModelRouter
        from actors.settings import RuntimeSettings, simulator_providers
        from actors.tool_pool import ToolPool
        from agents.loop import Ports
        from agents.pricing import PriceTable
        from agents.spec import AgentSpec

        settings = RuntimeSettings(providers=simulator_providers(sim.base_url))
        limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=200)
        self.http = httpx2.AsyncClient(limits=limits, timeout=None)
        router = ModelRouter(settings.providers, PriceTable(settings.prices), self.http)
        self.ports = Ports(model=router, tools=ToolPool(max_concurrency=1000))
        self.spec = AgentSpec.from_yaml(agent)
        self._n = 0

    async def run(self, text: str) -> tuple[float, int, str]:
        """One run: (seconds, steps, terminal kind)."""
        from agents.eventlog import EventLog
        from agents.loop import RunInput, execute_run
        from agents.tracing import RunTrace

        self._n += 1
        run_id = f"run-floor-{self._n:020x}"
        request = RunInput(run_id=run_id, input=text, trace=RunTrace.start())  # as rayfleet's
        log = EventLog(run_id, trace_id=request.trace.trace_id if request.trace else None)
        started = time.perf_counter()
        await execute_run(self.spec, request, self.ports, log)
        elapsed = time.perf_counter() - started
        last = log.events()[-1]
        return elapsed, int(getattr(last, "steps", 0)), last.kind

    async def aclose(self) -> None:
        await self.http.aclose()


# -- a cheap SSE client (aiohttp: the load generator should not eat the server's CPU) -------


async def sse_events(
    session: Any,
    url: str,
    body: dict[str, Any],
    timeout_s: float = 120.0,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[tuple[str, str]]:
    """POST and yield (kind, data) per SSE event until a terminal kind. `headers` are added
    (e.g. `Authorization: Bearer <key>`)."""
    import aiohttp

    async with session.post(
        url,
        json=body,
        headers={"Accept": "text/event-stream", **(headers or {})},
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"POST {url} -> {resp.status}: {(await resp.text())[:300]}")
        kind, data = "", ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "" and kind:
                yield kind, data
                if kind in TERMINAL_KINDS:
                    return
                kind, data = "", ""


def run_url(fleet: Rayfleet, agent: str) -> str:
    return f"{fleet.base_url}/v1/agents/{agent}/runs"


async def sse_run(session: Any, fleet: Rayfleet, agent: str, text: str) -> tuple[float, int, str]:
    """One run over HTTP + SSE: (seconds from POST to the terminal event, steps, kind)."""
    import json

    started = time.perf_counter()
    async for kind, data in sse_events(session, run_url(fleet, agent), {"input": text}):
        if kind in TERMINAL_KINDS:
            steps = int(json.loads(data).get("steps", 0))
            return time.perf_counter() - started, steps, kind
    raise RuntimeError("SSE stream ended without a terminal event")


def http_session(limit: int) -> Any:
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, force_close=False))


async def bounded(n: int, concurrency: int, job: Any) -> list[Any]:
    """Run job(i) for i < n with at most `concurrency` at once; results in order."""
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with slots:
            return await job(i)

    return await asyncio.gather(*(one(i) for i in range(n)))
