"""The bodies and queries the HTTP API accepts: validated by the gateway, documented by the
OpenAPI document (serve_app.openapi), from the same models."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from actors.batches import DEFAULT_CONCURRENCY, MAX_CONCURRENCY, MAX_ITEMS, BatchInput
from actors.state.run_index import MAX_PAGE
from agents.guardrails import EndUser
from agents.summary import RunStatus

THREAD_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


class OutcomeRequest(BaseModel):
    """Body of `POST /v1/runs/{id}/outcome`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    success: bool = Field(description="Did the run do what the user needed?")
    score: float | None = Field(None, allow_inf_nan=False, description="Optional quality score.")


class KillRequest(BaseModel):
    """Body of `POST /v1/admin/kill`: a reason switches off, null switches back on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scope: Literal["global", "agents", "versions", "tenants", "tools", "models"]
    name: str = Field("", max_length=200, description="What to switch (not for global).")
    reason: str | None = Field(None, max_length=500, description="Shown to callers.")


class RunRequest(BaseModel):
    """Body of `POST /v1/agents/{agent}/runs`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = Field(min_length=1, max_length=100_000, description="The user's request.")
    thread_id: str | None = Field(
        None, pattern=THREAD_ID_PATTERN, description="Continue this conversation."
    )
    version: str | None = Field(None, description="Pin an agent version (default: current).")
    user: EndUser | None = Field(
        None,
        description="The end user the run acts for, in your own terms (1 to 128 printable "
        "ASCII characters, e.g. a customer id): tools that take a `user` argument receive it "
        "beside the tenant, so they can check what is this user's. Not authenticated by "
        "rayfleet: it is your tenant's word for who asked.",
    )


class ApprovalDecision(BaseModel):
    """Body of `POST /v1/runs/{run_id}/approvals/{call_id}`: a person's decision on a tool
    call the run waits on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    decision: Literal["approve", "edit", "reject"] = Field(
        description="approve: the tool runs; edit: it runs with `arguments`; reject: it never "
        "runs, and the model gets `message` as its answer."
    )
    arguments: dict[str, JsonValue] | None = Field(
        None, description="With `edit` only: the arguments the tool runs with instead."
    )
    message: str | None = Field(
        None, max_length=2000, description="Why: a rejection's message reaches the model."
    )


def _texts_as_inputs(schema: dict[str, Any]) -> None:
    # The validator below turns a plain string into {"input": ...}: document both forms.
    text = {"type": "string", "minLength": 1, "maxLength": 100_000}
    schema["items"] = {"anyOf": [schema["items"], text]}


class BatchRequest(BaseModel):
    """Body of `POST /v1/agents/{agent}/batches`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: list[BatchInput] = Field(
        min_length=1,
        max_length=MAX_ITEMS,
        description=f"1 to {MAX_ITEMS} inputs: objects like a run's body (without `version`) "
        "or plain strings.",
        json_schema_extra=_texts_as_inputs,
    )
    concurrency: int = Field(
        DEFAULT_CONCURRENCY,
        ge=1,
        le=MAX_CONCURRENCY,
        strict=True,
        description="Runs of the batch in flight at once.",
    )
    version: str | None = Field(
        None, description="Pin an agent version (default: one chosen for the whole batch)."
    )

    @field_validator("inputs", mode="before")
    @classmethod
    def _strings_are_inputs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"input": item} if isinstance(item, str) else item for item in value]
        return value


def _plain_number(value: Any, pattern: str, what: str) -> Any:
    # Query values arrive as text, and pydantic reads "1_000" as 1000: only plain ASCII
    # numbers here, as the other query parameters (`after`, `since` of the admin costs).
    if isinstance(value, str) and re.fullmatch(pattern, value) is None:
        raise ValueError(f"must be {what}, not {value[:40]!r}")
    return value


class _PageQuery(BaseModel):
    """What every run list takes: the page size, where it starts, and (admin) one tenant."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int = Field(50, ge=1, le=MAX_PAGE, description=f"Runs a page, 1 to {MAX_PAGE}.")
    cursor: str | None = Field(
        None, max_length=200, description="A page's `next_cursor`: the page after it."
    )
    tenant: str | None = Field(
        None, max_length=200, description="Admin key: only this tenant's runs (default: all)."
    )

    @field_validator("limit", mode="before")
    @classmethod
    def _plain_limit(cls, value: Any) -> Any:
        return _plain_number(value, r"[0-9]{1,4}", "a whole number")


class ThreadRunsQuery(_PageQuery):
    """Query of `GET /v1/threads/{thread_id}/runs` (and the handle's `thread_runs`)."""

    thread_id: str = Field(pattern=THREAD_ID_PATTERN, description="The conversation.")


class RunListQuery(_PageQuery):
    """Query of `GET /v1/runs` (and the handle's `list_runs`); every filter is optional."""

    agent: str | None = Field(None, max_length=200, description="Only this agent's runs.")
    version: str | None = Field(None, max_length=200, description="Only this version's runs.")
    status: RunStatus | None = Field(None, description="Only runs in this status.")
    thread_id: str | None = Field(
        None, pattern=THREAD_ID_PATTERN, description="Only this conversation's runs."
    )
    since: float | None = Field(
        None, ge=0, le=1e12, allow_inf_nan=False, description="Created at or after (unix s)."
    )
    until: float | None = Field(
        None, ge=0, le=1e12, allow_inf_nan=False, description="Created before (unix s)."
    )

    @field_validator("since", "until", mode="before")
    @classmethod
    def _plain_seconds(cls, value: Any) -> Any:
        return _plain_number(
            value, r"[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?", "unix seconds"
        )
