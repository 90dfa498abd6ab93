"""The shapes of the HTTP API's answers that the gateway writes as plain dicts, as models:
the OpenAPI document (serve_app/openapi.py) is built from them, and tests validate answers
against them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from actors.batches import BATCH_ID_PATTERN
from actors.outcomes import ShadowComparison, VersionStats
from actors.switches import KillSwitches
from serve_app.traffic import ShadowRule

RUN_ID_PATTERN = r"^run-[a-z0-9]{1,16}-[0-9a-f]{20}$"
"""What `actors.run_host.new_run_id` makes; anything else is an unknown run (404)."""
AGENT_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
"""`AgentSpec.name`."""
MAX_SEQ = 999_999_999_999
"""The gateway reads at most 12 digits of a resume point."""


# -- documentation-only models: the shapes the gateway writes as plain dicts ----------------


class Problem(BaseModel):
    """An error (RFC 9457), from `serve_app/http_errors.py`."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("about:blank", description="Always about:blank: `code` says which error.")
    title: str = Field(description="The error class, e.g. UnknownRun.")
    status: int = Field(ge=400, le=599, description="The HTTP status again.")
    detail: str = Field(description="What was wrong and what would be right.")
    code: str = Field(description="Stable machine-readable code, e.g. unknown_run.")
    field: str | None = Field(None, description="The offending field or header, if one.")


class RunAccepted(BaseModel):
    """`POST /v1/agents/{agent}/runs` without `Accept: text/event-stream`."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(pattern=RUN_ID_PATTERN)
    status_url: str = Field(description="GET it for the run's summary.")
    events_url: str = Field(description="GET it for the run's events as SSE.")


class BatchAccepted(BaseModel):
    """`POST /v1/agents/{agent}/batches`."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    status_url: str = Field(description="GET it for the batch's progress and results.")


class TenantStats(BaseModel):
    """The caller's own outcomes (never another tenant's)."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(description="The caller's tenant.")
    stats: VersionStats


class AgentVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    tiers: list[str]
    tools: list[str]
    stats: VersionStats | None = Field(
        None, description="Outcomes of the version's finished runs (shadow runs excluded)."
    )
    tenant: TenantStats | None = Field(
        None, description="The same, of the caller's runs only: its cost per successful run."
    )


class RolledBack(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(description="Why: the canary gate's breaches, or an admin rollback.")
    at: float = Field(description="When, unix seconds.")


class AgentTrafficState(BaseModel):
    """The live split of an agent's new runs between its versions."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(description="Version -> relative weight, as applied now.")
    stable: str = Field(description="The version a canary is judged against.")
    canary: str | None = Field(description="The version under the canary gate, if any.")
    shadows: list[ShadowRule] = Field(description="Mirrored-traffic rules.")
    rolled_back: RolledBack | None = Field(
        description="Set while a rollback holds the canary's weight at 0."
    )
    killed: dict[str, str] = Field(description="Version -> why it is switched off.")


class AgentInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=AGENT_PATTERN)
    description: str
    current_version: str
    versions: list[AgentVersion]
    traffic: AgentTrafficState | None = None
    tenant: TenantStats | None = Field(
        None, description="The caller's outcomes across the agent's versions."
    )


class OutcomeRecorded(BaseModel):
    """`POST /v1/runs/{run_id}/outcome`: the verdict as stored."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(pattern=RUN_ID_PATTERN)
    success: bool
    score: float | None = None


class KillState(BaseModel):
    """`POST /v1/admin/kill`: the admin's switches after the change (the config's apart)."""

    model_config = ConfigDict(extra="forbid")

    kill: KillSwitches


class RollbackDone(BaseModel):
    """`POST /v1/admin/agents/{agent}/rollback`: the agent's traffic after the rollback."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(pattern=AGENT_PATTERN)
    traffic: AgentTrafficState


class ShadowReport(BaseModel):
    """`GET /v1/admin/agents/{agent}/shadows`: each (primary, shadow) version pair."""

    model_config = ConfigDict(extra="forbid")

    pairs: list[ShadowComparison]


class AgentList(BaseModel):
    """`GET /v1/agents`."""

    model_config = ConfigDict(extra="forbid")

    agents: list[AgentInfo]


class Health(BaseModel):
    """`GET /healthz`."""

    model_config = ConfigDict(extra="forbid")

    status: str
