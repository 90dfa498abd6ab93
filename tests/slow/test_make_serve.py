"""`rayfleet serve` (what `make serve` runs), as a user starts it: its own local Ray head in a
separate process. The provider simulator is not on the serving port: it has its own
loopback port, with its request log and script API off, and runs still reach it. The state
URL given with `--state` reaches every Ray process (through their environment)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx2
import pytest

from tests.helpers import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]


def free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def answers(url: str) -> bool:
    try:
        return httpx2.get(url, timeout=2).status_code == 200
    except httpx2.TransportError:
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """(serving URL, simulator URL, its temporary directory) of a `rayfleet serve` in its own
    process, its state in `<dir>/state`."""
    port, sim_port = free_ports(2)
    tmp = tmp_path_factory.mktemp("make-serve")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAYFLEET_DATA_DIR": str(tmp / "data")}
    command = [sys.executable, "-m", "serve_app.cli", "serve", "--port", str(port)]
    command += ["--sim-port", str(sim_port), "--num-cpus", "2", "--metrics-port", "0"]
    command += ["--state", f"sqlite://{tmp / 'state'}"]
    with open(tmp / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/v1/agents") or proc.poll() is not None, 240, 0.5)
        assert proc.poll() is None, (tmp / "serve.log").read_text()[-5000:]
        yield base, f"http://127.0.0.1:{sim_port}", tmp
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does: it stops its Ray and the simulator
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_the_serving_port_has_no_simulator(served: tuple[str, str, Path]) -> None:
    base, _, _ = served
    script = {"replies": [{"type": "text", "text": "steered"}]}
    for method, path, body in [
        ("GET", "/sim/_sim/requests", None),
        ("POST", "/sim/_sim/script", script),
        ("GET", "/sim/v1/models", None),
        ("GET", "/_sim/requests", None),
        ("POST", "/_sim/script", script),
    ]:
        response = httpx2.request(method, f"{base}{path}", json=body, timeout=10)
        assert response.status_code == 404, (method, path, response.status_code, response.text)


def test_runs_reach_the_simulator_on_its_own_loopback_port(
    served: tuple[str, str, Path],
) -> None:
    base, sim, _ = served
    stream = httpx2.post(
        f"{base}/v1/agents/support/runs",
        json={"input": "Where is order 1234? my-private-words"},
        headers={"Accept": "text/event-stream"},
        timeout=120,
    )
    assert stream.status_code == 200 and "event: run.completed" in stream.text, stream.text[-500:]
    assert httpx2.get(f"{sim}/v1/models", timeout=10).status_code == 200
    # Its control API is off: no request log to read, no script to change replies with.
    for method, path in [("GET", "/_sim/requests"), ("POST", "/_sim/script")]:
        response = httpx2.request(method, f"{sim}{path}", json={"replies": []}, timeout=10)
        assert response.status_code == 404 and "my-private-words" not in response.text


def test_the_state_given_with_state_is_where_every_process_keeps_it(
    served: tuple[str, str, Path],
) -> None:
    base, _, tmp = served
    created = httpx2.post(f"{base}/v1/agents/support/runs", json={"input": "Hello"}, timeout=60)
    assert created.status_code == 202, created.text
    run_id = created.json()["run_id"]

    def status() -> str:
        return str(httpx2.get(f"{base}/v1/runs/{run_id}", timeout=10).json()["status"])

    wait_for(lambda: status() != "running", 120, 0.5)
    # The run host (a Ray worker) wrote the run where --state said, not in the data dir.
    with sqlite3.connect(tmp / "state" / "runs.sqlite") as db:
        found = db.execute("SELECT count(*) FROM events WHERE run_id = ?", (run_id,)).fetchone()
    db.close()
    assert found[0] >= 2
    assert not (tmp / "data" / "runs.sqlite").exists()
    assert f"state: sqlite://{tmp / 'state'}" in (tmp / "serve.log").read_text()
