"""The simulator on its own loopback port, served by uvicorn in a daemon thread.

What `rayfleet serve` runs beside the Serve app (never on the serving proxy), and what the
tests' `sim_server` fixture runs."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from serve_app.simulator.app import SimSettings, build_simulator_app, install_log_filter


class SimulatorThread:
    """The simulator on 127.0.0.1:`port` (0: a free one, see `.port` after construction)."""

    def __init__(self, settings: SimSettings, port: int = 0) -> None:
        # Bound here, before the thread starts, so the port is known and already taken.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        install_log_filter()
        config = uvicorn.Config(
            build_simulator_app(settings),
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            http="h11",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self, timeout_s: float = 10.0) -> None:
        """Start serving; returns once it accepts connections (RuntimeError if it cannot)."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the provider simulator did not start on {self.base_url}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()
