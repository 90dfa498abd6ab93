"""Pytest plugin: the provider simulator on a real loopback port.

One uvicorn server per session in a background thread, its control API on; the
function-scoped `sim` fixture resets it before each test and fails the test if scripted
replies were left unused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from serve_app.simulator import SimSettings
from serve_app.simulator.server import SimulatorThread


class SimServer(SimulatorThread):
    """The simulator served by uvicorn in a daemon thread, its control API on: tests script
    replies and read the request log through it."""

    def __init__(self, settings: SimSettings) -> None:
        super().__init__(settings.model_copy(update={"control_api": True}))


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
