"""kill -9 the gateway replica while an MCP tool call (an agent run) is in flight on it.

The run the call started is not lost: it runs on its host, not in the gateway, and completes
(seen over the HTTP API once the gateway is back). A new MCP call after Serve has restarted
the replica (a new pid) is served to completion. Run by tests/slow/test_mcp_gateway_kill.py in
its own process (it kills a Serve replica: no other test may share this Ray); exits non-zero
if a check fails.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx2

T = TypeVar("T")
KEY = "rf-mcp-kill-6d20b1"
NAMESPACE = "rayfleet-mcp-kill"
ANSWER = "Order 1234 has shipped."
SLOW_MS = 8000
"""How long the model takes to answer the in-flight run: the gateway is killed meanwhile."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], T], timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {condition}"
        time.sleep(0.2)
    return value


def gateway_pid() -> int | None:
    """The pid of the app's one gateway replica, once it answers (None meanwhile)."""
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith("SERVE_REPLICA::rayfleet#gateway#")
    ]
    if len(names) != 1:
        return None
    try:
        handle = ray.get_actor(names[0], namespace="serve")
        pid: int = ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=30)
    except (ray.exceptions.RayError, ValueError):
        return None
    return pid


def summary(http: httpx2.Client, run_id: str) -> dict[str, Any] | None:
    """The run's summary once it has ended; None while it runs or the gateway is down."""
    try:
        response = http.get(f"/v1/runs/{run_id}", headers={"authorization": f"Bearer {KEY}"})
    except httpx2.TransportError:
        return None
    if response.status_code != 200:
        return None
    found: dict[str, Any] = response.json()
    return found if found["status"] != "running" else None


async def call(base_url: str, on_run: Callable[[str], None] | None = None) -> Any:
    """One MCP call of `support`; `on_run` hears the run id from the first progress note."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def progress(value: float, total: float | None, message: str | None) -> None:
        if on_run is not None and message and message.startswith("run "):
            on_run(message.split()[1])

    headers = {"authorization": f"Bearer {KEY}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http:
        transport = streamable_http_client(f"{base_url}/mcp", http_client=http)
        async with Client(transport) as client:
            arguments = {"input": "Where is order 1234?"}
            return await client.call_tool("support", arguments, progress_callback=progress)


def scenario(base_url: str, sim: Any) -> None:
    from tests.helpers import wait_for

    http = httpx2.Client(base_url=base_url, timeout=30)
    before = wait_until(gateway_pid, 120)
    sim.script({"type": "text", "text": ANSWER, "delay_ms": SLOW_MS})
    run_ids: list[str] = []
    outcome: list[Any] = []

    async def in_flight() -> None:
        started, done = anyio.Event(), anyio.Event()

        def on_run(run_id: str) -> None:
            run_ids.append(run_id)
            started.set()

        async with anyio.create_task_group() as group:

            async def calling() -> None:
                try:
                    outcome.append(await call(base_url, on_run))
                except Exception as exc:  # the connection dies with the replica
                    outcome.append(exc)
                finally:
                    done.set()

            group.start_soon(calling)
            with anyio.fail_after(120):
                await started.wait()
            # The model call is in flight (the simulator holds its answer SLOW_MS).
            await anyio.to_thread.run_sync(lambda: wait_for(sim.requests, timeout_s=60))
            os.kill(before, signal.SIGKILL)
            print(f"killed the gateway replica (pid {before}) mid-call", flush=True)
            with anyio.fail_after(120):
                await done.wait()

    anyio.run(in_flight)
    result = outcome[0]
    assert isinstance(result, Exception) or result.is_error, f"the call outlived the kill: {result}"
    print(f"the in-flight call ended with: {type(result).__name__}", flush=True)

    ended = wait_until(lambda: summary(http, run_ids[0]), 180)
    assert ended["status"] == "completed" and ended["output"] == ANSWER, ended
    after = wait_until(gateway_pid, 180)
    assert after != before, "the gateway answers from the killed pid"
    wait_for(lambda: sim.pending() == 0, timeout_s=5)

    again = anyio.run(call, base_url)
    assert not again.is_error, again
    run_id = again.structured_content["run_id"]
    assert (summary(http, run_id) or {}).get("status") == "completed"
    print(f"run {run_ids[0]} completed; a new call on pid {after} ran {run_id}", flush=True)
    print("mcp gateway kill: ok", flush=True)


def main() -> int:
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"  # loopback only
    import ray
    from ray import serve

    from actors.caches import CacheSettings
    from actors.settings import RuntimeSettings, simulator_providers
    from serve_app.app import APP_NAME, build_app
    from serve_app.config import AppConfig
    from serve_app.simulator import SimSettings
    from serve_app.tenancy import TenancyConfig, TenantConfig, digest
    from tests.fixtures_sim import Sim, SimServer

    server = SimServer(SimSettings(ttft_ms=0))
    server.start()
    sim = Sim(server)
    ray.init(
        address="local",  # a new Ray, whatever /tmp/ray/ray_current_cluster names
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        namespace=NAMESPACE,
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            port = _free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            runtime = RuntimeSettings(
                providers=simulator_providers(sim.base_url),
                namespace=NAMESPACE,
                state_url=f"sqlite://{data}",
                cache=CacheSettings(directory=str(data / "cache")),
            )
            tenancy = TenancyConfig(
                tenants=(TenantConfig(id="mcp", api_key_sha256=(digest(KEY),)),),
                anonymous_tenant=None,
            )
            config = AppConfig(agents=("example:support.yaml",), runtime=runtime, tenancy=tenancy)
            serve.run(build_app(config), name=APP_NAME, route_prefix="/")
            scenario(f"http://127.0.0.1:{port}", sim)
    finally:
        ray.shutdown()
        sim.close()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
