"""The HTTP API as an OpenAPI 3.1 document, built from the same pydantic models the gateway
validates with and returns, so the document cannot drift from the code's field rules.

Served at `GET /openapi.json`; the fuzz test (`tests/serve/test_fuzz.py`) drives the live
service from it.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from actors.batches import BATCH_ID_PATTERN, MAX_CONCURRENCY, MAX_ITEMS, BatchView
from actors.outcomes import CostReport
from actors.state.run_index import RunPage
from agents.events import event_adapter
from agents.summary import RunSummary
from serve_app.api_models import (
    AGENT_PATTERN,
    MAX_SEQ,
    RUN_ID_PATTERN,
    AgentList,
    BatchAccepted,
    Health,
    KillState,
    OutcomeRecorded,
    Problem,
    RollbackDone,
    RunAccepted,
    ShadowReport,
)
from serve_app.console import ASSETS as CONSOLE_ASSETS
from serve_app.health import ProviderHealth
from serve_app.schemas import (
    ApprovalDecision,
    BatchRequest,
    KillRequest,
    OutcomeRequest,
    RunListQuery,
    RunRequest,
    ThreadRunsQuery,
)

REF = "#/components/schemas/{model}"
PROBLEM_JSON = "application/problem+json"
EVENT_STREAM = "text/event-stream"

_SSE_FRAMING = (
    "Server-Sent Events, one frame per event: `id:` is the event's `seq` (1, 2, 3 ... per "
    "run; send it back as `Last-Event-ID` to resume), `event:` is its `kind`, `data:` is the "
    "event as one line of JSON (schema `Event`). Comment lines (`:`) are keep-alive pings. "
    "The stream ends after exactly one terminal event (run.completed, run.failed or "
    "run.cancelled); once it has started, a failure arrives as an event, never as a status. "
    "Clients ignore kinds they do not know."
)

_AUTH = (
    "`Authorization: Bearer <API key>` names the tenant. On the embedded defaults a request "
    "without a key is served as the anonymous default tenant; with `anonymous_tenant: null` "
    "a key is required. An unknown key is a 401."
)


def _schemas() -> dict[str, Any]:
    """Every schema under one namespace: each model's `$defs` lifted into components."""

    found: dict[str, Any] = {}

    def add(name: str, schema: dict[str, Any]) -> None:
        defs = schema.pop("$defs", {})
        for key, value in [*defs.items(), (name, schema)]:
            if key in found and found[key] != value:
                raise ValueError(f"two different schemas are both called {key!r}")
            found[key] = value

    for request in (RunRequest, OutcomeRequest, KillRequest, BatchRequest, ApprovalDecision):
        add(request.__name__, request.model_json_schema(ref_template=REF, mode="validation"))
    documented = (RunSummary, Problem, RunAccepted, AgentList, Health, BatchAccepted, BatchView)
    more = (OutcomeRecorded, KillState, RollbackDone, ShadowReport, CostReport, RunPage)
    for model in (*documented, *more, ProviderHealth):
        add(model.__name__, model.model_json_schema(ref_template=REF, mode="serialization"))
    event = event_adapter.json_schema(ref_template=REF, mode="serialization")
    event["description"] = "One event of a run: the JSON in an SSE frame's `data:`."
    add("Event", event)
    return found


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=schema)}}}


def _problem(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": REF.format(model="Problem")}}},
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response


def _sse(description: str) -> dict[str, Any]:
    # Before OpenAPI 3.2's `itemSchema`, tools read an event stream's `schema` as the schema
    # of one event: its fields, with `data` holding JSON (contentSchema).
    frame = {
        "type": "object",
        "description": _SSE_FRAMING,
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[1-9][0-9]*$", "description": "The seq."},
            "event": {"type": "string", "description": "The kind."},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": REF.format(model="Event")},
            },
            "retry": {"type": "integer", "minimum": 0},
        },
    }
    return {"description": description, "content": {EVENT_STREAM: {"schema": frame}}}


_UNAUTHORIZED = _problem("Unknown API key (or none, where anonymous use is off).")
_UNKNOWN_RUN = _problem("Unknown run, or another tenant's run.")
_OVERLOADED = _problem("No capacity to serve the run now.", retry_after=True)

_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "description": "A run id as returned when the run was started.",
    "schema": {"type": "string", "pattern": RUN_ID_PATTERN},
}
_AGENT = {
    "name": "agent",
    "in": "path",
    "required": True,
    "description": "Agent name (see GET /v1/agents).",
    "schema": {"type": "string", "pattern": AGENT_PATTERN},
}
_BATCH_ID = {
    "name": "batch_id",
    "in": "path",
    "required": True,
    "description": "A batch id as returned when the batch was started.",
    "schema": {"type": "string", "pattern": BATCH_ID_PATTERN},
}
_UNKNOWN_BATCH = _problem("Unknown batch, or another tenant's batch.")
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes the request safe to retry (IETF draft 'The Idempotency-Key HTTP Header "
        "Field'): a repeat with the same key and body, by the same tenant to the same "
        "endpoint, within 24 h (`idempotency_key_ttl_s`), answers with what the first request "
        "created (the same id; `Idempotent-Replayed: true`) instead of creating it again. "
        "The same key with a different body is a 422; a repeat while the first is still "
        "being handled waits briefly, then is a 409. A first request that failed frees its key."
    ),
    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
}
_TRACEPARENT = {
    "name": "traceparent",
    "in": "header",
    "required": False,
    "description": (
        "W3C Trace Context: the run's trace becomes a child of this span (the gateway's span, "
        "then the run's `invoke_agent` span). A malformed value is ignored and the run starts "
        "a trace of its own. Every event carries the run's `trace_id`."
    ),
    "schema": {"type": "string"},
}
_REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this answers a repeated Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
_KEY_IN_USE = _problem(
    "A request with this Idempotency-Key is still being handled: retry shortly.",
    retry_after=True,
)
_KEY_REUSED = (
    "Body is not JSON (or nested over 32 levels), a field is invalid (`field` names it), or "
    "the Idempotency-Key was used with a different request (`field` Idempotency-Key)."
)
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "Resume after this seq (EventSource sends it on reconnect); wins over `after`.",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
}
_AFTER = {
    "name": "after",
    "in": "query",
    "required": False,
    "description": "Resume after this seq; 0 (the default) streams from the start.",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ, "default": 0},
}


def _live_list() -> dict[str, Any]:
    frame = {
        "type": "object",
        "description": "One frame: the first page under the filters, each time it changed.",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": ["runs"]},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": REF.format(model="RunPage")},
            },
        },
    }
    return {EVENT_STREAM: {"schema": frame}}


def _query(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A query model's fields as parameters: the rules the gateway validates them with."""
    schema = model.model_json_schema(mode="validation")
    found = []
    for name, field in schema["properties"].items():
        field.pop("title", None)
        description = field.pop("description", "")
        default = field.pop("default", None)
        # An optional filter is absent, never null: document the value it takes.
        field = next((f for f in field.get("anyOf", [field]) if f.get("type") != "null"), field)
        if default is not None:
            field = {**field, "default": default}
        required = name in schema.get("required", ())
        found.append(
            {"name": name, "in": "query", "required": required, "description": description}
            | {"schema": field}
        )
    return found


_THREAD_QUERY = [
    {**p, "in": "path"} if p["name"] == "thread_id" else p for p in _query(ThreadRunsQuery)
]
_LISTED = (
    "Each item is a run's summary from the state store (runs no longer held by any host "
    "included): status, agent, version, assignment, tenant, thread, created/ended times, "
    "steps, tokens, cost, error code and trace id (spend is known once the run has ended). "
    "A tenant's key lists its own runs only; the admin key lists every tenant's, or one "
    "with `tenant`. Pages are keyset pages: pass `next_cursor` back as `cursor`; runs "
    "started meanwhile never repeat an item or push one off a page."
)
_BAD_QUERY = _problem("A filter, `limit` or `cursor` is invalid (`field` names it).")


def _paths() -> dict[str, Any]:
    public: list[dict[str, list[str]]] = []  # no key needed, whatever the tenancy config
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness of the gateway.",
                "security": public,
                "responses": {"200": {"description": "Up.", "content": _json("Health")}},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "security": public,
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/console": {
            "get": {
                "operationId": "console",
                "summary": "The console: a web page to watch runs, start them and run the fleet.",
                "description": (
                    "Static HTML under a strict Content-Security-Policy; it asks for an API key, "
                    "keeps it in the tab's session storage and calls this API with it."
                ),
                "security": public,
                "responses": {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/console/static/{name}": {
            "get": {
                "operationId": "consoleAsset",
                "summary": "One of the console's scripts or its style sheet.",
                "security": public,
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(CONSOLE_ASSETS)},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                        },
                    },
                    "404": _problem("Not a file of the console."),
                },
            }
        },
        "/v1/agents": {
            "get": {
                "operationId": "listAgents",
                "summary": "Every agent with its versions.",
                "responses": {
                    "200": {"description": "The agents.", "content": _json("AgentList")},
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/v1/agents/{agent}/runs": {
            "post": {
                "operationId": "createRun",
                "summary": "Start a run.",
                "description": (
                    "With `Accept: text/event-stream` the response is the run's event stream "
                    "(200); otherwise 202 with links to poll or stream. The run goes on "
                    "whatever happens to the caller."
                ),
                "parameters": [_AGENT, _IDEMPOTENCY_KEY, _TRACEPARENT],
                "requestBody": {
                    "required": True,
                    "description": "At most 1 MiB (`max_body_bytes`); unknown fields are a 422.",
                    "content": _json("RunRequest"),
                },
                "responses": {
                    "200": {
                        **_sse("The run's events (with `Accept: text/event-stream`)."),
                        "headers": {
                            "X-Run-Id": {"schema": {"type": "string", "pattern": RUN_ID_PATTERN}},
                            **_REPLAYED,
                        },
                    },
                    "202": {
                        "description": "Started.",
                        "headers": {
                            "Location": {
                                "description": "The status_url.",
                                "schema": {"type": "string"},
                            },
                            **_REPLAYED,
                        },
                        "content": _json("RunAccepted"),
                    },
                    "401": _UNAUTHORIZED,
                    "404": _problem("Unknown agent, or no such version of it."),
                    "409": _KEY_IN_USE,
                    "413": _problem("Body over the size limit."),
                    "422": _problem(_KEY_REUSED),
                    "429": _problem("Over a tenant limit.", retry_after=True),
                    "503": _problem(
                        "No capacity, or a kill switch covers the run (`code` killed, the "
                        "reason in `detail`).",
                        retry_after=True,
                    ),
                },
            }
        },
        "/v1/agents/{agent}/batches": {
            "post": {
                "operationId": "createBatch",
                "summary": "Run many inputs through one agent version, a few at a time.",
                "description": (
                    f"Up to {MAX_ITEMS} inputs, each an ordinary run (it shows in "
                    f"GET /v1/runs/{{run_id}} and counts against the tenant's limits), at most "
                    f"`concurrency` (1-{MAX_CONCURRENCY}) in flight. One version serves the "
                    "whole batch. Items of one `thread_id` run in order. An item refused by a "
                    "tenant limit waits and retries (up to 5 minutes), then fails with code "
                    "tenant_limited. The batch goes on whatever happens to the caller or the "
                    "gateway."
                ),
                "parameters": [_AGENT, _IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "description": "At most 1 MiB (`max_body_bytes`); unknown fields are a 422.",
                    "content": _json("BatchRequest"),
                },
                "responses": {
                    "202": {
                        "description": "Started.",
                        "headers": {
                            "Location": {
                                "description": "The status_url.",
                                "schema": {"type": "string"},
                            },
                            **_REPLAYED,
                        },
                        "content": _json("BatchAccepted"),
                    },
                    "401": _UNAUTHORIZED,
                    "404": _problem("Unknown agent, or no such version of it."),
                    "409": _KEY_IN_USE,
                    "413": _problem("Body over the size limit."),
                    "422": _problem(_KEY_REUSED),
                    "429": _problem("The tenant has too many batches running.", retry_after=True),
                    "503": _problem(
                        "No capacity, or a kill switch covers the batch (`code` killed, the "
                        "reason in `detail`).",
                        retry_after=True,
                    ),
                },
            }
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "operationId": "getBatch",
                "summary": "A batch's progress and per-item results.",
                "parameters": [_BATCH_ID],
                "responses": {
                    "200": {"description": "The batch.", "content": _json("BatchView")},
                    "401": _UNAUTHORIZED,
                    "404": _UNKNOWN_BATCH,
                    "503": _OVERLOADED,
                },
            }
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": {
                "operationId": "cancelBatch",
                "summary": "Start no more items and cancel the running ones; returns the batch.",
                "description": "A no-op on a batch that has ended.",
                "parameters": [_BATCH_ID],
                "responses": {
                    "200": {"description": "The batch.", "content": _json("BatchView")},
                    "401": _UNAUTHORIZED,
                    "404": _UNKNOWN_BATCH,
                    "503": _OVERLOADED,
                },
            }
        },
        "/v1/runs": {
            "get": {
                "operationId": "listRuns",
                "summary": "The caller's runs, newest first, filtered, a page at a time.",
                "description": _LISTED,
                "parameters": _query(RunListQuery),
                "responses": {
                    "200": {
                        "description": (
                            "A page of runs. With `Accept: text/event-stream`, the first page "
                            "live: `event: runs` frames whose `data:` is the page (RunPage), "
                            "sent at once and again whenever it changes (no `cursor`)."
                        ),
                        "content": {**_json("RunPage"), **_live_list()},
                    },
                    "401": _UNAUTHORIZED,
                    "422": _BAD_QUERY,
                    "503": _OVERLOADED,
                },
            }
        },
        "/v1/threads/{thread_id}/runs": {
            "get": {
                "operationId": "listThreadRuns",
                "summary": "A conversation's runs, oldest first, a page at a time.",
                "description": _LISTED,
                "parameters": _THREAD_QUERY,
                "responses": {
                    "200": {"description": "A page of runs.", "content": _json("RunPage")},
                    "401": _UNAUTHORIZED,
                    "404": _problem("No such route (a thread id with `/` in it)."),
                    "422": _BAD_QUERY,
                    "503": _OVERLOADED,
                },
            }
        },
        "/v1/runs/{run_id}": {
            "get": {
                "operationId": "getRun",
                "summary": "A run's summary, derived from its events.",
                "parameters": [_RUN_ID],
                "responses": {
                    "200": {"description": "The summary.", "content": _json("RunSummary")},
                    "401": _UNAUTHORIZED,
                    "404": _UNKNOWN_RUN,
                    "503": _OVERLOADED,
                },
            },
            "delete": {
                "operationId": "deleteRun",
                "summary": "Delete an ended run: its record, events and outcome, for good.",
                "description": (
                    "A tenant deletes its own runs; the admin key deletes any run. A running "
                    "run is a 409: cancel it first (POST /v1/runs/{run_id}/cancel). Runs that "
                    "ended more than `retention_days` (default 30) ago are deleted anyway."
                ),
                "parameters": [_RUN_ID],
                "responses": {
                    "204": {"description": "Deleted."},
                    "401": _UNAUTHORIZED,
                    "404": _UNKNOWN_RUN,
                    "409": _problem("The run is still running: cancel it first.", True),
                    "503": _OVERLOADED,
                },
            },
        },
        "/v1/runs/{run_id}/events": {
            "get": {
                "operationId": "streamRunEvents",
                "summary": "A run's events after a seq, live until its terminal event.",
                "parameters": [_RUN_ID, _AFTER, _LAST_EVENT_ID],
                "responses": {
                    "200": _sse("The run's events."),
                    "401": _UNAUTHORIZED,
                    "404": _UNKNOWN_RUN,
                    "422": _problem("`after` or `Last-Event-ID` is not a non-negative integer."),
                    "503": _OVERLOADED,
                },
            }
        },
        "/v1/runs/{run_id}/cancel": {
            "post": {
                "operationId": "cancelRun",
                "summary": "Cancel a run (a no-op on a finished one); returns its summary.",
                "parameters": [_RUN_ID],
                "responses": {
                    "200": {"description": "The summary.", "content": _json("RunSummary")},
                    "401": _UNAUTHORIZED,
                    "404": _UNKNOWN_RUN,
                    "503": _OVERLOADED,
                },
            }
        },
        "/v1/runs/{run_id}/approvals/{call_id}": {
            "post": {
                "operationId": "decideApproval",
                "summary": "Approve, edit or reject the tool call a run waits on.",
                "description": (
                    "A run whose tool call needs a person is `awaiting_approval`; its summary's "
                    "`approval` names the call (`call_id`), its arguments, who may decide "
                    "(`deciders`: the run's tenant and/or the admin key) and the deadline. "
                    "The decision is stored (`approval.decided`), then the run resumes: "
                    "approve runs the tool, edit runs it with `arguments`, reject answers the "
                    "model with `message` and the tool never runs."
                ),
                "parameters": [
                    _RUN_ID,
                    {
                        "name": "call_id",
                        "in": "path",
                        "required": True,
                        "description": "The waiting call (the summary's `approval.call_id`).",
                        "schema": {"type": "string", "maxLength": 200},
                    },
                ],
                "requestBody": {"required": True, "content": _json("ApprovalDecision")},
                "responses": {
                    "200": {
                        "description": "Decided; the run has resumed.",
                        "content": _json("RunSummary"),
                    },
                    "401": _UNAUTHORIZED,
                    "403": _problem("This key may not decide this call (see `deciders`)."),
                    "404": _UNKNOWN_RUN,
                    "409": _problem("The call does not wait for a decision (any more)."),
                    "413": _problem("Body over the size limit."),
                    "422": _problem("Body is not JSON, or a field is invalid (`field` names it)."),
                    "503": _OVERLOADED,
                },
            }
        },
        "/v1/runs/{run_id}/outcome": {
            "post": {
                "operationId": "setRunOutcome",
                "summary": "The caller's verdict on a run: success or not, and a score.",
                "description": (
                    "It wins over the automatic outcome (completed = success) in the version "
                    "statistics and the canary gate; the latest call stands. It may be sent "
                    "before the run has ended."
                ),
                "parameters": [_RUN_ID],
                "requestBody": {"required": True, "content": _json("OutcomeRequest")},
                "responses": {
                    "200": {"description": "Stored.", "content": _json("OutcomeRecorded")},
                    "401": _UNAUTHORIZED,
                    "404": _UNKNOWN_RUN,
                    "413": _problem("Body over the size limit."),
                    "422": _problem("Body is not JSON, or a field is invalid (`field` names it)."),
                    "503": _OVERLOADED,
                },
            }
        },
        "/v1/admin/kill": {
            "get": {
                "operationId": "getKillSwitches",
                "summary": "The kill switches set by admins (admin).",
                "description": "Those in the deploy config (`traffic.kill`) are not included.",
                "security": [{"bearer": []}],
                "responses": {
                    "200": {"description": "The admin switches.", "content": _json("KillState")},
                    "401": _problem("Not the admin key."),
                },
            },
            "post": {
                "operationId": "setKillSwitch",
                "summary": "Switch something off with a reason, or back on with null (admin).",
                "description": (
                    "Scopes: global (every run), agents, versions ('agent@version'), tenants "
                    "(new runs are refused with 503 `killed`, and running ones stop at their "
                    "next step), tools (calls answer ok=false 'unavailable') and models "
                    "('provider/model' or a bare model name: skipped, the next in the chain "
                    "answers). Stored: it holds across gateway restarts until cleared."
                ),
                "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": _json("KillRequest")},
                "responses": {
                    "200": {
                        "description": "The admin switches now.",
                        "content": _json("KillState"),
                    },
                    "401": _problem("Not the admin key."),
                    "413": _problem("Body over the size limit."),
                    "422": _problem("Body is not JSON, or a field is invalid (`field` names it)."),
                },
            },
        },
        "/v1/admin/agents/{agent}/rollback": {
            "post": {
                "operationId": "rollbackCanary",
                "summary": "Send the agent's canary weight to 0 now (admin).",
                "description": (
                    "Holds until the agent's traffic config changes: re-weighting or promoting "
                    "is one deploy."
                ),
                "security": [{"bearer": []}],
                "parameters": [_AGENT],
                "responses": {
                    "200": {"description": "Rolled back.", "content": _json("RollbackDone")},
                    "401": _problem("Not the admin key."),
                    "422": _problem("The agent has no canary (`field` is agent)."),
                },
            }
        },
        "/v1/admin/agents/{agent}/shadows": {
            "get": {
                "operationId": "compareShadows",
                "summary": "Shadow runs against the primary runs they mirrored (admin).",
                "security": [{"bearer": []}],
                "parameters": [_AGENT],
                "responses": {
                    "200": {"description": "One entry per pair.", "content": _json("ShadowReport")},
                    "401": _problem("Not the admin key."),
                },
            }
        },
        "/v1/admin/costs": {
            "get": {
                "operationId": "tenantCosts",
                "summary": "Cost per successful run of every tenant (admin key only).",
                "description": (
                    "Per (agent, version, tenant), per (agent, tenant) and per tenant: runs, "
                    "successes, total cost and cost per successful run (the cost of all the "
                    "runs over their successes). Shadow runs are excluded."
                ),
                "security": [{"bearer": []}],
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": "Only runs that ended at or after this (unix seconds).",
                        "schema": {"type": "number", "minimum": 0, "maximum": 1e12},
                    }
                ],
                "responses": {
                    "200": {"description": "The figures.", "content": _json("CostReport")},
                    "401": _problem("Not the admin key."),
                    "422": _problem("`since` is not a number of seconds."),
                },
            }
        },
        "/v1/admin/tenants": {
            "get": {
                "operationId": "listTenants",
                "summary": "Every tenant with its limits and today's usage (admin key only).",
                "security": [{"bearer": []}],
                "responses": {
                    "200": {
                        "description": "The tenants.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/v1/admin/providers": {
            "get": {
                "operationId": "providerHealth",
                "summary": "Each provider's circuit breaker over the run hosts (admin key only).",
                "description": (
                    "Breakers live in each run host's process: a provider can be open on one "
                    "host and closed on another. `state` is the worst over the hosts, `hosts` "
                    "counts them per state. A tenant's own provider key has a breaker of its "
                    "own, named `provider#digest` (a digest of the key, never the key)."
                ),
                "security": [{"bearer": []}],
                "responses": {
                    "200": {"description": "The breakers.", "content": _json("ProviderHealth")},
                    "401": _problem("Not the admin key."),
                },
            }
        },
    }


@cache
def _document() -> dict[str, Any]:
    try:
        release = version("rayfleet")
    except PackageNotFoundError:  # a source tree that was never installed
        release = "0+unknown"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rayfleet",
            "version": release,
            "description": (
                "Serve AI agents on Ray: start runs, stream their events, resume. "
                "MCP clients: the same agents are MCP tools at `POST /mcp` (streamable HTTP, "
                "JSON-RPC as the Model Context Protocol specifies; same keys), which this "
                "document does not describe."
            ),
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{}, {"bearer": []}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": _AUTH}
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())


async def openapi_endpoint(request: Request) -> JSONResponse:
    """`GET /openapi.json`."""
    return JSONResponse(_document())
