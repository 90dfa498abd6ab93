"""The gateway's agents as MCP tools: `POST /mcp`, streamable HTTP, served with the official
`mcp` SDK's low-level server. A mixin of the gateway, as serve_app/approval_routes.py is.

Each agent the caller's tenant may run is a tool named after it (agent names,
`^[a-z][a-z0-9_-]{0,62}$`, are valid MCP tool names, `[A-Za-z0-9._-]{1,128}`), described by
its spec, taking the fields of `POST /v1/agents/{agent}/runs` (`input`, and optionally
`thread_id`, `version`, `user`: the one `RunRequest` schema). A call starts a run through the
gateway's own `_start` (kill switches, rate limits, budgets, the traffic split, exactly as over
HTTP), follows its events, and returns the final output as text, with `run_id` and
`thread_id` in `structuredContent` and in `_meta["io.rayfleet/run"]`, so the run can be looked
up over the HTTP API. With a `progressToken`, each of the run's steps, tool calls and results
(and an approval it waits for) is a progress notification whose `progress` is the event's seq.
A run that fails or is cancelled, an unknown agent, one the tenant may not run, a kill switch,
a limit: a tool result with `isError` and the error's `code` (what the HTTP API would have
said), never a protocol error nor a crash; an agent of another tenant looks like one that
does not exist.

Decisions:
- Stateless streamable HTTP (`StreamableHTTPSessionManager(stateless=True)`): Serve runs
  several gateway replicas behind its proxy, and a session pinned to one replica would break
  when the next request lands on another. Each POST stands alone, on any replica. Clients of
  protocol 2026-07-28 (the SDK's `Client` in its default `auto` mode) are stateless by design;
  handshake-era clients (`mode="legacy"`) initialize on one POST and call on the next.
- The manager's task group: `manager.run()` must be entered and exited in one task. Serve runs
  an ingress app's ASGI lifespan (uvicorn's `LifespanOn`, in ray/serve/_private/http_util.py:
  startup when the replica starts, shutdown in the replica's `__del__`), which does exactly
  that, so the manager is made and run in the Starlette app's lifespan (`mcp_lifespan`), in
  the replica's own event loop; the replica's shutdown closes it.
- Auth: the same `Authorization: Bearer <key>` as the HTTP API, checked before the MCP layer
  sees the request (no key or a bad one: the HTTP API's 401 problem+json; without a key, the
  anonymous tenant when the config has one, as over HTTP). The admin key runs no agents over
  HTTP (`POST .../runs` refuses it with 401), so it is refused at /mcp the same way.
- The gateway's `max_body_bytes` is the MCP layer's body limit (413 over it).
- Cancellation: a call's runs are durable, as over HTTP. At protocol 2026-07-28 a client
  cancels a call by closing its response stream, and that is all a closed stream can mean to
  the server, so a call whose stream closes before the run ends cancels the run. At
  handshake-era versions a disconnect is explicitly not a cancellation (the run goes on, and
  the `run_id` was in the first progress notification), and `notifications/cancelled` is a
  POST of its own that a stateless server cannot match to the call (the SDK acknowledges and
  drops it): such a client cancels with `POST /v1/runs/{run_id}/cancel`.
- Not in the OpenAPI document: /mcp speaks JSON-RPC as the MCP specification describes, not
  the REST API the document describes (its errors past auth are JSON-RPC errors, not
  problem+json); the document's description points to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from actors.runs_client import Runs
from agents.errors import RayfleetError, Unauthorized
from agents.events import Event, RunCompleted
from agents.logs import bind_run
from agents.tracing import inbound_span
from serve_app.config import AppConfig
from serve_app.http_errors import as_rayfleet_error
from serve_app.http_params import validated
from serve_app.schemas import RunRequest
from serve_app.tenancy import TenantConfig

logger = logging.getLogger("rayfleet")

MCP_PATH = "/mcp"
RUN_META = "io.rayfleet/run"
"""The `_meta` key of a call's result: the run's id, thread, status (and error code)."""
_TENANT = "rayfleet.tenant"
"""The ASGI scope key the authenticated tenant travels under, from auth to the handlers."""

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "output": {"type": "string", "description": "The run's final answer."},
        "run_id": {"type": "string", "description": "The run: GET /v1/runs/{run_id}."},
        "thread_id": {"type": ["string", "null"], "description": "The conversation, if any."},
        "steps": {"type": "integer"},
        "cost_usd": {"type": "number"},
    },
    "required": ["output", "run_id", "thread_id"],
}


def input_schema(versions: list[str]) -> dict[str, Any]:
    """A tool's input: the body of `POST /v1/agents/{agent}/runs`, its versions named."""
    schema = RunRequest.model_json_schema()
    schema.pop("title", None)
    schema["description"] = "Run the agent on `input`; returns its final answer."
    schema["properties"]["version"] = {
        "anyOf": [{"type": "string", "enum": versions}, {"type": "null"}],
        "default": None,
        "description": "Pin an agent version (default: as the traffic split decides).",
    }
    return schema


def _progress_message(event: Event) -> str | None:
    """What a progress notification says about an event (None: not worth one)."""
    match event.kind:
        case "run.created":
            return f"run {event.run_id} started ({event.agent}@{event.version})"
        case "step.started":
            return f"step {event.step}"
        case "tool.call":
            return f"calling tool {event.tool}"
        case "tool.result":
            return f"tool {event.tool} {'answered' if event.ok else 'failed'}"
        case "approval.requested":
            return (
                f"waiting for a person to approve {event.tool} "
                f"(POST /v1/runs/{event.run_id}/approvals/{event.call_id})"
            )
    return None


class McpEndpoint:
    """The /mcp route and its MCP server; the gateway provides what they read and call."""

    _config: AppConfig
    _mcp_manager: StreamableHTTPSessionManager | None = None

    # -- the gateway's ----------------------------------------------------------------------

    async def _client(self) -> Runs:
        raise NotImplementedError

    def _caller(self, request: Request) -> TenantConfig:
        raise NotImplementedError

    def _agents_for(self, tenant: TenantConfig | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def _start(
        self,
        tenant: TenantConfig,
        agent: str,
        input: str,
        thread_id: str | None,
        version: str | None,
        traceparent: str | None = None,
        user: str | None = None,
    ) -> str:
        raise NotImplementedError

    def _events(self, run_id: str, after: int) -> AsyncGenerator[Event, None]:
        raise NotImplementedError

    def _spawn(self, work: Any) -> None:
        raise NotImplementedError

    # -- wiring -----------------------------------------------------------------------------

    def mcp_routes(self) -> list[Route]:
        # An ASGI app as endpoint (not a function): Starlette hands it the raw request.
        return [Route(MCP_PATH, _McpApp(self), methods=["POST"])]

    @contextlib.asynccontextmanager
    async def mcp_lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """The Starlette app's lifespan: the MCP session manager runs (its task group lives)
        from the replica's start to its shutdown, entered and exited in this one task."""
        manager = StreamableHTTPSessionManager(
            self._mcp_server(),
            stateless=True,
            max_request_body_size=self._config.max_body_bytes,
        )
        async with manager.run():
            self._mcp_manager = manager
            try:
                yield
            finally:
                self._mcp_manager = None

    def _mcp_server(self) -> Server[Any]:
        try:
            release = version("rayfleet")
        except PackageNotFoundError:  # a source tree that was never installed
            release = "0+unknown"
        return Server(
            "rayfleet",
            version=release,
            instructions="Each tool is a rayfleet agent: call it with `input`.",
            on_list_tools=self._mcp_list_tools,
            on_call_tool=self._mcp_call_tool,
        )

    async def _serve_mcp(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Before the MCP layer: a missing or bad key is the HTTP API's 401 (raised here, made
        # problem+json by the app's exception handlers).
        scope[_TENANT] = self._caller(Request(scope))
        manager = self._mcp_manager
        if manager is None:
            raise RuntimeError("the MCP session manager is not running (no ASGI lifespan)")
        await manager.handle_request(scope, receive, send)

    # -- the MCP handlers -------------------------------------------------------------------

    async def _mcp_list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tenant = _tenant_of(ctx)
        tools = [
            types.Tool(
                name=agent["name"],
                description=agent["description"] or f"The rayfleet agent {agent['name']}.",
                input_schema=input_schema([v["version"] for v in agent["versions"]]),
                output_schema=OUTPUT_SCHEMA,
            )
            for agent in self._agents_for(tenant)
        ]
        return types.ListToolsResult(tools=tools)

    async def _mcp_call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tenant = _tenant_of(ctx)
        try:  # the HTTP body's rules: the first wrong field named, unknown fields refused
            request = validated(RunRequest, params.arguments or {})
        except RayfleetError as exc:
            return _error(exc.code, exc.message, "not_started", None, None)
        thread_id = request.thread_id
        traceparent = ctx.request.headers.get("traceparent") if ctx.request else None
        try:
            attributes = {"rayfleet.tenant": tenant.id}
            with inbound_span("mcp tools/call", traceparent, attributes) as parent:
                run_id = await self._start(
                    tenant,
                    params.name,
                    request.input,
                    request.thread_id,
                    request.version,
                    parent,
                    request.user,
                )
        except Exception as exc:
            error = as_rayfleet_error(exc)
            if type(error) is RayfleetError:
                logger.error("MCP call of %s failed to start", params.name[:80], exc_info=exc)
            return _error(error.code, error.message, "not_started", None, thread_id)
        bind_run(run_id=run_id)
        modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
        try:
            return await self._follow(ctx, run_id, thread_id)
        except asyncio.CancelledError:
            if modern:  # the client closed the call's stream: at 2026-07-28, its cancel
                self._spawn(self._cancel_run(run_id))
            raise

    async def _follow(
        self, ctx: ServerRequestContext[Any], run_id: str, thread_id: str | None
    ) -> types.CallToolResult:
        """Follow the run to its terminal event, reporting progress on the way."""
        try:
            async with contextlib.aclosing(self._events(run_id, 0)) as events:
                async for event in events:
                    if event.kind == "run.completed":
                        return _completed(event, thread_id)
                    if event.kind == "run.failed":
                        return _error(event.code, event.message, "failed", run_id, thread_id)
                    if event.kind == "run.cancelled":
                        reason = f"run cancelled: {event.reason}"
                        return _error("cancelled", reason, "cancelled", run_id, thread_id)
                    message = _progress_message(event)
                    if message is not None:
                        await ctx.session.report_progress(float(event.seq), None, message)
        except Exception as exc:  # following broke off, not the run: it may go on
            error = as_rayfleet_error(exc)
            return _error(error.code, error.message, "unknown", run_id, thread_id)
        message = f"the run's events ended early; see GET /v1/runs/{run_id}"
        return _error("stream_ended", message, "unknown", run_id, thread_id)

    async def _cancel_run(self, run_id: str) -> None:
        try:
            await (await self._client()).cancel(run_id)
        except Exception as exc:
            logger.warning("cancelling run %s of a cancelled MCP call failed: %r", run_id, exc)


class _McpApp:
    """The /mcp endpoint as an ASGI app (so Starlette passes the request through)."""

    def __init__(self, endpoint: McpEndpoint) -> None:
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._endpoint._serve_mcp(scope, receive, send)


def _tenant_of(ctx: ServerRequestContext[Any]) -> TenantConfig:
    """The tenant `_serve_mcp` authenticated for the HTTP request carrying this message."""
    tenant = ctx.request.scope.get(_TENANT) if ctx.request is not None else None
    if not isinstance(tenant, TenantConfig):
        raise Unauthorized("an API key is required: send `Authorization: Bearer <key>`")
    bind_run(tenant=tenant.id)
    return tenant


def _run_meta(run_id: str | None, thread_id: str | None, status: str, **extra: Any) -> Any:
    return {RUN_META: {"run_id": run_id, "thread_id": thread_id, "status": status, **extra}}


def _completed(event: RunCompleted, thread_id: str | None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=event.output)],
        structured_content={
            "output": event.output,
            "run_id": event.run_id,
            "thread_id": thread_id,
            "steps": event.steps,
            "cost_usd": event.cost_usd,
        },
        meta=_run_meta(event.run_id, thread_id, "completed"),
    )


def _error(
    code: str, message: str, status: str, run_id: str | None, thread_id: str | None
) -> types.CallToolResult:
    """An `isError` result: `status` is the run's (`not_started`: no run; `unknown`: this
    call stopped following it, it may still run)."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{code}: {message}")],
        is_error=True,
        meta=_run_meta(run_id, thread_id, status, code=code),
    )
