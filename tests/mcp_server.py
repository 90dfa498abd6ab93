"""A real MCP server for the tests, built with the `mcp` SDK, served over streamable HTTP on
127.0.0.1 by uvicorn in a subprocess (so a test can kill and restart it).

Tools: `lookup` (read-only), `place_order` (side-effecting: appends its idempotency key to
`orders.log` in the state directory, so calls are counted across restarts), `slow` (sleeps),
`broken` (always fails). Each tool logs its calls to `<tool>.log` (tests count them), and every
request's Authorization header is appended to `auth.log`.

Run: python -m tests.mcp_server --port P --state DIR
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer

from tests.helpers import wait_for

ASGIApp = Callable[..., Any]


def build(state: Path) -> MCPServer:
    server = MCPServer("rayfleet-test-tools", log_level="CRITICAL")

    @server.tool(description="Look up the weather of a city (read-only).")
    def lookup(city: str) -> str:
        with (state / "lookup.log").open("a") as log:
            log.write(city + "\n")
        return f"weather in {city}: sunny"

    @server.tool(description="Place an order for an item (changes the world).")
    def place_order(item: str, idempotency_key: str) -> str:
        orders = state / "orders.log"
        with orders.open("a") as log:
            log.write(f"{idempotency_key}\n")
        count = len(orders.read_text().splitlines())
        return f"order {count} placed for {item}"

    @server.tool(description="Wait some seconds, then answer.")
    async def slow(seconds: float) -> str:
        with (state / "slow.log").open("a") as log:
            log.write(f"{seconds}\n")
        await anyio.sleep(seconds)
        return "done waiting"

    @server.tool(description="Always fails.")
    def broken() -> str:
        with (state / "broken.log").open("a") as log:
            log.write("called\n")
        raise ValueError("the broken tool is broken")

    return server


def with_auth_log(app: ASGIApp, state: Path) -> ASGIApp:
    """Records each HTTP request's Authorization header (or '-')."""

    async def logged(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            sent = [v.decode() for k, v in scope["headers"] if k == b"authorization"]
            value = ",".join(sent) or "-"  # every one sent, should there be more than one
            with (state / "auth.log").open("a") as log:
                log.write(value + "\n")
        await app(scope, receive, send)

    return logged


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class McpServerProcess:
    """The server in a subprocess on a fixed port; `restart` keeps the port and the state."""

    def __init__(self, state: Path, port: int | None = None) -> None:
        self.state = state
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.mcp_server"),
                *("--port", str(self.port), "--state", str(self.state)),
            ],
            cwd=Path(__file__).resolve().parents[1],
        )
        wait_for(self._listening, timeout_s=30)

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def orders(self) -> list[str]:
        path = self.state / "orders.log"
        return path.read_text().splitlines() if path.exists() else []

    def calls(self, tool: str) -> list[str]:
        """The lines `tool` logged: one per call that reached it."""
        path = self.state / f"{tool}.log"
        return path.read_text().splitlines() if path.exists() else []

    def auth(self) -> list[str]:
        path = self.state / "auth.log"
        return path.read_text().splitlines() if path.exists() else []

    def _listening(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(f"the MCP test server exited with {self._process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args()
    app = with_auth_log(build(args.state).streamable_http_app(), args.state)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
