"""AgentSpec: what a team writes to define an agent, loadable from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agents.approvals import ApprovalRule
from agents.errors import AgentSpecError
from agents.guardrails import schema_problem
from agents.mcp import ListedTool, McpLocator, McpServerSpec, mcp_tool_fields
from agents.messages import ToolSchema

_NAME = r"^[a-z][a-z0-9_-]{0,62}$"


Isolation = Literal["host", "process"]
"""Where a function tool runs: in the run's own host process, or in the shared tool-pool actor."""


def _empty_object_schema() -> dict[str, JsonValue]:
    return {"type": "object", "properties": {}}


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelRef(_Config):
    """One model at one provider; a tier is a chain of these, tried in order."""

    provider: str = Field(description="Provider name from the deploy config, e.g. 'sim-openai'.")
    model: str = Field(description="The provider's model name.")


class TierSpec(_Config):
    """A model tier: a fallback chain and the settings every call on it uses."""

    chain: tuple[ModelRef, ...] = Field(min_length=1, description="Models tried in order.")
    max_output_tokens: int = Field(1024, gt=0, description="Cap on tokens generated per call.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature.")


class ToolSpec(_Config):
    """A tool: a Python function ('module:attribute' of an async or sync callable), a
    sub-agent (`agent`) that runs on the task the model hands it and answers with its output,
    or a tool of an MCP server (`mcp`, made from the agent's `{mcp: ...}` entries when it is
    loaded: see agents/mcp.py).
    """

    name: str = Field(pattern=_NAME, description="The name the model calls the tool by.")
    description: str = Field(min_length=1, description="What the model is told the tool does.")
    parameters: dict[str, JsonValue] = Field(
        default_factory=_empty_object_schema,
        description="JSON schema of the arguments.",
    )
    function: str | None = Field(
        None, pattern=r"^[\w.]+:[\w.]+$", description="Import path 'module:attr'."
    )
    agent: AgentSpec | None = Field(
        None,
        description="A sub-agent used as this tool (in YAML: a path to its spec file, relative "
        "to this one). It gets the `task` argument as its input, runs with its own tiers and "
        "budgets (its dollars capped by what the caller has left) and streams nested events.",
    )
    mcp: McpLocator | None = Field(
        None, description="A tool of an MCP server (filled in by discovery, not written by hand)."
    )
    side_effects: bool = Field(False, description="True if calling it changes the world.")
    dry_run_result: JsonValue | None = Field(
        None,
        description="What a shadow run gets from this side-effecting tool when the primary "
        "run made no matching call (shadows never execute side effects).",
    )
    timeout_s: float | None = Field(
        None, gt=0, description="Per-call timeout; default is the agent's tool_call_timeout_s."
    )
    cache_ttl_s: float | None = Field(
        None,
        gt=0,
        description="Cache results for this long, per tenant and arguments (off if unset). "
        "Not allowed on side-effecting tools.",
    )

    isolation: Isolation | None = Field(
        None,
        description="Where a function tool runs. 'host': inside the process of the run's host, "
        "async functions on its event loop and sync ones in its small thread pool, with no "
        "Ray hop (for plain Python tools that do not block or crash their process). "
        "'process': in the shared tool-pool actor, so a tool that crashes, leaks or blocks "
        "cannot take runs down with it, and an effect in flight outlives a run host that "
        "dies. Unset: 'process' for tools with side_effects or max_concurrency, else 'host'.",
    )
    max_concurrency: int | None = Field(
        None,
        gt=0,
        description="Cluster-wide cap on this tool's calls in flight (a rate-limited API); "
        "kept by the shared tool-pool actor, so the tool runs there (isolation 'process'). "
        "Unset: only the pool's own limit.",
    )

    approval: ApprovalRule | None = Field(
        None,
        description="Calls wait for a person's decision before the tool runs (all of them, or "
        "those the rule's `when` and `tenants` pick): see agents/approvals.py. `required` is "
        "short for a rule with every default.",
    )

    @field_validator("approval", mode="before")
    @classmethod
    def _required(cls, value: object) -> object:
        return {} if value == "required" else value

    @field_validator("parameters")
    @classmethod
    def _parameters_schema(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        # Checked at load time: every call's arguments are validated against it (a schema
        # that cannot be compiled would fail each call instead, at 3 a.m.).
        problem = schema_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _function_or_agent(self) -> Self:
        kinds = [k for k in (self.function, self.agent, self.mcp) if k is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"tool {self.name!r} needs exactly one of 'function' and 'agent' (or 'mcp', "
                "which a {mcp: ...} entry of the agent's tools makes)"
            )
        return self

    @model_validator(mode="after")
    def _no_cached_side_effects(self) -> Self:
        if self.side_effects and self.cache_ttl_s is not None:
            raise ValueError(f"tool {self.name!r} has side_effects: true and cannot be cached")
        if self.agent is not None and self.cache_ttl_s is not None:
            raise ValueError(
                f"tool {self.name!r} is a sub-agent: cache its calls with the sub-agent's own "
                "response_cache_ttl_s and tool caches, not cache_ttl_s"
            )
        return self

    @model_validator(mode="after")
    def _approval_on_functions(self) -> Self:
        if self.agent is None:
            return self
        if self.approval is not None or any(t.approval for t in self.agent.tools):
            # A pause inside a sub-agent would have to resume two nested loops from one
            # decision; not built yet, so refused at load rather than half-working.
            raise ValueError(
                f"tool {self.name!r} is a sub-agent: approvals are for function tools of the "
                "agent the run starts with (not on a sub-agent, nor on its tools)"
            )
        return self

    @model_validator(mode="after")
    def _placement(self) -> Self:
        placed = self.isolation is not None or self.max_concurrency is not None
        if self.agent is not None and placed:
            raise ValueError(
                f"tool {self.name!r} is a sub-agent, run by its caller's loop: isolation and "
                "max_concurrency are for function tools"
            )
        if self.max_concurrency is not None and self.isolation == "host":
            raise ValueError(
                f"tool {self.name!r} has max_concurrency, a cluster-wide cap that only the "
                "shared tool pool can keep: use isolation: process (or leave it unset)"
            )
        return self

    @property
    def runs_in(self) -> Isolation:
        """Where a call of this function tool runs: `isolation`, or the default for its kind."""
        if self.isolation is not None:
            return self.isolation
        return "process" if self.side_effects or self.max_concurrency is not None else "host"

    def schema_for_model(self) -> ToolSchema:
        return ToolSchema(name=self.name, description=self.description, parameters=self.parameters)


class BudgetSpec(_Config):
    """Hard limits per run, checked before every step."""

    max_steps: int = Field(10, gt=0, description="Loop iterations (model calls) per run.")
    max_tokens: int = Field(200_000, gt=0, description="Tokens in and out per run.")
    max_cost_usd: float = Field(1.0, gt=0, description="Dollars per run.")
    run_timeout_s: float = Field(600.0, gt=0, description="Wall clock per run.")
    max_side_effects: int = Field(
        10,
        ge=0,
        description="Side-effecting tool calls (with valid arguments) the model may ask for "
        "in one run; asking for more fails the run (code side_effects_exceeded) before any "
        "call of that step runs. A resumed run's recorded calls count once. 0: none.",
    )
    wrap_up: bool = Field(
        True,
        description="Near a limit (or at max_steps), make one last model call without tools "
        "to answer with what the run has, instead of failing.",
    )
    wrap_up_reserve_s: float = Field(
        10.0, ge=0, description="Seconds of run_timeout_s kept for the wrap-up call."
    )


class ContextSpec(_Config):
    """How much conversation a model call may carry. Tokens are estimated as
    ceil(characters / 4) per message part (agents.tokens), the simulator's own count."""

    max_tokens: int | None = Field(
        None,
        gt=0,
        description="Token budget of one model call's input; beyond it old turns are "
        "summarised on the cheap tier, then history outside the window is dropped. "
        "Unset: no limit.",
    )
    tool_output_max_tokens: int | None = Field(
        2000,
        gt=0,
        description="A tool output longer than this is sent truncated (head and tail kept, "
        "marked); the run log keeps it whole. Unset: never truncated.",
    )
    keep_recent_messages: int = Field(
        6,
        ge=1,
        description="Latest messages kept out of the summary; dropped (oldest first, never "
        "the latest turn or the request) only if the call still does not fit.",
    )
    summarize: bool = Field(
        True, description="Summarise old turns on the cheap tier; false: drop them."
    )


class TimeoutSpec(_Config):
    """Per-call timeouts; each call also gets no more than what is left of the run."""

    model_call_timeout_s: float = Field(60.0, gt=0, description="One model call.")
    tool_call_timeout_s: float = Field(
        15.0, gt=0, description="One tool call, unless the tool says."
    )


class AgentSpec(_Config):
    """An agent: prompt, model tiers, tools and budgets. One spec is one version."""

    name: str = Field(pattern=_NAME, description="Agent name, used in URLs.")
    version: str = Field("v1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$", description="Version.")
    description: str = Field("", description="One line for people.")
    system_prompt: str = Field(min_length=1, description="The system message.")
    tiers: dict[str, TierSpec] = Field(min_length=1, description="Tier name -> model chain.")
    loop_tier: str = Field("strong", description="The tier the main loop's steps use.")
    wrap_up_tier: str | None = Field(
        None, description="Tier of the wrap-up call; default 'fast' if declared, else loop_tier."
    )
    tools: tuple[ToolSpec, ...] = Field(
        (),
        description="Tools the model may call. An entry `{mcp: {url: ..., tools: [...] | '*'}}` "
        "names an MCP server instead (moved to `mcp_servers`, its tools listed at load).",
    )
    mcp_servers: tuple[McpServerSpec, ...] = Field(
        (), description="The `{mcp: ...}` entries of `tools`, in order."
    )
    mcp_listed: bool = Field(
        False,
        description="True once the servers' tools have been listed and added to `tools` "
        "(actors.mcp_sessions.discover); a run needs it if there are servers.",
    )
    budgets: BudgetSpec = Field(default_factory=BudgetSpec, description="Per-run limits.")
    context: ContextSpec = Field(
        default_factory=ContextSpec, description="Context pruning: how much a model call carries."
    )
    response_cache_ttl_s: float | None = Field(
        None,
        gt=0,
        description="Serve repeated deterministic model calls (temperature 0, same tier, "
        "messages and tools) from a per-tenant cache for this long. Unset: off.",
    )
    timeouts: TimeoutSpec = Field(default_factory=TimeoutSpec, description="Per-call timeouts.")
    tool_output_max_bytes: int = Field(
        65_536,
        ge=1024,
        description="A tool's output (or error) larger than this, in UTF-8 bytes, is cut to it "
        "before it enters the run: the log, the model and the caller get the head, marked "
        "as truncated (and the tool.result says so).",
    )
    trace_content: bool = Field(
        False,
        description="Record the run's input and answer, and its tool calls' arguments and "
        "results, in its trace spans. Off: spans carry no message content.",
    )

    @field_validator("loop_tier", "wrap_up_tier")
    @classmethod
    def _tier_known(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A field validator (not the model validator) so the error's path names the field.
        tiers = info.data.get("tiers")
        if value is not None and tiers is not None and value not in tiers:
            known = ", ".join(sorted(tiers))
            agent = info.data.get("name", "?")
            raise ValueError(f"unknown tier {value!r} in agent {agent!r} (known: {known})")
        return value

    @model_validator(mode="before")
    @classmethod
    def _mcp_entries(cls, data: Any) -> Any:
        # `{mcp: {...}}` in `tools` is a server, not a tool: kept apart so `tools` holds only
        # ToolSpecs (a resolved MCP ToolSpec has a `name`, so the two never look alike).
        if not isinstance(data, dict) or not isinstance(data.get("tools"), list | tuple):
            return data
        entries = [t for t in data["tools"] if isinstance(t, dict) and set(t) == {"mcp"}]
        if not entries:
            return data
        tools = [t for t in data["tools"] if not (isinstance(t, dict) and set(t) == {"mcp"})]
        servers = [*data.get("mcp_servers", ()), *(entry["mcp"] for entry in entries)]
        return {**data, "tools": tools, "mcp_servers": servers}

    @model_validator(mode="after")
    def _servers_distinct(self) -> Self:
        names = [server.server_name for server in self.mcp_servers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"MCP servers of agent {self.name!r} share the name(s) {duplicates}: give "
                "each a distinct `name`"
            )
        return self

    @model_validator(mode="after")
    def _references_resolve(self) -> Self:
        names = [tool.name for tool in self.tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate tool names in agent {self.name!r}: {duplicates}")
        return self

    @property
    def key(self) -> str:
        """'name@version', the deployment's identity."""
        return f"{self.name}@{self.version}"

    @property
    def wrap_up_tier_name(self) -> str:
        if self.wrap_up_tier is not None:
            return self.wrap_up_tier
        return self.cheap_tier_name

    @property
    def cheap_tier_name(self) -> str:
        """The tier for summaries (and, by default, the wrap-up): 'fast' if declared."""
        return "fast" if "fast" in self.tiers else self.loop_tier

    def with_mcp_tools(self, listings: list[list[ListedTool]]) -> AgentSpec:
        """This spec with its MCP servers' tools added as ToolSpecs (`listings`: what each
        server in `mcp_servers` lists, in order). Raises ValueError for a tool the entry names
        that the server does not list, or a schema that is not one."""
        if self.mcp_listed:
            return self
        added = mcp_tool_fields(self.mcp_servers, listings, {tool.name for tool in self.tools})
        data = self.model_dump()
        # Validated again: a new name must not clash with one already there.
        return AgentSpec.model_validate(
            {**data, "tools": [*data["tools"], *added], "mcp_listed": True}
        )

    def mcp_unlisted(self) -> bool:
        """Whether it, or a sub-agent of it, names MCP servers whose tools were not listed."""
        if self.mcp_servers and not self.mcp_listed:
            return True
        return any(tool.agent is not None and tool.agent.mcp_unlisted() for tool in self.tools)

    def tool(self, name: str) -> ToolSpec | None:
        return next((tool for tool in self.tools if tool.name == name), None)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<memory>") -> AgentSpec:
        """Validate a parsed mapping; errors name the source and the field path."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise AgentSpecError(_describe(exc, source), source) from None

    @classmethod
    def from_yaml(cls, path: str | Path, _loading: tuple[Path, ...] = ()) -> AgentSpec:
        """Load one agent spec from a YAML file, and the sub-agents it names by path."""
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise AgentSpecError(f"{source}: cannot read: {exc.strerror}", source) from None
        except yaml.YAMLError as exc:
            raise AgentSpecError(f"{source}: not valid YAML: {exc}", source) from None
        here = Path(path).resolve()
        if here in _loading:
            raise AgentSpecError(f"{source}: sub-agents refer to each other in a cycle", source)
        tools = data.get("tools") if isinstance(data, dict) else None
        for tool in tools if isinstance(tools, list) else []:
            if isinstance(tool, dict) and isinstance(tool.get("agent"), str):
                tool["agent"] = cls.from_yaml(here.parent / tool["agent"], (*_loading, here))
        return cls.from_mapping(data, source)


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if loc[:1] == ["mcp_servers"] and len(loc) > 1 and isinstance(loc[1], int):
            # Written as `tools: [{mcp: ...}]`: name it so, not by the field it moved to.
            loc = [f"tools (mcp entry {loc[1] + 1})", *loc[2:]]
        path = ".".join(str(part) for part in loc) or "(top level)"
        lines.append(f"{source}: {path}: {error['msg']}")
    return "\n".join(lines)


ToolSpec.model_rebuild()  # `agent` refers to AgentSpec, defined after it
