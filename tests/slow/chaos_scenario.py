"""kill -9 every rayfleet process in turn, by its pid, under a steady load of streamed runs.

Each shared actor (tools, limiter, embeddings, batches, pool), a run host, and the Serve
replicas of the app (gateway, the agent deployment) die in turn (the state is no actor:
each of these processes opens it itself). After
each kill the service must serve a new run again within RECOVERY_S, and at the end every
accepted run (a POST that returned a run id) must have ended in exactly one terminal event,
with no gap or duplicate seq in its stored stream nor in what its client saw live. While a
dependency is down, a refused request is a 503 problem+json with Retry-After, never a bare
500. Run by tests/slow/test_chaos.py in its own process (it kills Serve's replicas: no other
test may share this Ray); exits non-zero if a check fails.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx2

T = TypeVar("T")
CLIENTS = 3
RUNS_PER_CLIENT = 400
"""Bounds each client's loop; the load stops long before, when the kills are done."""
RECOVERY_S = 20.0
"""The issue's bound: after a kill the service serves a new run again within this."""
KEY = "rf-chaos-4b1e9d"
AUTH = {"authorization": f"Bearer {KEY}"}
RUNS_URL = "/v1/agents/support/runs"
NAMESPACE = "rayfleet-chaos"
DEPLOYMENTS = ("gateway", "support@v1")
REPLICAS = 2
SHARED = (
    "rayfleet-tools",
    "rayfleet-limiter",
    "rayfleet-embeddings",
    "rayfleet-batches",
    "rayfleet-pool",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Load:
    """Client threads that stream runs over HTTP/SSE until told to stop, and remember what
    they saw: the accepted runs with the seqs each stream delivered, and every refusal."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.live: dict[str, list[int]] = {}
        """Accepted run id -> the seqs its stream delivered, in order."""
        self.refusals: Counter[str] = Counter()
        self.bad: list[str] = []
        """Refusals that are not problem+json (or a 503 without Retry-After)."""
        self.cut = 0
        self.phase = "start"
        """What was killed last: a refusal is judged by when it happened."""
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=180)
            assert not thread.is_alive(), "a load client did not stop"

    def completed(self) -> int:
        with self.lock:
            return len(self.live)

    def _client(self, n: int) -> None:
        timeout = httpx2.Timeout(120, connect=10)
        with httpx2.Client(base_url=self._base_url, timeout=timeout) as http:
            for i in range(RUNS_PER_CLIENT):
                if self.stop.is_set():
                    return
                if not self._one(http, f"chaos-{n}-{i % 5}"):
                    self.stop.wait(0.3)  # refused or cut: pace the next try

    def _one(self, http: httpx2.Client, thread_id: str) -> bool:
        from agents.events import is_terminal
        from serve_app.sse import SSEDecoder

        body = {"input": "Where is order 1001?", "thread_id": thread_id}
        headers = {**AUTH, "accept": "text/event-stream"}
        run_id = None
        try:
            with http.stream("POST", RUNS_URL, json=body, headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                    self.refused(response)
                    return False
                run_id = response.headers["x-run-id"]
                seqs: list[int] = []
                with self.lock:
                    self.live[run_id] = seqs
                decoder = SSEDecoder()
                for line in response.iter_lines():
                    event = decoder.feed(line)
                    if event is not None:
                        seqs.append(event.seq)
                        if is_terminal(event):
                            return True
        except httpx2.TransportError:
            pass
        with self.lock:
            self.cut += 1  # the stream (or the request) broke off: the run goes on regardless
        return False

    def refused(self, response: httpx2.Response) -> None:
        status = response.status_code
        problem = response.headers.get("content-type", "").startswith("application/problem+json")
        with self.lock:
            self.refusals[f"{status} {response.json().get('code') if problem else '-'}"] += 1
            if not problem or (status == 503 and "retry-after" not in response.headers):
                kind = response.headers.get("content-type")
                self.bad.append(f"{self.phase}: {status} {kind}: {response.text[:200]}")


def _events(http: httpx2.Client, run_id: str, timeout_s: float) -> list[Any]:
    """The run's whole stored stream, read after the fact (live until its terminal event)."""
    from agents.events import is_terminal
    from serve_app.sse import SSEDecoder

    events: list[Any] = []
    decoder = SSEDecoder()
    url = f"/v1/runs/{run_id}/events?after=0"
    with http.stream("GET", url, headers=AUTH, timeout=timeout_s) as response:
        assert response.status_code == 200, (run_id, response.status_code, response.read())
        for line in response.iter_lines():
            event = decoder.feed(line)
            if event is not None:
                events.append(event)
                if is_terminal(event):
                    break
    return events


def serves_a_new_run(
    http: httpx2.Client, load: Load, killed_at: float, within_s: float = RECOVERY_S
) -> float:
    """Seconds from the kill until a new run is accepted and completes; fails after
    `within_s`. Polls (a bounded number of tries), never sleeps a fixed time."""
    deadline = killed_at + within_s
    tries: list[str] = []
    while time.monotonic() < deadline and len(tries) < 400:
        left = max(0.5, deadline - time.monotonic())
        try:
            response = http.post(RUNS_URL, json={"input": "Hello"}, headers=AUTH, timeout=left)
            if response.status_code == 202:
                run_id = response.json()["run_id"]
                with load.lock:
                    load.live[run_id] = []  # accepted: checked with the others at the end
                events = _events(http, run_id, max(0.5, deadline - time.monotonic()))
                if events and events[-1].kind == "run.completed":
                    return time.monotonic() - killed_at
                tries.append(f"run ended {events[-1].kind if events else 'without events'}")
            else:
                load.refused(response)
                tries.append(str(response.status_code))
        except httpx2.TransportError as exc:
            tries.append(type(exc).__name__)
        time.sleep(0.2)  # poll interval
    raise AssertionError(f"no new run served within {within_s:g}s of the kill: {tries[-10:]}")


def pid_of(handle: Any) -> int:
    import ray

    pid: int = ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=120)
    return pid


def restarted_pid(name: str) -> int | None:
    """The actor's pid once it answers again (None while Ray is still restarting it)."""
    import ray

    try:
        return pid_of(ray.get_actor(name, namespace=NAMESPACE))
    except ray.exceptions.RayActorError:
        return None


def replicas(deployment: str) -> list[str]:
    """Names of the live Serve replica actors of one deployment of the rayfleet app."""
    import ray

    prefix = f"SERVE_REPLICA::rayfleet#{deployment}#"
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(prefix)
    )


def all_replicas_up() -> bool:
    """Serve has every replica of the app running (again)."""
    from ray import serve

    app = serve.status().applications.get("rayfleet")
    if app is None or app.status != "RUNNING":
        return False
    healthy = all(d.status == "HEALTHY" for d in app.deployments.values())
    return healthy and all(len(replicas(d)) == REPLICAS for d in DEPLOYMENTS)


def targets(load: Load) -> Iterator[tuple[str, str, str]]:
    """(label, actor name, namespace) of each process to kill, in order."""
    from actors.run_host import host_of

    for name in SHARED:
        yield name, name, NAMESPACE
    with load.lock:
        busy = [run_id for run_id, seqs in load.live.items() if seqs]
    host = "rayfleet-runhost-" + host_of(busy[-1])
    yield f"run host {host}", host, NAMESPACE
    for deployment in DEPLOYMENTS:
        for replica in replicas(deployment):  # each in turn, once the last one's is back
            wait_until(all_replicas_up, 180)
            yield f"replica of {deployment}", replica, "serve"
    wait_until(all_replicas_up, 180)


def kill_each(http: httpx2.Client, load: Load, batch_id: str) -> None:
    import ray

    for label, name, namespace in targets(load):
        handle = ray.get_actor(name, namespace=namespace)
        pid = pid_of(handle)
        before = load.completed()
        load.phase = label
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        took = serves_a_new_run(http, load, killed_at)
        # The process is really back (a new one), or, for what is not restarted, replaced.
        if namespace == NAMESPACE and not name.startswith("rayfleet-runhost-"):
            again = wait_until(functools.partial(restarted_pid, name), 120)
            assert again != pid, f"{label} answers from the killed pid {pid}"
        print(
            f"killed {label} (pid {pid}): serving again after {took:.1f}s; "
            f"{load.completed() - before} runs accepted meanwhile",
            flush=True,
        )
        if name == "rayfleet-batches":  # found again, with what it held
            found = http.get(f"/v1/batches/{batch_id}", headers=AUTH, timeout=60)
            assert found.status_code == 200, found.text
        if name == "rayfleet-limiter":  # given the tenants' limits again
            wait_until(lambda: tenant_is_limited(http), 30)


def tenant_is_limited(http: httpx2.Client) -> bool:
    """The restarted limiter knows the chaos tenant's limit (its usage shows a bucket)."""
    admin = {"authorization": "Bearer rf-chaos-admin-77aa01"}
    tenants = http.get("/v1/admin/tenants", headers=admin, timeout=30).json()["tenants"]
    return "tokens_available" in tenants[0]["usage"]


def wait_until(condition: Callable[[], T], timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {condition}"
        time.sleep(0.2)
    return value


def check_every_run(http: httpx2.Client, load: Load) -> Counter[str]:
    """Every accepted run ended in exactly one terminal event, its seqs 1..n without a gap
    or a duplicate; what its client saw live is a prefix of that."""
    from agents.events import is_terminal

    with load.lock:
        live = {run_id: list(seqs) for run_id, seqs in load.live.items()}

    def check(run_id: str) -> str:
        events = _events(http, run_id, 240)
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(seqs) + 1)), (run_id, seqs)
        assert [is_terminal(e) for e in events].count(True) == 1, (run_id, seqs)
        assert is_terminal(events[-1]), (run_id, events[-1].kind)
        assert live[run_id] == seqs[: len(live[run_id])], (run_id, live[run_id], seqs)
        last = events[-1]
        return f"{last.kind} {last.code}" if last.kind == "run.failed" else str(last.kind)

    with ThreadPoolExecutor(4) as pool:
        return Counter(pool.map(check, sorted(live)))


def scenario(base_url: str) -> None:
    http = httpx2.Client(base_url=base_url, timeout=60)
    load = Load(base_url)
    batch = http.post("/v1/agents/support/batches", json={"inputs": ["Hello", "Hi"]}, headers=AUTH)
    assert batch.status_code == 202, batch.text
    load.start()
    wait_until(lambda: load.completed() >= CLIENTS, 120)
    kill_each(http, load, batch.json()["batch_id"])
    load.join()
    kinds = check_every_run(http, load)
    print(f"{sum(kinds.values())} accepted runs, each ended once: {dict(kinds)}")
    print(f"refusals: {dict(load.refusals)}; streams cut: {load.cut}")
    # A request in flight on a gateway replica that is killed is answered by Serve's proxy
    # (500 text/plain) or cut: no code of ours runs to answer it. Any other refusal is ours.
    ours = [bad for bad in load.bad if not bad.startswith("replica of gateway")]
    assert not ours, f"refusals that were not problem+json: {ours[:5]}"
    print(f"answered by Serve's proxy for a killed gateway replica: {load.bad}")
    http.close()


def main() -> int:
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"  # loopback only
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
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

    sim = SimServer(SimSettings(ttft_ms=150))
    sim.start()
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
                runs_per_actor=8,
            )
            # Metered, so runs reserve and settle with the limiter as they go.
            limits = TenantLimits(tokens_per_min=100_000_000, concurrent_runs=1000)
            tenancy = TenancyConfig(
                tenants=(TenantConfig(id="chaos", api_key_sha256=(digest(KEY),), limits=limits),),
                anonymous_tenant=None,
                admin_key_sha256=(digest("rf-chaos-admin-77aa01"),),
            )
            # Two of each replica, as a service without a single point of failure runs.
            config = AppConfig(
                agents=("example:support.yaml",),
                runtime=runtime,
                tenancy=tenancy,
                gateway_replicas=REPLICAS,
                agent_replicas=REPLICAS,
            )
            serve.run(build_app(config), name=APP_NAME, route_prefix="/")
            scenario(f"http://127.0.0.1:{port}")
    finally:
        ray.shutdown()
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
