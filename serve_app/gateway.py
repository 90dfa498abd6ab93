"""The gateway: Serve ingress for the HTTP/SSE API and the Python handle API.

It picks the agent version, asks that version's deployment to start the run, then streams
the run's events straight from the run host that owns it (one Ray hop per batch of events).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import ray
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.actor import ActorHandle
from ray.serve.handle import DeploymentHandle
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.credentials import TenantContext
from actors.limiter import Admission
from actors.runtime import LIMITER_ACTOR, Runs, check_agents_package, ensure_runtime
from agents.errors import (
    RayfleetError,
    RequestInvalid,
    RequestTooLarge,
    TenantLimited,
    Unauthorized,
    UnknownAgent,
    UnknownRun,
)
from agents.events import Event
from agents.spec import AgentSpec
from agents.summary import RunSummary
from serve_app.config import AppConfig
from serve_app.http_errors import error_response, problem
from serve_app.openapi import openapi_endpoint
from serve_app.sse import to_sse
from serve_app.tenancy import Authenticator, TenancyConfig, TenantConfig

_M = TypeVar("_M", bound=BaseModel)


class RunRequest(BaseModel):
    """Body of `POST /v1/agents/{agent}/runs`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = Field(min_length=1, max_length=100_000, description="The user's request.")
    thread_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._:-]{1,128}$", description="Continue this conversation."
    )
    version: str | None = Field(None, description="Pin an agent version (default: current).")


@serve.deployment(
    name="gateway",
    max_ongoing_requests=2000,
    ray_actor_options={"num_cpus": 0.1},
)
@serve.ingress()
class Gateway:
    """HTTP API and handle API in one ingress deployment."""

    def __init__(
        self, agents: dict[str, DeploymentHandle[Any]], specs: list[AgentSpec], config: AppConfig
    ) -> None:
        check_agents_package()
        self._agents = agents
        self._specs = {spec.key: spec for spec in specs}
        self._config = config
        self._auth = Authenticator(config.tenancy)
        self._runs: Runs | None = None
        self._limiter: ActorHandle[Any] | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live changes from the deploy config: tenants, keys and limits (no restart)."""
        self._auth = Authenticator(TenancyConfig.model_validate(user_config))
        await self._client()
        await self._push_limits()

    async def _client(self) -> Runs:
        if self._runs is None:
            runtime = self._config.runtime
            self._runs = Runs(runtime, await ensure_runtime(runtime))
            self._limiter = ray.get_actor(LIMITER_ACTOR, namespace=runtime.namespace)
            await self._push_limits()
        return self._runs

    async def _push_limits(self) -> None:
        if self._limiter is not None:
            tenants = self._auth.config.tenants
            await self._limiter.update_limits.remote({t.id: t.limits for t in tenants})

    # -- the handle API (also used by the HTTP routes) ---------------------------------------
    # Every call names its caller: `api_key`, as the HTTP API's Bearer key (none: the
    # anonymous tenant, if the config has one).

    def list_agents(self, api_key: str | None = None) -> list[dict[str, Any]]:
        """The agents the caller may run, with their versions."""
        return self._agents_for(self._tenant(api_key))

    def _agents_for(self, tenant: TenantConfig) -> list[dict[str, Any]]:
        by_name: dict[str, list[AgentSpec]] = {}
        for spec in self._specs.values():
            if tenant.may_run(spec.name):
                by_name.setdefault(spec.name, []).append(spec)
        return [
            {
                "name": name,
                "description": versions[-1].description,
                "current_version": versions[-1].version,
                "versions": [
                    {
                        "version": s.version,
                        "tiers": sorted(s.tiers),
                        "tools": [t.name for t in s.tools],
                    }
                    for s in versions
                ],
            }
            for name, versions in sorted(by_name.items())
        ]

    def _tenant(self, api_key: str | None) -> TenantConfig:
        return self._auth.authenticate(f"Bearer {api_key}" if api_key else None)

    def _choose(self, tenant: TenantConfig, agent: str, version: str | None) -> str:
        # An agent the tenant may not run looks exactly like one that does not exist.
        keys = [k for k, s in self._specs.items() if s.name == agent and tenant.may_run(agent)]
        if not keys:
            known = sorted({s.name for s in self._specs.values() if tenant.may_run(s.name)})
            raise UnknownAgent(f"unknown agent {agent!r} (known: {', '.join(known)})", agent)
        if version is None:
            return keys[-1]
        key = f"{agent}@{version}"
        if key not in keys:
            raise UnknownAgent(f"agent {agent!r} has no version {version!r}", agent)
        return key

    async def start_run(
        self,
        agent: str,
        input: str,
        thread_id: str | None = None,
        version: str | None = None,
        api_key: str | None = None,
    ) -> str:
        """Start a run; returns its id. The run goes on whatever happens to the caller."""
        return await self._start(self._tenant(api_key), agent, input, thread_id, version)

    async def _start(
        self,
        tenant: TenantConfig,
        agent: str,
        input: str,
        thread_id: str | None,
        version: str | None,
    ) -> str:
        request = RunRequest(input=input, thread_id=thread_id, version=version)
        key = self._choose(tenant, agent, request.version)
        await self._client()
        assert self._limiter is not None
        admission: Admission = await self._limiter.admit_run.remote(tenant.id)
        if not admission.ok:
            raise TenantLimited(
                f"tenant {tenant.id!r} is over its {admission.limit} limit",
                admission.retry_after_s,
                admission.quota,
                admission.remaining,
                admission.reset_s,
            )
        context = TenantContext(
            tenant=tenant.id,
            credentials=tenant.credentials,
            use_default_credentials=tenant.use_default_credentials,
            metered=tenant.limits.tokens_per_min is not None
            or tenant.limits.daily_budget_usd is not None,
        )
        try:
            run_id: str = await self._agents[key].start.remote(
                request.input, request.thread_id, context, tenant.namespace
            )
        except BaseException:
            await self._limiter.end_run.remote(tenant.id)  # it never started: free the slot
            raise
        return run_id

    async def _owned(self, tenant: TenantConfig, run_id: str) -> RunSummary:
        """The run's summary, if it is the tenant's; another tenant's run does not exist."""
        summary = await (await self._client()).summary(run_id)
        if summary.tenant != tenant.id:
            raise UnknownRun(f"unknown run {run_id!r}", run_id)
        return summary

    async def stream_events(
        self, run_id: str, after: int = 0, api_key: str | None = None
    ) -> AsyncIterator[Event]:
        """A run's events after seq `after`, live until its terminal event."""
        await self._owned(self._tenant(api_key), run_id)
        async for event in self._events(run_id, after):
            yield event

    async def _events(self, run_id: str, after: int) -> AsyncIterator[Event]:
        runs = await self._client()
        async for event in runs.events(run_id, after):
            yield event

    async def stream_run(
        self,
        agent: str,
        input: str,
        thread_id: str | None = None,
        version: str | None = None,
        run_id: str | None = None,
        after: int = 0,
        api_key: str | None = None,
    ) -> AsyncIterator[Event]:
        """Start a run and stream its events; with `run_id`, resume that run after `after`."""
        tenant = self._tenant(api_key)
        if run_id is None:
            run_id = await self._start(tenant, agent, input, thread_id, version)
        else:
            await self._owned(tenant, run_id)
        async for event in self._events(run_id, after):
            yield event

    async def get_run(self, run_id: str, api_key: str | None = None) -> RunSummary:
        return await self._owned(self._tenant(api_key), run_id)

    async def cancel_run(self, run_id: str, api_key: str | None = None) -> RunSummary:
        await self._owned(self._tenant(api_key), run_id)
        runs = await self._client()
        await runs.cancel(run_id)
        return await runs.summary(run_id)

    # -- HTTP ---------------------------------------------------------------------------------

    def __serve_build_asgi_app__(self) -> Starlette:
        routes = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
            Route("/v1/agents", self._http_list_agents, methods=["GET"]),
            Route("/v1/agents/{agent}/runs", self._http_create_run, methods=["POST"]),
            Route("/v1/runs/{run_id}", self._http_get_run, methods=["GET"]),
            Route("/v1/runs/{run_id}/events", self._http_events, methods=["GET"]),
            Route("/v1/runs/{run_id}/cancel", self._http_cancel, methods=["POST"]),
            Route("/v1/admin/tenants", self._http_admin_tenants, methods=["GET"]),
        ]
        return Starlette(
            routes=routes,
            exception_handlers={
                RayfleetError: _rayfleet_error,  # type: ignore[dict-item]
                HTTPException: _http_error,  # type: ignore[dict-item]
            },
        )

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def _caller(self, request: Request) -> TenantConfig:
        return self._auth.authenticate(request.headers.get("authorization"))

    async def _http_list_agents(self, request: Request) -> Response:
        return JSONResponse({"agents": self._agents_for(self._caller(request))})

    async def _http_create_run(self, request: Request) -> Response:
        tenant = self._caller(request)
        body = await _read_json(request, self._config.max_body_bytes)
        run = _validate(RunRequest, body)
        run_id = await self._start(
            tenant, request.path_params["agent"], run.input, run.thread_id, run.version
        )
        links = {
            "run_id": run_id,
            "status_url": f"/v1/runs/{run_id}",
            "events_url": f"/v1/runs/{run_id}/events",
        }
        if _wants_sse(request):
            return self._sse(run_id, 0, headers={"X-Run-Id": run_id})  # just started: ours
        return JSONResponse(links, status_code=202, headers={"Location": links["status_url"]})

    async def _http_get_run(self, request: Request) -> Response:
        summary = await self._owned(self._caller(request), request.path_params["run_id"])
        return JSONResponse(summary.model_dump(mode="json"))

    async def _http_events(self, request: Request) -> Response:
        tenant = self._caller(request)
        run_id = request.path_params["run_id"]
        after = _resume_point(request)
        summary = await self._owned(tenant, run_id)  # 404 before a stream starts, not inside
        if after > summary.last_seq and summary.status != "running":
            raise RequestInvalid(
                f"after={after} is past the run's last event ({summary.last_seq})", "after"
            )
        return self._sse(run_id, after)

    async def _http_cancel(self, request: Request) -> Response:
        tenant = self._caller(request)
        run_id = request.path_params["run_id"]
        await self._owned(tenant, run_id)
        runs = await self._client()
        await runs.cancel(run_id)
        return JSONResponse((await runs.summary(run_id)).model_dump(mode="json"))

    async def _http_admin_tenants(self, request: Request) -> Response:
        """Every tenant with its limits and today's usage (admin key only)."""
        if not self._auth.is_admin(request.headers.get("authorization")):
            raise Unauthorized("an admin key is required")
        await self._client()
        assert self._limiter is not None
        tenants: list[dict[str, Any]] = []
        for tenant in self._auth.config.tenants:
            usage = await self._limiter.usage.remote(tenant.id)
            tenants.append(
                {
                    "id": tenant.id,
                    "agents": tenant.agents,
                    "limits": tenant.limits.model_dump(mode="json"),
                    "usage": usage,
                    "keys": len(tenant.api_key_sha256),
                    "own_credentials": sorted(tenant.credentials),
                }
            )
        return JSONResponse({"tenants": tenants})

    def _sse(self, run_id: str, after: int, headers: dict[str, str] | None = None) -> Response:
        # Only called once the caller is known to own the run.
        async def frames() -> AsyncIterator[dict[str, str]]:
            async for event in self._events(run_id, after):
                yield to_sse(event)

        return EventSourceResponse(
            frames(),
            ping=int(self._config.sse_ping_s),
            headers=headers,
            send_timeout=30,
        )


def _wants_sse(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


def _resume_point(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    field = "Last-Event-ID" if "last-event-id" in request.headers else "after"
    if re.fullmatch(r"[0-9]{1,12}", raw) is None:  # ASCII digits only: "²".isdigit() is True
        raise RequestInvalid(f"{field} must be a non-negative integer seq, not {raw[:40]!r}", field)
    return int(raw)


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"body of {declared} bytes is over the {limit}-byte limit", "body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestTooLarge(f"body is over the {limit}-byte limit", "body")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestInvalid(f"body is not valid JSON: {exc}", "body") from None


def _validate(model: type[_M], data: Any) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise RequestInvalid(f"{field}: {first['msg']}", field) from None


async def _rayfleet_error(request: Request, exc: RayfleetError) -> Response:
    return error_response(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return problem(exc.status_code, "HTTPError", str(exc.detail), f"http_{exc.status_code}")
