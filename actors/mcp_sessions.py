"""Sessions with MCP servers: one long-lived client session per server (and credentials) per
host process, and discovery of a server's tools at load time.

Why a dedicated task: the SDK's client (`mcp.Client` over `streamable_http_client`) opens anyio
task groups and cancel scopes on enter that must be exited by the same task. A session opened
in one caller's task and closed in another's fails ("Attempted to exit cancel scope in a
different task"); one per call breaks stateful servers and costs a handshake each time. So each
`McpSession` has an owner task that opens the client, runs every request as a child task of its
own task group, and closes it; callers only put requests on its queue and await a future.

The owner connects lazily (on the first request), and again after the session breaks (the
server restarted: its answer 'Session terminated'; or the connection dropped). A failed connect
is retried no sooner than an exponential backoff allows; meanwhile requests fail at once as
`ToolUnavailable` (transient: the tool pool retries them within the call's deadline, and the
model hears "unavailable" if the server stays down).

Credentials: header values are read from environment variables (and a tenant's own token from
its `CredentialRef`) in this process, when the session connects; they are never logged, never
put in an error, an event or a Ray argument.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import httpx2
from mcp import Client
from mcp.client.client import ConnectMode
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent
from mcp_types.jsonrpc import CONNECTION_CLOSED, INVALID_REQUEST

from actors.credentials import CredentialRef
from agents.errors import AgentSpecError, ConfigError, ToolFailed, ToolUnavailable
from agents.mcp import IDEMPOTENCY_ARG, ListedTool, McpLocator, McpServerSpec
from agents.spec import AgentSpec

logger = logging.getLogger("rayfleet")

T = TypeVar("T")

IDEMPOTENCY_META = "io.rayfleet/idempotency-key"
"""The `_meta` key every call of a side-effecting tool carries its idempotency key under."""

_TIMEOUT = httpx2.Timeout(10.0, read=300.0)  # a response stream may stay open a while


class _Request:
    __slots__ = ("future", "op", "retry_safe", "scope", "sent")

    def __init__(
        self,
        op: Callable[[Client], Awaitable[Any]],
        future: asyncio.Future[Any],
        retry_safe: bool,
    ):
        self.op = op
        self.future = future
        self.retry_safe = retry_safe
        self.sent = False
        self.scope: anyio.CancelScope | None = None

    def lost(self, why: str) -> ToolFailed:
        """The error of a request whose session broke: transient, unless it may have reached
        the server and repeating it is not safe (a side effect without an idempotency key
        the server reads), which is never retried."""
        if self.sent and not self.retry_safe:
            return ToolFailed(f"{why}; the call may have run, so it is not repeated")
        return ToolUnavailable(why)


class _Broken(Exception):
    """The session cannot be used any more: close it and connect again."""


class McpSession:
    """One server, one set of credentials, one client session owned by one task.

    `headers` is called in the owner task when it connects (values read then, never kept
    elsewhere). `connects` counts sessions opened (one across many calls, one more after each
    restart of the server)."""

    def __init__(
        self,
        url: str,
        headers: Callable[[], dict[str, str]],
        *,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        mode: ConnectMode = "auto",
        connect_s: float = 10.0,
    ) -> None:
        self.url = url
        self._connect_s = connect_s
        self._mode: ConnectMode = mode
        self.connects = 0
        self._headers = headers
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._owner: asyncio.Task[None] | None = None
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._failures = 0
        self._retry_at = 0.0
        self.last_used = 0.0
        """Loop time of the last request, or of the last answer while any is in flight."""
        self._in_flight = 0

    @property
    def running(self) -> bool:
        """Whether its owner task is alive (connected, or waiting for work)."""
        return self._owner is not None and not self._owner.done()

    def idle_for(self, now: float) -> float:
        """Seconds since this session was last used; 0 while a request is in flight."""
        return 0.0 if self._in_flight else now - self.last_used

    async def request(self, op: Callable[[Client], Awaitable[T]], retry_safe: bool = True) -> T:
        """Run `op` with the connected client, in a child task of the owner. Raises
        ToolUnavailable if the server cannot be reached (transient), or what `op` raised;
        `retry_safe=False`: a request the session lost after sending it is not transient."""
        if self._owner is None or self._owner.done():
            # A context of its own: the owner serves every caller, and must not carry the
            # first one's (its trace, its run's log fields) into the others' requests.
            self._owner = asyncio.create_task(
                self._own(), name=f"mcp-session {self.url}", context=contextvars.Context()
            )
        request = _Request(op, asyncio.get_running_loop().create_future(), retry_safe)
        # A caller that gives up (its deadline, a cancelled run) cancels the future: the
        # request's own scope is cancelled then, inside the owner's task group.
        request.future.add_done_callback(
            lambda f: _cancel_scope(request) if f.cancelled() else None
        )
        self._queue.put_nowait(request)
        self._in_flight += 1
        try:
            result: T = await request.future
        finally:
            self._in_flight -= 1
            self.last_used = asyncio.get_running_loop().time()
        return result

    async def aclose(self) -> None:
        """Close the session (in its owner task) and fail what is queued."""
        owner, self._owner = self._owner, None
        if owner is not None and not owner.done():
            owner.cancel()
            try:
                await owner
            except asyncio.CancelledError:
                pass
        self._fail_queued(ToolUnavailable(f"MCP session to {self.url} closed"))

    async def _own(self) -> None:
        """The owner task: connect when there is work, serve until broken, repeat."""
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if first.future.done():
                continue
            # After a failed connect, wait out the backoff before the next: callers wait
            # too (within their own deadlines) instead of failing at once.
            await asyncio.sleep(max(0.0, self._retry_at - loop.time()))
            if first.future.done():
                continue
            try:
                with anyio.CancelScope(deadline=anyio.current_time() + self._connect_s) as limit:
                    await self._connected(first, limit)
                if limit.cancelled_caught:
                    raise TimeoutError(f"no session within {self._connect_s:g}s")
            except ConfigError as exc:  # a credential not set here: no retry will find it
                _settle(first, ToolFailed(str(exc)))
                self._fail_queued(ToolFailed(str(exc)))
            except Exception as exc:
                # No session (or it broke at once): back off before the next try.
                self._failures += 1
                exponent = self._failures - 1
                backoff = min(self._max_backoff_s, self._initial_backoff_s * 2**exponent)
                self._retry_at = loop.time() + backoff
                error = ToolUnavailable(f"MCP server {self.url} is unavailable: {_describe(exc)}")
                _settle(first, error)
                self._fail_queued(error)

    async def _connected(self, first: _Request, limit: anyio.CancelScope) -> None:
        """One session: open it in this task (within `limit`'s deadline, lifted once open),
        serve requests until one finds it broken."""
        http = httpx2.AsyncClient(headers=self._headers(), timeout=_TIMEOUT)
        broken = anyio.Event()
        transport = streamable_http_client(self.url, http_client=http)
        async with http, Client(transport, mode=self._mode) as client:
            limit.deadline = math.inf
            self.connects += 1
            self._failures = 0
            logger.info("MCP session to %s open", self.url)
            async with anyio.create_task_group() as group:
                group.start_soon(self._serve, client, first, broken)

                async def take() -> None:
                    while True:
                        request = await self._queue.get()
                        if not request.future.done():
                            group.start_soon(self._serve, client, request, broken)

                group.start_soon(take)
                await broken.wait()
                group.cancel_scope.cancel()  # requests in flight fail as unavailable
        logger.info("MCP session to %s closed, reconnecting on the next call", self.url)

    async def _serve(self, client: Client, request: _Request, broken: anyio.Event) -> None:
        """One request, in a child task of the owner's task group."""
        try:
            with anyio.CancelScope() as scope:
                request.scope = scope
                if request.future.done():  # cancelled while queued
                    return
                request.sent = True
                value = await request.op(client)
                _settle(request, value)
                return
            _settle(request, ToolUnavailable(f"call to MCP server {self.url} was cancelled"))
        except MCPError as exc:
            if not _session_lost(exc):
                # The server answered this request with an error (a bad call, a 4xx/5xx
                # reply): it fails alone, not retried; the session and other calls go on.
                _settle(request, ToolFailed(f"MCP server {self.url}: {exc.error.message}"))
                return
            broken.set()  # the server restarted and forgot the session, or it closed
            _settle(request, request.lost(f"MCP server {self.url}: {exc.error.message}"))
        except ToolFailed as exc:
            _settle(request, exc)
        except anyio.get_cancelled_exc_class():
            _settle(request, request.lost(f"MCP session to {self.url} was reset"))
            raise
        except Exception as exc:  # the transport: connection refused, dropped, protocol
            broken.set()
            _settle(request, request.lost(f"MCP server {self.url}: {_describe(exc)}"))

    def _fail_queued(self, error: Exception) -> None:
        while not self._queue.empty():
            _settle(self._queue.get_nowait(), error)


def _session_lost(exc: MCPError) -> bool:
    """Whether an error means the session is gone (not that this request failed): the
    connection closed, or the server no longer knows the session (its 404 reaches us as
    INVALID_REQUEST: the server's own text, e.g. 'Session not found', or the SDK's
    'Session terminated')."""
    code, message = exc.error.code, exc.error.message
    return code == CONNECTION_CLOSED or (code == INVALID_REQUEST and "session" in message.lower())


def _cancel_scope(request: _Request) -> None:
    if request.scope is not None:
        request.scope.cancel()


def _settle(request: _Request, value: Any) -> None:
    if request.future.done():
        return
    if isinstance(value, BaseException):
        request.future.set_exception(value)
    else:
        request.future.set_result(value)


def locator_headers(locator: McpLocator) -> dict[str, str]:
    """The headers of a session for `locator`, read now. A tenant's own token replaces the
    deployment's `headers_env` (its credentials) entirely; errors name the variable or
    file, never a value."""
    if locator.token_env is None and locator.token_file is None:
        return _env_headers(locator.headers_env, locator.url)
    token = CredentialRef(env=locator.token_env, file=locator.token_file).resolve().strip()
    where = f"the tenant's token for MCP server {locator.server}"
    return {"Authorization": f"Bearer {_header_value(token, where)}"}


def _env_headers(headers_env: dict[str, str], url: str) -> dict[str, str]:
    headers = {}
    for header, env in headers_env.items():
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"MCP server {url}: header {header} variable {env} is not set")
        headers[header] = _header_value(value, f"MCP server {url}: header {header} variable {env}")
    return headers


def _header_value(value: str, where: str) -> str:
    # A value the HTTP library refuses would be quoted in its error, and errors reach the
    # model and the run's events: refuse it here, naming only where it came from.
    if not all(" " <= ch <= "~" for ch in value):
        raise ConfigError(f"{where} holds characters a header value may not have")
    return value


class McpSessions:
    """The sessions of one process (one event loop): one per server and credentials.

    A session unused for `idle_close_s` is closed (in its owner task), so a process that
    served many tenants' tokens once does not keep a connection per token for its life; the
    next call opens a new one."""

    def __init__(
        self,
        *,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        mode: ConnectMode = "auto",
        idle_close_s: float = 300.0,
    ) -> None:
        """`mode`: the SDK's protocol negotiation ('auto': the newest the server speaks;
        'legacy': the stateful initialize handshake of pre-2026 servers)."""
        self._sessions: dict[tuple[str, ...], McpSession] = {}
        self._backoff = (initial_backoff_s, max_backoff_s)
        self._mode: ConnectMode = mode
        self._idle_close_s = idle_close_s
        self._swept_at = 0.0
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    def session(self, locator: McpLocator) -> McpSession:
        key = locator.session_key
        self._close_idle()
        found = self._sessions.get(key)
        if found is None:
            found = self._sessions[key] = McpSession(
                locator.url,
                lambda: locator_headers(locator),
                initial_backoff_s=self._backoff[0],
                max_backoff_s=self._backoff[1],
                mode=self._mode,
            )
        return found

    def _close_idle(self) -> None:
        """Close sessions idle for `idle_close_s`; looked at most every tenth of that."""
        now = asyncio.get_running_loop().time()
        if now - self._swept_at < self._idle_close_s / 10:
            return
        self._swept_at = now
        for key, session in list(self._sessions.items()):
            if session.idle_for(now) >= self._idle_close_s:
                del self._sessions[key]
                closing = asyncio.create_task(session.aclose(), name=f"mcp-close {session.url}")
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)

    async def call(
        self, locator: McpLocator, arguments: dict[str, Any], idempotency_key: str | None
    ) -> Any:
        """Call the tool; its output (structured content, else its text). A result with
        isError raises ToolFailed (not transient: the tool answered); an unreachable server
        ToolUnavailable."""
        arguments = dict(arguments)
        meta: dict[str, Any] | None = None
        if idempotency_key is not None:
            meta = {IDEMPOTENCY_META: idempotency_key}
            if locator.idempotency_arg:
                arguments[IDEMPOTENCY_ARG] = idempotency_key

        async def op(client: Client) -> CallToolResult:
            return await client.call_tool(locator.tool, arguments, meta=meta)  # type: ignore[arg-type]

        # A side effect the server cannot recognise as a repeat (no idempotency_key argument)
        # is not sent twice: lost after sending, it fails instead of being retried.
        retry_safe = idempotency_key is None or locator.idempotency_arg
        result = await self.session(locator).request(op, retry_safe)
        text = "\n".join(b.text for b in result.content if isinstance(b, TextContent))
        if result.is_error:
            raise ToolFailed(text or f"MCP tool {locator.tool} failed", locator.tool)
        # Text first: servers send structured content as text too (the spec asks them to),
        # and a primitive's structured form is only {"result": ...} around it.
        if any(isinstance(b, TextContent) for b in result.content):
            return text
        if result.structured_content is not None:
            return result.structured_content
        return [b.model_dump(mode="json", by_alias=True) for b in result.content]

    async def aclose(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.aclose()
        await asyncio.gather(*self._closing)


async def list_server_tools(server: McpServerSpec, timeout_s: float = 15.0) -> list[ListedTool]:
    """Every tool `server` lists (all pages), through a session opened and closed in this
    task: discovery runs once per load, not on the hot path."""
    headers = _env_headers(server.headers_env, server.url)
    listed: list[ListedTool] = []
    with anyio.fail_after(timeout_s):
        async with (
            httpx2.AsyncClient(headers=headers, timeout=_TIMEOUT) as http,
            Client(streamable_http_client(server.url, http_client=http)) as client,
        ):
            cursor: str | None = None
            for _ in range(100):  # bounded: a server that pages forever is a broken one
                page = await client.list_tools(cursor=cursor)
                listed.extend(
                    ListedTool(
                        name=t.name,
                        description=t.description,
                        input_schema=t.input_schema,
                        destructive=t.annotations is not None
                        and t.annotations.destructive_hint is True,
                    )
                    for t in page.tools
                )
                cursor = page.next_cursor
                if cursor is None:
                    break
    return listed


async def discover(spec: AgentSpec, source: str = "<memory>") -> AgentSpec:
    """`spec` with its MCP servers' tools added (see AgentSpec.with_mcp_tools), its
    sub-agents' too. A server that cannot be reached is an AgentSpecError naming its URL."""
    if not spec.mcp_unlisted():
        return spec
    tools = [
        tool.model_copy(update={"agent": await discover(tool.agent, source)})
        if tool.agent is not None and tool.agent.mcp_unlisted()
        else tool
        for tool in spec.tools
    ]
    spec = spec.model_copy(update={"tools": tuple(tools)})
    if not spec.mcp_servers or spec.mcp_listed:
        return spec
    listings = []
    for server in spec.mcp_servers:
        try:
            listings.append(await list_server_tools(server))
        except ConfigError as exc:
            raise AgentSpecError(f"{source}: {exc}", source) from None
        except Exception as exc:
            raise AgentSpecError(
                f"{source}: agent {spec.name!r}: MCP server {server.url} cannot be reached to "
                f"list its tools: {_describe(exc)}",
                source,
            ) from None
    try:
        return spec.with_mcp_tools(listings)
    except ValueError as exc:  # pydantic's ValidationError is one
        raise AgentSpecError(f"{source}: agent {spec.name!r}: {exc}", source) from None


def discover_now(spec: AgentSpec, source: str = "<memory>") -> AgentSpec:
    """`discover` for synchronous loaders; in a thread of its own if this one runs a loop."""
    if not spec.mcp_unlisted():
        return spec
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(discover(spec, source))
    outcome: list[AgentSpec | BaseException] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(discover(spec, source)))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="mcp-discovery")
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _describe(exc: BaseException) -> str:
    # Task groups wrap the real cause: name the first leaf, not "unhandled errors in a group".
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
