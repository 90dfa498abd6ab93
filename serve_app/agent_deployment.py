"""One Serve deployment per agent version: it owns the spec and starts runs on the run hosts.

A run start crosses it once: the gateway (auth, version choice, kill switches,
Idempotency-Key, shadows) makes one call here; this replica admits the run with the tenant
limiter, picks a host from its cached view of the pool (actors.host_view) and makes the one
call to that host, which answers once `run.created` is durable.
"""

from __future__ import annotations

from ray import serve

from actors.credentials import TenantContext
from actors.limiter import Admission
from actors.metrics import limiter_refused
from actors.named import NamedActor
from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.services import LIMITER_ACTOR, check_agents_package, service
from actors.settings import RuntimeSettings
from agents.errors import TenantLimited
from agents.logs import configure_logging
from agents.spec import AgentSpec
from agents.tracing import RunTrace, configure_tracing, tracer
from serve_app.detached import detached, nothing_started
from serve_app.handle_api import HandleSurface


def deployment_name(spec: AgentSpec) -> str:
    """'support@v1' is the agent version's deployment."""
    return spec.key


@serve.deployment(
    # I/O-bound: a run start is two small actor calls, so many fit in one replica and it
    # needs only a sliver of CPU (DESIGN.md: Serve's defaults are 5 requests and 1 CPU).
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0.05},
    # A replica that died is noticed at its next health check: keep the outage short.
    health_check_period_s=2,
)
class AgentDeployment(HandleSurface):
    """Starts runs of one agent version. Runs live on run hosts, not in this replica, so a
    redeploy that drains this replica does not end them. Called by the gateway, which has
    already checked the caller (see README: whoever reaches the Ray cluster is trusted)."""

    handle_methods = frozenset({"start", "spec"})

    def __init__(self, spec: AgentSpec, settings: RuntimeSettings) -> None:
        check_agents_package()
        configure_tracing()
        configure_logging("agent-deployment")
        self._spec = spec
        self._settings = settings
        self._runs: Runs | None = None
        self._limiter: NamedActor | None = None

    async def _client(self) -> tuple[Runs, NamedActor]:
        if self._runs is None or self._limiter is None:
            pool = await ensure_runtime(self._settings)
            self._runs = Runs(self._settings, pool, recreate=True)
            self._limiter = service(self._settings, LIMITER_ACTOR, recreate=True)
        return self._runs, self._limiter

    async def start(
        self,
        input: str,
        thread_id: str | None = None,
        context: TenantContext | None = None,
        namespace: str | None = None,
        assignment: str = "stable",
        traceparent: str | None = None,
        user: str | None = None,
    ) -> str:
        """Start a run of this version for a tenant (and its end user `user`); returns its
        id once `run.created` is durable. The tenant limiter admits it first (TenantLimited,
        with the limit that refused); a shadow run (`context.shadow_of`) takes no slot. A
        caller that leaves mid-start does not stop it half-way (serve_app.detached). The
        run's trace is a child of `traceparent` (W3C), else a trace of its own."""
        trace = RunTrace.start(traceparent)
        context = context or TenantContext()
        return await detached(
            self._start(input, thread_id, context, namespace, assignment, trace, user)
        )

    async def _start(
        self,
        input: str,
        thread_id: str | None,
        context: TenantContext,
        namespace: str | None,
        assignment: str,
        trace: RunTrace,
        user: str | None = None,
    ) -> str:
        runs, limiter = await self._client()
        lease = None
        if context.shadow_of is None:
            with tracer().start_as_current_span(
                "rayfleet.limiter.admit_run",
                context=trace.parent_context(),
                attributes={"rayfleet.tenant": context.tenant},
            ) as span:
                admission: Admission = await limiter.admit_run.remote(context.tenant)
                if not admission.ok and admission.limit is not None:
                    span.set_attribute("rayfleet.limiter.refused", admission.limit)
            if not admission.ok:
                limiter_refused(context.tenant, admission.limit)
                raise TenantLimited(
                    f"tenant {context.tenant!r} is over its {admission.limit} limit",
                    admission.retry_after_s,
                    admission.quota,
                    admission.remaining,
                    admission.reset_s,
                    admission.limit,
                )
            lease = admission.lease
            context = context.model_copy(update={"lease": lease})
        try:
            return await runs.start(
                self._spec, input, thread_id, context, namespace, assignment, trace, user
            )
        except BaseException as exc:
            if lease is not None and nothing_started(exc):
                # Releasing is idempotent: the host may have released it too.
                await limiter.release_run.remote(lease)
            raise  # else the run may exist: its lease expires unless its host renews it

    def spec(self) -> AgentSpec:
        return self._spec
