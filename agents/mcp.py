"""Tools from MCP servers, as data: the `{mcp: ...}` entry of an agent's `tools:`, the locator
a resolved tool carries instead of a `function`, and the naming of listed tools.

Nothing here talks to a server. `actors.mcp_sessions` lists a server's tools (discovery, at
load or deploy time) and calls them; `resolve_tools` below turns those listings into ordinary
`ToolSpec`s, so an `AgentSpec` stays plain, picklable data that names no live session.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from agents.approvals import ApprovalRule

IDEMPOTENCY_ARG = "idempotency_key"
"""Ours, never the model's: hidden from the schema the model sees, filled in by the pool."""

_SERVER_NAME = r"^[a-z][a-z0-9_-]{0,30}$"
_TOOL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class McpServerSpec(BaseModel):
    """One `{mcp: {...}}` entry of an agent's `tools:`: a server over streamable HTTP and
    which of its tools the agent gets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="The server's streamable HTTP endpoint, e.g. http://h:8000/mcp.")
    name: str | None = Field(
        None,
        pattern=_SERVER_NAME,
        description="Short name of the server: the prefix of its tools' names when two servers "
        "(or a function tool) share one ('<name>__<tool>'), and the key of a tenant's own "
        "token ('mcp:<name>' in its credentials). Default: the URL's host, as a name.",
    )
    tools: tuple[str, ...] | Literal["*"] = Field(
        "*", description="The server's tools the agent gets, by their MCP names; '*': all."
    )
    headers_env: dict[str, str] = Field(
        default_factory=dict,
        description="HTTP headers sent to the server, each read from an environment variable "
        "of the process that calls it (e.g. {Authorization: SEARCH_MCP_AUTH}); never the value.",
    )
    side_effects: tuple[str, ...] = Field(
        (),
        description="Tools (MCP names) that change the world: they get idempotency keys and "
        "the effect ledger, and are never cached or run by shadows. Tools the server marks "
        "destructiveHint: true, or whose input takes `idempotency_key`, are too.",
    )
    approval: ApprovalRule | None = Field(
        None,
        description="Calls of `approval_tools` wait for a person's decision (agents/approvals.py); "
        "`required` is short for a rule with every default.",
    )
    approval_tools: tuple[str, ...] | Literal["*"] = Field(
        "*", description="Which tools `approval` is for (MCP names); '*': all of this server's."
    )
    timeout_s: float | None = Field(None, gt=0, description="Per-call timeout of its tools.")
    cache_ttl_s: float | None = Field(
        None, gt=0, description="Cache the results of its read-only tools for this long."
    )

    @field_validator("approval", mode="before")
    @classmethod
    def _required(cls, value: object) -> object:
        return {} if value == "required" else value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"MCP server url {value!r} is not an http(s) URL")
        if parts.username is not None or parts.password is not None:
            # A URL is logged and stored with every run: secrets go in headers_env.
            raise ValueError("MCP server url carries credentials: put them in headers_env")
        return value

    @field_validator("headers_env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for header, env in value.items():
            if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", env):
                raise ValueError(f"headers_env {header!r}: {env!r} is not an env var name")
        return value

    @model_validator(mode="after")
    def _names_listed(self) -> Self:
        if self.tools != "*":
            for field in ("side_effects", "approval_tools"):
                names = getattr(self, field)
                unlisted = sorted(set(() if names == "*" else names) - set(self.tools))
                if unlisted:
                    raise ValueError(f"{field} names tools not in `tools`: {unlisted}")
        return self

    @property
    def server_name(self) -> str:
        """`name`, or one made from the URL's host ('127.0.0.1' -> 'h127_0_0_1')."""
        if self.name is not None:
            return self.name
        host = (urlsplit(self.url).hostname or "server").lower()
        slug = re.sub(r"[^a-z0-9_]", "_", host)[:30]
        return slug if slug[:1].isalpha() else f"h{slug}"[:31]


class McpLocator(BaseModel):
    """Where a resolved MCP tool lives: what a `ToolSpec` carries instead of a `function`.
    Only names of secrets (env vars, files), never their values: it crosses Ray and is stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    server: str = Field(description="The server's short name (McpServerSpec.server_name).")
    tool: str = Field(description="The tool's name on the server.")
    headers_env: dict[str, str] = Field(default_factory=dict)
    idempotency_arg: bool = Field(
        False, description="The tool's input schema takes `idempotency_key`: the pool fills it."
    )
    token_env: str | None = Field(
        None, description="Set per run: the env var of the tenant's own token for this server."
    )
    token_file: str | None = Field(
        None, description="Set per run: the file of the tenant's own token for this server."
    )

    @property
    def session_key(self) -> tuple[str, ...]:
        """What makes two calls share a session: the server and the credentials they use."""
        headers = tuple(f"{k}={v}" for k, v in sorted(self.headers_env.items()))
        return (self.url, *headers, f"env={self.token_env}", f"file={self.token_file}")


class ListedTool(BaseModel):
    """One tool as a server lists it."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str | None = None
    input_schema: dict[str, JsonValue] = Field(default_factory=dict)
    destructive: bool = Field(
        False, description="The server says it changes the world (destructiveHint: true)."
    )


def model_name(tool: str) -> str:
    """An MCP tool name as a rayfleet tool name (lowercase, [a-z0-9_-], a letter first)."""
    name = re.sub(r"[^a-z0-9_-]", "_", tool.lower())
    return (name if name[:1].isalpha() else f"t{name}")[:63]


def visible_schema(schema: dict[str, JsonValue]) -> tuple[dict[str, JsonValue], bool]:
    """The input schema the model sees (without `idempotency_key`), and whether it had one."""
    properties = schema.get("properties")
    if not isinstance(properties, dict) or IDEMPOTENCY_ARG not in properties:
        return dict(schema) or {"type": "object", "properties": {}}, False
    shown: dict[str, JsonValue] = dict(schema)
    shown["properties"] = {k: v for k, v in properties.items() if k != IDEMPOTENCY_ARG}
    required = schema.get("required")
    if isinstance(required, list):
        shown["required"] = [r for r in required if r != IDEMPOTENCY_ARG]
    return shown, True


def selected(server: McpServerSpec, listed: list[ListedTool]) -> list[ListedTool]:
    """The listed tools the agent asked for; a name the server does not list is an error."""
    if server.tools == "*":
        return listed
    by_name = {tool.name: tool for tool in listed}
    missing = [name for name in server.tools if name not in by_name]
    if missing:
        known = ", ".join(sorted(by_name)) or "none"
        raise ValueError(f"MCP server {server.url} has no tool(s) {missing} (it lists: {known})")
    return [by_name[name] for name in server.tools]


def tool_names(
    servers: list[tuple[McpServerSpec, list[ListedTool]]], taken: set[str]
) -> dict[tuple[int, str], str]:
    """The rayfleet name of each (server index, MCP tool name).

    A tool keeps its own name (made valid by `model_name`) unless another server's tool or a
    tool already in the agent (`taken`) has it; then every tool sharing it is named
    '<server>__<tool>', so the model can tell them apart and neither silently wins."""
    counts: dict[str, int] = {}
    for _, tools in servers:
        for tool in tools:
            base = model_name(tool.name)
            counts[base] = counts.get(base, 0) + 1
    names: dict[tuple[int, str], str] = {}
    for index, (server, tools) in enumerate(servers):
        for tool in tools:
            base = model_name(tool.name)
            shared = counts[base] > 1 or base in taken
            names[(index, tool.name)] = (
                model_name(f"{server.server_name}__{tool.name}") if shared else base
            )
    return names


def mcp_tool_fields(
    servers: tuple[McpServerSpec, ...], listings: list[list[ListedTool]], taken: set[str]
) -> list[dict[str, Any]]:
    """The ToolSpec fields of every tool the servers' entries select from their listings
    (in order), named by `tool_names`; `taken`: the names the agent's other tools have."""
    chosen = [
        (server, selected(server, listed)) for server, listed in zip(servers, listings, strict=True)
    ]
    names = tool_names(chosen, taken)
    fields: list[dict[str, Any]] = []
    for index, (server, tools) in enumerate(chosen):
        for listed in tools:
            schema, takes_key = visible_schema(listed.input_schema)
            wants_approval = server.approval_tools == "*" or listed.name in server.approval_tools
            # Side-effecting if the entry says so, the server says so, or it takes our key: a
            # tool that asks for an idempotency key expects to be called as one.
            side_effects = listed.name in server.side_effects or listed.destructive or takes_key
            locator = McpLocator(
                url=server.url,
                server=server.server_name,
                tool=listed.name,
                headers_env=server.headers_env,
                idempotency_arg=takes_key,
            )
            fields.append(
                {
                    "name": names[(index, listed.name)],
                    "description": listed.description
                    or f"{listed.name} (a tool of MCP server {server.server_name})",
                    "parameters": schema,
                    "mcp": locator.model_dump(),
                    "side_effects": side_effects,
                    "timeout_s": server.timeout_s,
                    "cache_ttl_s": None if side_effects else server.cache_ttl_s,
                    "approval": server.approval.model_dump()
                    if server.approval is not None and wants_approval
                    else None,
                }
            )
    return fields
