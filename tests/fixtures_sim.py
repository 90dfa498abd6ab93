"""Pytest plugin: the provider simulator on a real loopback port.

One uvicorn server per session in a background thread; the function-scoped `sim` fixture
resets it before each test and fails the test if scripted replies were left unused.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import uvicorn

from serve_app.simulator import SimSettings, build_simulator_app
from serve_app.simulator.app import install_log_filter


class SimServer:
    """The simulator served by uvicorn in a daemon thread."""

    def __init__(self, settings: SimSettings) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        install_log_filter()
        config = uvicorn.Config(
            build_simulator_app(settings),
            log_level="warning",
            lifespan="off",
            ws="none",
            http="h11",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the simulator did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()


class Sim:
    """What a test sees: the base URL and sync helpers to script and inspect the simulator."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.base_url = server.base_url
        self._http = httpx2.Client(base_url=server.base_url, timeout=5)

    @property
    def openai_base_url(self) -> str:
        """What `openai.OpenAI(base_url=...)` and our OpenAIClient expect."""
        return f"{self.base_url}/v1"

    def script(self, *replies: dict[str, Any]) -> None:
        """Queue scripted replies (see serve_app.simulator.script)."""
        r = self._http.post("/_sim/script", json={"replies": list(replies)})
        assert r.status_code == 200, r.text

    def requests(self) -> list[dict[str, Any]]:
        """Every model request recorded since the last reset."""
        found: list[dict[str, Any]] = self._http.get("/_sim/requests").json()["requests"]
        return found

    def pending(self) -> int:
        """How many scripted replies are still unused."""
        return int(self._http.get("/_sim/script").json()["pending"])

    def reset(self) -> None:
        self._http.post("/_sim/reset").raise_for_status()

    def close(self) -> None:
        self._http.close()


@pytest.fixture(scope="session")
def sim_server() -> Iterator[SimServer]:
    server = SimServer(SimSettings(ttft_ms=0))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sim(sim_server: SimServer) -> Iterator[Sim]:
    """The simulator, reset; fails the test if scripted replies are left unused."""
    handle = Sim(sim_server)
    handle.reset()
    try:
        yield handle
        left = handle.pending()
        if left:
            handle.reset()
            pytest.fail(f"{left} scripted simulator replies were left unused")
        handle.reset()
    finally:
        handle.close()
