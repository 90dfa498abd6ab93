"""The gateway's /v1/admin routes: kill switches, rollbacks, shadows, tenants, costs and
provider health. Every one of them answers only the admin key.

A mixin of the gateway (`Gateway` inherits it): these routes read the same replica state
as the rest of the API (the authenticator the deploy config last set, the traffic state, the
stores), so they live on the same object and only their code lives here.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.named import NamedActor
from actors.runs_client import Runs
from actors.state import State
from actors.switches import KILL_PREFIX, KillSwitches
from agents.errors import RequestInvalid, Unauthorized
from serve_app.bodies import read_json
from serve_app.delivery import KILL_ADMIN, ROLLBACK, Delivery
from serve_app.health import provider_health
from serve_app.http_params import since_param, validated
from serve_app.schemas import KillRequest
from serve_app.tenancy import Authenticator


class AdminRoutes:
    """The admin routes; the gateway provides the state they read."""

    _auth: Authenticator
    _delivery: Delivery
    _state: State
    _limiter: NamedActor | None

    async def _client(self) -> Runs:
        raise NotImplementedError  # the gateway's: the runs client, made on first use

    def admin_routes(self) -> list[Route]:
        return [
            Route("/v1/admin/tenants", self._http_admin_tenants, methods=["GET"]),
            Route("/v1/admin/costs", self._http_admin_costs, methods=["GET"]),
            Route("/v1/admin/providers", self._http_admin_providers, methods=["GET"]),
            Route("/v1/admin/kill", self._http_admin_kill, methods=["POST"]),
            Route("/v1/admin/kill", self._http_admin_kill_state, methods=["GET"]),
            Route("/v1/admin/agents/{agent}/rollback", self._http_rollback, methods=["POST"]),
            Route("/v1/admin/agents/{agent}/shadows", self._http_shadows, methods=["GET"]),
        ]

    def _admin(self, request: Request) -> None:
        if not self._auth.is_admin(request.headers.get("authorization")):
            raise Unauthorized("an admin key is required")

    async def _delivery_settings(self) -> dict[str, str]:
        """The stored settings the traffic state is derived from (not batches' state)."""
        kill = await self._state.settings.settings(KILL_PREFIX)
        rollbacks = await self._state.settings.settings(ROLLBACK)
        return {**kill, **rollbacks}

    async def _http_admin_kill(self, request: Request) -> Response:
        """Set or clear one kill switch; it is stored, so it survives gateway restarts."""
        self._admin(request)
        switch = validated(KillRequest, await read_json(request, 65_536))
        await self._client()
        # Start from the stored switches, not this replica's copy (up to a second old), so a
        # switch set through another replica is not overwritten.
        self._delivery.refresh(await self._delivery_settings())
        current = self._delivery.admin_kill().model_dump()
        if switch.scope == "global":
            current["global_reason"] = switch.reason
        elif switch.reason is None:
            current[switch.scope].pop(switch.name, None)
        else:
            current[switch.scope][switch.name] = switch.reason
        updated = KillSwitches.model_validate(current)
        await self._state.settings.put_setting(KILL_ADMIN, updated.model_dump_json())
        self._delivery.refresh(await self._delivery_settings())
        return JSONResponse({"kill": updated.model_dump(mode="json")})

    async def _http_admin_kill_state(self, request: Request) -> Response:
        """The admin's kill switches now (those in the deploy config apart)."""
        self._admin(request)
        await self._client()
        self._delivery.refresh(await self._delivery_settings())
        return JSONResponse({"kill": self._delivery.admin_kill().model_dump(mode="json")})

    async def _http_rollback(self, request: Request) -> Response:
        """Send the agent's canary weight to 0 now (until its traffic config changes)."""
        self._admin(request)
        agent = request.path_params["agent"]
        await self._client()
        try:
            key, record = self._delivery.rollback_record(agent, "rolled back by an admin")
        except ValueError as exc:
            raise RequestInvalid(str(exc), "agent") from None
        await self._state.settings.put_setting(key, record)
        self._delivery.refresh(await self._delivery_settings())
        return JSONResponse({"agent": agent, "traffic": self._delivery.describe(agent)})

    async def _http_shadows(self, request: Request) -> Response:
        """How each shadow version compares with the primary it mirrored."""
        self._admin(request)
        await self._client()
        pairs = await self._state.outcomes.shadow_pairs(request.path_params["agent"])
        return JSONResponse({"pairs": [p.model_dump(mode="json") for p in pairs]})

    async def _http_admin_costs(self, request: Request) -> Response:
        """Cost per successful run of every tenant, per agent version, agent and overall."""
        self._admin(request)
        since = since_param(request)
        await self._client()
        report = await self._state.outcomes.cost_report(since)
        return JSONResponse(report.model_dump(mode="json"))

    async def _http_admin_tenants(self, request: Request) -> Response:
        """Every tenant with its limits and today's usage."""
        self._admin(request)
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

    async def _http_admin_providers(self, request: Request) -> Response:
        """Each provider breaker's state over the run hosts (breakers are per process)."""
        self._admin(request)
        runs = await self._client()
        health = provider_health(await runs.breaker_states())
        return JSONResponse(health.model_dump(mode="json"))
