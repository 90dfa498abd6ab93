"""The /mcp route in process, no Ray: the gateway's own ASGI app (its real routes, auth and
error handlers, the MCP session manager run by the app's lifespan), driven over httpx2's ASGI
transport. What needs runs is tested on the Serve app: tests/serve/test_mcp_endpoint.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agents.examples import example_specs
from serve_app.config import AppConfig
from serve_app.gateway import Gateway
from serve_app.mcp_endpoint import MCP_PATH
from serve_app.tenancy import Authenticator, TenancyConfig, TenantConfig, digest

KEY = "rf-unit-mcp-41c9d0"
TENANCY = TenancyConfig(
    tenants=(TenantConfig(id="team", api_key_sha256=(digest(KEY),), agents=("support",)),),
    anonymous_tenant=None,
)


def replica() -> Any:
    """A gateway replica's object with what its HTTP auth and agent list read; its
    constructor (state, Ray) is not run."""
    # Serve's ingress wrapper class has an async `__del__`: the class it wraps has none.
    wrapper = Gateway.func_or_class  # type: ignore[attr-defined]
    cls = next(c for c in wrapper.__mro__[1:] if "__serve_build_asgi_app__" in vars(c))
    gateway = object.__new__(cls)
    gateway._auth = Authenticator(TENANCY)
    gateway._config = AppConfig(tenancy=TENANCY)
    gateway._specs = {spec.key: spec for spec in example_specs()}
    return gateway


@contextlib.asynccontextmanager
async def served(headers: dict[str, str]) -> AsyncIterator[httpx2.AsyncClient]:
    app = replica().__serve_build_asgi_app__()
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://gateway", headers=headers
        ) as http:
            yield http


async def test_without_a_key_and_no_anonymous_tenant_it_is_the_http_apis_401() -> None:
    async with served({}) as http:
        mcp = await http.post(
            MCP_PATH,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
        agents = await http.get("/v1/agents")
    assert mcp.status_code == agents.status_code == 401
    assert mcp.headers["content-type"] == "application/problem+json"
    assert mcp.json() == agents.json()
    assert mcp.json()["code"] == "unauthorized"


async def test_the_tools_are_the_tenants_agents_without_ray() -> None:
    async with served({"authorization": f"Bearer {KEY}"}) as http:
        transport = streamable_http_client(f"http://gateway{MCP_PATH}", http_client=http)
        async with Client(transport, mode="legacy") as client:
            tools = (await client.list_tools()).tools
    assert [tool.name for tool in tools] == ["support"]
