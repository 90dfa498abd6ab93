"""A run's MCP tools with its tenant's own tokens (bring your own key).

A tenant's credentials may name a token per MCP server, under `mcp:<server name>`, as an
environment variable or a file (`CredentialRef`). Only those names travel: this port writes them
into the tool's locator for the run, and the process that calls the server reads the token when
it opens the session (actors.mcp_sessions); sessions are kept apart per token. The token itself
is never in a ToolSpec, an event, a log line or a Ray argument.
"""

from __future__ import annotations

from actors.credentials import TenantContext
from agents.messages import ToolCall
from agents.ports import ToolOutcome, ToolPort
from agents.spec import ToolSpec

MCP_CREDENTIAL_PREFIX = "mcp:"


def mcp_credentials(context: TenantContext) -> bool:
    """Whether the tenant's MCP calls need this port: own tokens, or none allowed but its own."""
    own = any(name.startswith(MCP_CREDENTIAL_PREFIX) for name in context.credentials)
    return own or not context.use_default_credentials


class TenantMcpTools:
    """ToolPort: MCP tools of one tenant's run carry its token's locator; others pass through."""

    def __init__(self, tools: ToolPort, context: TenantContext) -> None:
        self._tools = tools
        self._context = context

    async def call(
        self,
        tool: ToolSpec,
        call: ToolCall,
        *,
        idempotency_key: str,
        timeout_s: float,
        tenant: str = "default",
        user: str | None = None,
    ) -> ToolOutcome:
        if tool.mcp is not None:
            ref = self._context.credentials.get(MCP_CREDENTIAL_PREFIX + tool.mcp.server)
            # The deployment's headers are its credentials: a tenant that may not use them
            # and has no token of its own does not reach a server that wants them.
            if ref is None and not self._context.use_default_credentials and tool.mcp.headers_env:
                return ToolOutcome(
                    ok=False,
                    output="",
                    error=f"unavailable: no credentials of this tenant for MCP server "
                    f"{tool.mcp.server}",
                )
            if ref is not None:
                locator = tool.mcp.model_copy(update={"token_env": ref.env, "token_file": ref.file})
                tool = tool.model_copy(update={"mcp": locator})
        return await self._tools.call(
            tool,
            call,
            idempotency_key=idempotency_key,
            timeout_s=timeout_s,
            tenant=tenant,
            user=user,
        )
