"""kill -9 PostgreSQL under a steady load of streamed runs, and start it again (issue 10).

Every Ray process of rayfleet opens the state database itself ($RAYFLEET_STATE_URL). The
postmaster gets SIGKILL while runs stream; its backends die with it. While it is down a new
run is refused with a 503 problem+json with Retry-After, never accepted and never a bare 500;
runs in flight go on, their events held until they can be stored. PostgreSQL is then started
again on its data directory and port (as a supervisor would) and within RESTART_S a new run is
served; at the end every accepted run ended in exactly one terminal event with contiguous
seqs, and what its client saw live is a prefix of that. Run by
tests/slow/test_database_restart.py in its own process; exits non-zero if a check fails.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx2

from tests.postgres import PostgresServer
from tests.slow.chaos_scenario import (
    AUTH,
    CLIENTS,
    KEY,
    RUNS_URL,
    Load,
    check_every_run,
    serves_a_new_run,
    wait_until,
)

NAMESPACE = "rayfleet-pgkill"
RESTART_S = 60.0
"""Bound from PostgreSQL's restart until a new run is served again."""
BACKENDS_GONE_S = 30.0
REFUSALS = 1
"""New runs asked for (and refused) while the database is down: each waits for the pool's
connect timeout, and the longer the outage, the longer the pools back off before they
reconnect."""
RAY_START_ATTEMPTS = 3


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (the postmaster's backends and workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # The command name (in parentheses) may hold spaces: the fields after it are fixed.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_postgres(pg: PostgresServer) -> tuple[int, int]:
    """SIGKILL the postmaster; wait (bounded) until none of its backends (and background
    workers) is left. Returns (postmaster pid, how many children it had)."""
    pid = pg.postmaster_pid()
    backends = children_of(pid)
    assert backends, "the postmaster has no child processes: is it a PostgreSQL server?"
    os.kill(pid, signal.SIGKILL)
    # Each backend exits once it sees its postmaster gone; a survivor would keep the shared
    # memory and the server could not start again.
    wait_until(lambda: not any(alive(p) for p in [pid, *backends]), BACKENDS_GONE_S)
    return pid, len(backends)


def refused_while_down(http: httpx2.Client, load: Load) -> int:
    """Ask for REFUSALS new runs while the database is down: each must be a 503
    problem+json with Retry-After (a run accepted now could not have been stored)."""
    for _ in range(REFUSALS):
        response = http.post(RUNS_URL, json={"input": "Hello"}, headers=AUTH, timeout=120)
        load.refused(response)  # counted, and judged (problem+json, Retry-After) with the rest
        assert response.status_code == 503, (response.status_code, response.text[:300])
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "retry-after" in response.headers, response.headers
    return REFUSALS


def scenario(base_url: str, pg: PostgresServer) -> None:
    http = httpx2.Client(base_url=base_url, timeout=60)
    load = Load(base_url)
    load.start()
    wait_until(lambda: load.completed() >= 2 * CLIENTS, 180)
    before = load.completed()

    load.phase = "postgres down"
    killed_at = time.monotonic()
    pid, backends = kill_postgres(pg)
    print(f"killed the postmaster (pid {pid}); its {backends} children gone", flush=True)
    refused = refused_while_down(http, load)

    load.phase = "postgres restarted"
    down_s = time.monotonic() - killed_at
    pg.start()
    restarted_at = time.monotonic()
    took = serves_a_new_run(http, load, restarted_at, RESTART_S)
    print(f"postgres down {down_s:.1f}s; serving again {took:.1f}s after its restart", flush=True)
    # Some more load on the restarted database before the checks.
    after = load.completed()
    wait_until(lambda: load.completed() >= after + CLIENTS, 120)
    load.join()

    kinds = check_every_run(http, load)
    print(f"refusals: {dict(load.refusals)}; streams cut: {load.cut}", flush=True)
    assert not load.bad, f"refusals that were not problem+json: {load.bad[:5]}"
    print(
        f"database restart: {sum(kinds.values())} accepted runs ({before} before the kill), "
        f"each ended once: {dict(kinds)}; {refused} refused with 503 while down "
        f"{down_s:.1f}s; serving again {took:.1f}s after the restart",
        flush=True,
    )
    http.close()


def start_ray() -> None:
    """A new Ray of our own; again if it would not start (its raylet must register within
    30 s, which a loaded machine can miss)."""
    import ray

    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(
                address="local",  # a new Ray, whatever /tmp/ray/ray_current_cluster names
                num_cpus=2,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                namespace=NAMESPACE,
                logging_level="ERROR",
                log_to_driver=False,
            )
            return
        except Exception as exc:
            ray.shutdown()
            if attempt == RAY_START_ATTEMPTS:
                raise
            print(f"Ray did not start (attempt {attempt}): {exc}", flush=True)


def main() -> int:
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"  # loopback only
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    # Stopped from outside (the test's timeout): clean up in the finally blocks all the same.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    import ray
    from ray import serve

    from actors.caches import CacheSettings
    from actors.limiter import TenantLimits
    from actors.settings import RuntimeSettings, simulator_providers
    from serve_app.app import APP_NAME, build_app
    from serve_app.config import AppConfig
    from serve_app.simulator import SimSettings
    from serve_app.tenancy import TenancyConfig, TenantConfig, digest
    from tests.fixtures_sim import SimServer
    from tests.slow.chaos_scenario import _free_port

    with tempfile.TemporaryDirectory(prefix="rayfleet-pgkill-") as tmp, PostgresServer() as pg:
        os.environ["RAYFLEET_STATE_URL"] = pg.url(pg.create_database("rayfleet"))
        sim = SimServer(SimSettings(ttft_ms=150))
        sim.start()
        try:
            start_ray()
            port = _free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            runtime = RuntimeSettings(  # state_url unset: $RAYFLEET_STATE_URL, in every process
                providers=simulator_providers(sim.base_url),
                namespace=NAMESPACE,
                cache=CacheSettings(directory=str(Path(tmp) / "cache")),
                runs_per_actor=8,
            )
            # Metered, so runs reserve and settle with the limiter (in the database) as they go.
            limits = TenantLimits(tokens_per_min=100_000_000, concurrent_runs=1000)
            tenancy = TenancyConfig(
                tenants=(TenantConfig(id="chaos", api_key_sha256=(digest(KEY),), limits=limits),),
                anonymous_tenant=None,
            )
            config = AppConfig(agents=("example:support.yaml",), runtime=runtime, tenancy=tenancy)
            serve.run(build_app(config), name=APP_NAME, route_prefix="/")
            scenario(f"http://127.0.0.1:{port}", pg)
        finally:
            ray.shutdown()
            sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
