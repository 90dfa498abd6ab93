"""The gateway: Serve ingress for the HTTP/SSE API and the Python handle API.

It picks the agent version, asks that version's deployment to start the run (one hop: the
deployment admits it, picks the host and starts it there), then streams
the run's events straight from the run host that owns it (one Ray hop per batch of events).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.batches import (
    DEFAULT_CONCURRENCY,
    BatchJob,
    BatchView,
    is_batch_id,
    new_batch_id,
)
from actors.credentials import TenantContext
from actors.metrics import SSEClients, limiter_refused
from actors.named import NamedActor
from actors.outcomes import VersionStats
from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.services import LIMITER_ACTOR, check_agents_package, service
from actors.state import process_state
from actors.state.run_index import RunPage
from agents.errors import (
    Killed,
    RequestInvalid,
    TenantLimited,
    UnknownAgent,
    UnknownBatch,
    UnknownRun,
)
from agents.events import Event
from agents.logs import bind_run, configure_logging, first_traceback
from agents.spec import AgentSpec
from agents.summary import RunSummary
from agents.tracing import configure_tracing, inbound_span
from serve_app.admin_routes import AdminRoutes
from serve_app.approval_routes import ApprovalRoutes
from serve_app.batch_driver import BatchDriver
from serve_app.bodies import read_json
from serve_app.config import AppConfig
from serve_app.console import console_asset, console_page
from serve_app.deletion import delete_run
from serve_app.delivery import Delivery
from serve_app.detached import detached
from serve_app.handle_api import HandleSurface
from serve_app.http_errors import EXCEPTION_HANDLERS
from serve_app.http_params import resume_point, validated, wants_sse
from serve_app.idempotency import Idempotency
from serve_app.mcp_endpoint import McpEndpoint
from serve_app.openapi import openapi_endpoint
from serve_app.run_list import list_page, live_pages, thread_page
from serve_app.schemas import (
    BatchRequest,
    OutcomeRequest,
    RunListQuery,
    RunRequest,
    ThreadRunsQuery,
)
from serve_app.tenancy import Authenticator, TenancyConfig, TenantConfig
from serve_app.traffic import Choice, TrafficConfig

logger = logging.getLogger("rayfleet")


@serve.deployment(
    name="gateway",
    max_ongoing_requests=2000,
    ray_actor_options={"num_cpus": 0.1},
    # A replica that died is noticed at its next health check: keep the outage short.
    health_check_period_s=2,
)
@serve.ingress()
class Gateway(HandleSurface, AdminRoutes, ApprovalRoutes, McpEndpoint):
    """HTTP API and handle API in one ingress deployment."""

    handle_methods = frozenset(
        {
            "list_agents",
            "start_run",
            "stream_run",
            "stream_events",
            "get_run",
            "cancel_run",
            "start_batch",
            "get_batch",
            "cancel_batch",
            "list_runs",
            "thread_runs",
            "decide_approval",
        }
    )

    def __init__(
        self, agents: dict[str, DeploymentHandle[Any]], specs: list[AgentSpec], config: AppConfig
    ) -> None:
        check_agents_package()
        configure_tracing()
        configure_logging("gateway")
        self._agents = agents
        self._specs = {spec.key: spec for spec in specs}
        self._config = config
        self._auth = Authenticator(config.tenancy)
        versions: dict[str, list[str]] = {}
        for spec in specs:
            versions.setdefault(spec.name, []).append(spec.version)
        self._delivery = Delivery(config.traffic, versions)
        self._runs: Runs | None = None
        self._limiter: NamedActor | None = None
        # Settings (switches, rollbacks), outcomes, keys and runs: opened here, no actor hop.
        self._state = process_state(config.runtime.state_url)
        self._batch_driver = BatchDriver(config.runtime)
        self._keys = Idempotency(self._state.keys, config.runtime.idempotency_key_ttl_s)
        self._background: set[asyncio.Task[None]] = set()
        self._over_rate: dict[str, tuple[float, TenantLimited]] = {}
        """Tenants the limiter refused for their request rate: when, and its refusal."""
        self._sse_clients = SSEClients()

    def handle_limit_bytes(self) -> int:
        return self._config.max_body_bytes  # a handle call weighs what its HTTP body would

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live changes from the deploy config (no restart): tenants, keys and limits, and
        `traffic` (weights, shadows, canary gates, kill switches)."""
        data = dict(user_config)
        traffic = TrafficConfig.model_validate(data.pop("traffic", {}))
        self._auth = Authenticator(TenancyConfig.model_validate(data))
        self._over_rate.clear()  # limits may have changed
        self._delivery.configure(traffic)
        await self._client()
        await self._push_limits()
        await self._delivery.publish(self._state.settings.put_setting)

    async def _client(self) -> Runs:
        if self._runs is None:
            runtime = self._config.runtime
            self._runs = Runs(runtime, await ensure_runtime(runtime), recreate=True)
            self._limiter = service(runtime, LIMITER_ACTOR, recreate=True)
            await self._push_limits()
            await self._delivery.publish(self._state.settings.put_setting)
            self._spawn(self._watch())
        return self._runs

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _watch(self) -> None:
        """Adopt shared switches and rollbacks every second, and give the limiter the
        tenants' limits again; judge canaries every few seconds."""
        for tick in itertools.count():
            try:
                self._delivery.refresh(await self._delivery_settings())
                await self._push_limits()  # a restarted limiter starts without them
                if tick % 5 == 0:
                    await self._judge_canaries()
            except Exception as exc:
                logger.warning("traffic refresh failed: %r", exc, exc_info=first_traceback(exc))
            await asyncio.sleep(1.0)

    async def _judge_canaries(self) -> None:
        outcomes = self._state.outcomes
        for agent, stable, canary, since in self._delivery.canaries():
            stable_stats = await outcomes.version_stats(agent, stable, since)
            canary_stats = await outcomes.version_stats(agent, canary, since)
            reasons = self._delivery.judge(agent, stable_stats, canary_stats)
            if reasons:
                key, record = self._delivery.rollback_record(agent, "; ".join(reasons))
                await self._state.settings.put_setting(key, record)
                self._delivery.refresh(await self._delivery_settings())
                logger.warning("canary %s@%s rolled back: %s", agent, canary, reasons)

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

    def _agents_for(self, tenant: TenantConfig | None) -> list[dict[str, Any]]:
        """The agents `tenant` may run (None: every agent, for the admin key)."""
        by_name: dict[str, list[AgentSpec]] = {}
        for spec in self._specs.values():
            if tenant is None or tenant.may_run(spec.name):
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
        tenant = self._auth.authenticate(f"Bearer {api_key}" if api_key else None)
        bind_run(tenant=tenant.id)  # this request's log lines name its tenant
        return tenant

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
        traceparent: str | None = None,
        user: str | None = None,
    ) -> str:
        """Start a run; returns its id. The run goes on whatever happens to the caller.
        With a W3C `traceparent`, the run's trace is a child of the caller's. `user`: the
        end user the run acts for (its tools receive it beside the tenant)."""
        tenant = self._tenant(api_key)
        with inbound_span("start_run", traceparent, {"rayfleet.tenant": tenant.id}) as parent:
            return await self._start(tenant, agent, input, thread_id, version, parent, user)

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
        request = validated(
            RunRequest, {"input": input, "thread_id": thread_id, "version": version, "user": user}
        )
        self._choose(tenant, agent, request.version)  # 404 for what the tenant may not run
        await self._client()
        if request.version is not None:
            choice = Choice(version=request.version, assignment="stable")
            assignment = "pinned"
        else:
            choice = self._delivery.choose(agent, tenant.id, request.thread_id, uuid.uuid4().hex)
            assignment = choice.assignment
        killed = self._delivery.killed(agent, choice.version, tenant.id)
        if killed is not None:
            raise Killed(killed)
        key = f"{agent}@{choice.version}"
        self._refuse_if_known_over_rate(tenant.id)
        context = _context(tenant)
        deployment = self._agents[key]

        async def start() -> str:
            # One hop: the version's deployment admits the run (the tenant limiter), picks
            # a host and starts it there; it releases the slot of a run that never started.
            started: str = await deployment.start.remote(
                request.input,
                request.thread_id,
                context,
                tenant.namespace,
                assignment,
                traceparent,
                request.user,
            )
            return started

        try:
            run_id = await detached(start())
        except TenantLimited as exc:
            if exc.limit == "requests_per_min":
                # No request of this tenant can be admitted before then: refuse those here,
                # without a hop (a tenant over its rate then costs others little).
                self._over_rate[tenant.id] = (time.monotonic(), exc)
            raise
        bind_run(run_id=run_id)
        for shadow in choice.shadows:
            self._spawn(
                self._shadow(run_id, f"{agent}@{shadow}", tenant, request.input, request.user)
            )
        return run_id

    async def _shadow(
        self, primary: str, key: str, tenant: TenantConfig, text: str, user: str | None = None
    ) -> None:
        """Mirror a run to a candidate version once the primary has ended, so the shadow can
        replay the primary's recorded side effects. Its output reaches nobody; it does not
        use the thread (its turn must not enter the conversation) or the tenant's limits."""
        try:
            await self._ended(primary)
            context = TenantContext(
                tenant=tenant.id,
                credentials=tenant.credentials,
                use_default_credentials=tenant.use_default_credentials,
                shadow_of=primary,
            )
            await self._agents[key].start.remote(
                text, None, context, tenant.namespace, "shadow", None, user
            )
        except Exception as exc:  # a shadow is a sample: losing one costs nothing visible
            logger.warning(
                "shadow run of %s on %s not started: %r",
                primary,
                key,
                exc,
                exc_info=first_traceback(exc),
            )

    def _refuse_if_known_over_rate(self, tenant: str) -> None:
        known = self._over_rate.get(tenant)
        if known is None:
            return
        refused_at, refusal = known
        waited = time.monotonic() - refused_at
        if waited >= refusal.retry_after_s:
            del self._over_rate[tenant]
            return
        limiter_refused(tenant, refusal.limit)  # refused as the limiter would: counted alike
        raise TenantLimited(
            f"tenant {tenant!r} is over its {refusal.limit} limit",
            refusal.retry_after_s - waited,
            refusal.quota,
            0,
            max(0.0, (refusal.reset_s or 0.0) - waited),
            refusal.limit,
        )

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
        _check_after(await self._owned(self._tenant(api_key), run_id), after)
        async for event in self._events(run_id, after):
            yield event

    async def _events(self, run_id: str, after: int) -> AsyncGenerator[Event, None]:
        runs = await self._client()
        async with contextlib.aclosing(runs.events(run_id, after)) as events:
            async for event in events:
                yield event

    async def _ended(self, run_id: str) -> None:
        """Return once the run has ended (its stream is over), decoding none of its events."""
        runs = await self._client()
        async with contextlib.aclosing(runs.batches(run_id, 0)) as batches:
            async for _ in batches:
                pass

    async def stream_run(
        self,
        agent: str,
        input: str,
        thread_id: str | None = None,
        version: str | None = None,
        run_id: str | None = None,
        after: int = 0,
        api_key: str | None = None,
        traceparent: str | None = None,
        user: str | None = None,
    ) -> AsyncIterator[Event]:
        """Start a run and stream its events; with `run_id`, resume that run after `after`.
        With a W3C `traceparent`, a new run's trace is a child of the caller's."""
        tenant = self._tenant(api_key)
        if run_id is None:
            with inbound_span("start_run", traceparent, {"rayfleet.tenant": tenant.id}) as parent:
                run_id = await self._start(tenant, agent, input, thread_id, version, parent, user)
        else:
            _check_after(await self._owned(tenant, run_id), after)
        async for event in self._events(run_id, after):
            yield event

    async def get_run(self, run_id: str, api_key: str | None = None) -> RunSummary:
        return await self._owned(self._tenant(api_key), run_id)

    async def cancel_run(self, run_id: str, api_key: str | None = None) -> RunSummary:
        await self._owned(self._tenant(api_key), run_id)
        runs = await self._client()
        await runs.cancel(run_id)
        return await runs.summary(run_id)

    async def list_runs(
        self,
        agent: str | None = None,
        version: str | None = None,
        status: str | None = None,
        thread_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
        tenant: str | None = None,
        api_key: str | None = None,
    ) -> RunPage:
        """The caller's runs, newest first, a page at a time (`cursor`: the last page's
        `next_cursor`); the admin key sees every tenant's (`tenant` picks one)."""
        caller = self._scope(api_key)
        asked = {
            "agent": agent,
            "version": version,
            "status": status,
            "thread_id": thread_id,
            "since": since,
            "until": until,
            "limit": limit,
            "cursor": cursor,
            "tenant": tenant,
        }
        query = validated(RunListQuery, {k: v for k, v in asked.items() if v is not None})
        return await list_page(self._state.runs, query, caller)

    async def thread_runs(
        self,
        thread_id: str,
        limit: int = 50,
        cursor: str | None = None,
        tenant: str | None = None,
        api_key: str | None = None,
    ) -> RunPage:
        """A conversation's runs in the order they were started, a page at a time."""
        caller = self._scope(api_key)
        asked = {"thread_id": thread_id, "limit": limit, "cursor": cursor, "tenant": tenant}
        query = validated(ThreadRunsQuery, {k: v for k, v in asked.items() if v is not None})
        return await thread_page(self._state.runs, query, caller)

    def _scope(self, api_key: str | None) -> str | None:
        """Whose runs the caller may list: its tenant's, or None (every tenant's) for the
        admin key."""
        if api_key and self._auth.is_admin(f"Bearer {api_key}"):
            return None
        return self._tenant(api_key).id

    # -- batches: many inputs to one agent version, driven by the batch actor ----------------

    async def start_batch(
        self,
        agent: str,
        inputs: list[str | dict[str, Any]],
        concurrency: int = DEFAULT_CONCURRENCY,
        version: str | None = None,
        api_key: str | None = None,
    ) -> BatchView:
        """Start a batch of runs (items: strings or {"input", "thread_id"?}); returns its
        state at once (`batch_id`). It goes on whatever happens to the caller."""
        body = {"inputs": inputs, "concurrency": concurrency, "version": version}
        return await self._start_batch(self._tenant(api_key), agent, validated(BatchRequest, body))

    async def get_batch(self, batch_id: str, api_key: str | None = None) -> BatchView:
        """A batch's progress and per-item results (the caller's batches only)."""
        return await self._owned_batch(self._tenant(api_key), batch_id, "get")

    async def cancel_batch(self, batch_id: str, api_key: str | None = None) -> BatchView:
        """Start no more of the batch's items and cancel those running."""
        return await self._owned_batch(self._tenant(api_key), batch_id, "cancel")

    async def _start_batch(
        self, tenant: TenantConfig, agent: str, request: BatchRequest, batch_id: str | None = None
    ) -> BatchView:
        self._choose(tenant, agent, request.version)  # 404 for what the tenant may not run
        await self._client()
        batch_id = batch_id or new_batch_id()
        # One version for the whole batch, chosen as for one run (so a 10% canary gets a
        # tenth of the batches, each whole).
        if request.version is not None:
            version, assignment = request.version, "pinned"
        else:
            choice = self._delivery.choose(agent, tenant.id, None, batch_id)
            version, assignment = choice.version, choice.assignment
        killed = self._delivery.killed(agent, version, tenant.id)
        if killed is not None:
            raise Killed(killed)
        job = BatchJob(
            batch_id=batch_id,
            agent=agent,
            version=version,
            assignment=assignment,
            spec=self._specs[f"{agent}@{version}"],
            context=_context(tenant),
            namespace=tenant.namespace,
            inputs=request.inputs,
            concurrency=request.concurrency,
            created_at=time.time(),
        )
        view: BatchView = await self._batch_driver.call("submit", job)  # idempotent: safe to retry
        return view

    async def _owned_batch(self, tenant: TenantConfig, batch_id: str, method: str) -> BatchView:
        """The batch if it is the tenant's; another tenant's batch does not exist."""
        view: BatchView | None = None
        if is_batch_id(batch_id):
            view = await self._batch_driver.call(method, batch_id, tenant.id)
        if view is None:
            raise UnknownBatch(f"unknown batch {batch_id[:80]!r}", batch_id[:80])
        return view

    # -- HTTP ---------------------------------------------------------------------------------

    def __serve_build_asgi_app__(self) -> Starlette:
        routes = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
            Route("/console", console_page, methods=["GET"]),
            Route("/console/static/{name}", console_asset, methods=["GET"]),
            Route("/v1/agents", self._http_list_agents, methods=["GET"]),
            Route("/v1/agents/{agent}/runs", self._http_create_run, methods=["POST"]),
            Route("/v1/agents/{agent}/batches", self._http_create_batch, methods=["POST"]),
            Route("/v1/batches/{batch_id}", self._http_get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self._http_cancel_batch, methods=["POST"]),
            Route("/v1/runs", self._http_list_runs, methods=["GET"]),
            Route("/v1/threads/{thread_id}/runs", self._http_thread_runs, methods=["GET"]),
            Route("/v1/runs/{run_id}", self._http_get_run, methods=["GET"]),
            Route("/v1/runs/{run_id}", self._http_delete_run, methods=["DELETE"]),
            Route("/v1/runs/{run_id}/events", self._http_events, methods=["GET"]),
            Route("/v1/runs/{run_id}/cancel", self._http_cancel, methods=["POST"]),
            Route("/v1/runs/{run_id}/outcome", self._http_outcome, methods=["POST"]),
            *self.approval_routes(),
            *self.admin_routes(),
            *self.mcp_routes(),
        ]
        return Starlette(
            routes=routes,
            exception_handlers=dict(EXCEPTION_HANDLERS),
            lifespan=self.mcp_lifespan,
        )

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def _caller(self, request: Request) -> TenantConfig:
        tenant = self._auth.authenticate(request.headers.get("authorization"))
        bind_run(tenant=tenant.id)  # this request's log lines name its tenant
        return tenant

    async def _http_list_agents(self, request: Request) -> Response:
        """The agents the caller may run, with traffic and figures; the admin key sees every
        agent (and no tenant's own figures)."""
        admin = self._auth.is_admin(request.headers.get("authorization"))
        tenant = None if admin else self._caller(request)
        agents = self._agents_for(tenant)
        await self._client()
        outcomes = self._state.outcomes
        # The caller's own figures, and only the caller's: cost per successful run of its runs.
        mine = None if tenant is None else await outcomes.cost_report(None, tenant.id)
        by_version = {(c.agent, c.version): c.stats for c in mine.versions} if mine else {}
        by_agent = {c.agent: c.stats for c in mine.agents} if mine else {}

        def block(stats: VersionStats | None) -> dict[str, Any] | None:
            if tenant is None:
                return None
            found = stats or VersionStats.empty()
            return {"tenant": tenant.id, "stats": found.model_dump(mode="json")}

        for agent in agents:
            agent["traffic"] = self._delivery.describe(agent["name"])
            agent["tenant"] = block(by_agent.get(agent["name"]))
            for version in agent["versions"]:
                stats = await outcomes.version_stats(agent["name"], version["version"])
                version["stats"] = stats.model_dump(mode="json")
                version["tenant"] = block(by_version.get((agent["name"], version["version"])))
        return JSONResponse({"agents": agents})

    async def _http_outcome(self, request: Request) -> Response:
        """The caller's verdict on a run: success or not, and an optional score."""
        tenant = self._caller(request)
        run_id = request.path_params["run_id"]
        verdict = validated(OutcomeRequest, await read_json(request, 65_536))
        await self._owned(tenant, run_id)
        await self._state.outcomes.set_outcome(run_id, verdict.success, verdict.score)
        return JSONResponse({"run_id": run_id, **verdict.model_dump(mode="json")})

    async def _http_create_run(self, request: Request) -> Response:
        tenant = self._caller(request)
        body = await read_json(request, self._config.max_body_bytes)
        run = validated(RunRequest, body)
        agent = request.path_params["agent"]
        await self._client()
        traceparent = request.headers.get("traceparent")
        route = "POST /v1/agents/{agent}/runs"
        with inbound_span(route, traceparent, {"rayfleet.tenant": tenant.id}) as parent:
            created = await self._keys.once(
                request.headers,
                tenant.id,
                "runs",
                agent,
                run,
                lambda _: self._start(
                    tenant, agent, run.input, run.thread_id, run.version, parent, run.user
                ),
            )
        run_id = created.id
        if created.replayed:
            await self._owned(tenant, run_id)  # deleted since: 404, not a broken stream
        links = {
            "run_id": run_id,
            "status_url": f"/v1/runs/{run_id}",
            "events_url": f"/v1/runs/{run_id}/events",
        }
        if wants_sse(request):
            headers = {"X-Run-Id": run_id, **created.headers()}
            return self._sse(run_id, 0, headers=headers)  # started (or replayed) by us: ours
        headers = {"Location": links["status_url"], **created.headers()}
        return JSONResponse(links, status_code=202, headers=headers)

    async def _http_get_run(self, request: Request) -> Response:
        summary = await self._owned(self._caller(request), request.path_params["run_id"])
        return JSONResponse(summary.model_dump(mode="json"))

    async def _http_list_runs(self, request: Request) -> Response:
        """A page of runs; with `Accept: text/event-stream`, the first page live."""
        caller = self._scope_of(request)
        query = validated(RunListQuery, dict(request.query_params))
        if not wants_sse(request):
            page = await list_page(self._state.runs, query, caller)
            return JSONResponse(page.model_dump(mode="json"))
        if query.cursor is not None:
            raise RequestInvalid(
                "cursor: a live list is the first page; page through the JSON list", "cursor"
            )
        return EventSourceResponse(
            live_pages(self._state.runs, query, caller),
            ping=int(self._config.sse_ping_s),
            send_timeout=30,
        )

    async def _http_thread_runs(self, request: Request) -> Response:
        caller = self._scope_of(request)
        asked = {**request.query_params, "thread_id": request.path_params["thread_id"]}
        page = await thread_page(self._state.runs, validated(ThreadRunsQuery, asked), caller)
        return JSONResponse(page.model_dump(mode="json"))

    def _scope_of(self, request: Request) -> str | None:
        """As `_scope`, from the request's Authorization header."""
        header = request.headers.get("authorization")
        return None if self._auth.is_admin(header) else self._caller(request).id

    async def _http_delete_run(self, request: Request) -> Response:
        """Delete an ended run: the caller's own, or any with the admin key."""
        header = request.headers.get("authorization")
        tenant = None if self._auth.is_admin(header) else self._caller(request).id
        runs = await self._client()
        state = self._state
        await delete_run(request.path_params["run_id"], tenant, state.runs, state.outcomes, runs)
        return Response(status_code=204)

    async def _http_events(self, request: Request) -> Response:
        tenant = self._caller(request)
        run_id = request.path_params["run_id"]
        after = resume_point(request)
        summary = await self._owned(tenant, run_id)  # 404 before a stream starts, not inside
        _check_after(summary, after)
        return self._sse(run_id, after)

    async def _http_cancel(self, request: Request) -> Response:
        tenant = self._caller(request)
        run_id = request.path_params["run_id"]
        await self._owned(tenant, run_id)
        runs = await self._client()
        await runs.cancel(run_id)
        return JSONResponse((await runs.summary(run_id)).model_dump(mode="json"))

    async def _http_create_batch(self, request: Request) -> Response:
        tenant = self._caller(request)
        body = await read_json(request, self._config.max_body_bytes)
        batch = validated(BatchRequest, body)
        agent = request.path_params["agent"]
        await self._client()

        async def start(batch_id: str | None) -> str:
            return (await self._start_batch(tenant, agent, batch, batch_id)).batch_id

        created = await self._keys.once(
            request.headers, tenant.id, "batches", agent, batch, start, new_batch_id()
        )
        status_url = f"/v1/batches/{created.id}"
        return JSONResponse(
            {"batch_id": created.id, "status_url": status_url},
            status_code=202,
            headers={"Location": status_url, **created.headers()},
        )

    async def _http_get_batch(self, request: Request) -> Response:
        tenant = self._caller(request)
        view = await self._owned_batch(tenant, request.path_params["batch_id"], "get")
        return JSONResponse(view.model_dump(mode="json"))

    async def _http_cancel_batch(self, request: Request) -> Response:
        tenant = self._caller(request)
        view = await self._owned_batch(tenant, request.path_params["batch_id"], "cancel")
        return JSONResponse(view.model_dump(mode="json"))

    def _sse(self, run_id: str, after: int, headers: dict[str, str] | None = None) -> Response:
        # Only called once the caller is known to own the run. Each batch's frames were
        # built by the run host: relayed as one body chunk, no event decoded here.
        async def frames() -> AsyncIterator[bytes]:
            self._sse_clients.opened()
            try:
                runs = await self._client()
                async with contextlib.aclosing(runs.batches(run_id, after)) as batches:
                    async for batch in batches:
                        yield batch.frames
            finally:
                self._sse_clients.closed()

        return EventSourceResponse(
            frames(),
            ping=int(self._config.sse_ping_s),
            headers=headers,
            send_timeout=30,
        )


def _context(tenant: TenantConfig) -> TenantContext:
    """How the tenant's runs reach providers and its limits (stored with each run); the
    run's slot lease is added by the deployment that admits it."""
    return TenantContext(
        tenant=tenant.id,
        credentials=tenant.credentials,
        use_default_credentials=tenant.use_default_credentials,
        metered=tenant.limits.tokens_per_min is not None
        or tenant.limits.daily_budget_usd is not None,
    )


def _check_after(summary: RunSummary, after: int) -> None:
    """A resume point is a seq of the run, or past its end while it still runs."""
    if after < 0 or (after > summary.last_seq and summary.ended_at is not None):
        raise RequestInvalid(
            f"after={after} is not a seq of the run (last: {summary.last_seq})", "after"
        )
