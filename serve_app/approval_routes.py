"""Deciding a tool call a run waits on: `POST /v1/runs/{run_id}/approvals/{call_id}` and the
handle's `decide_approval`. A mixin of the gateway, as serve_app/admin_routes.py is.

Who may decide is the tool's `approval.deciders`: the run's tenant (its own key) and/or the
admin key. Another tenant's run does not exist for the caller (404); a call that does not
wait (decided already, never asked, the run has ended) is a 409; a key that may not decide
this call is a 403. The decision is stored before the run resumes, on whichever host.
"""

from __future__ import annotations

from pydantic import JsonValue
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.runs_client import Runs
from agents.errors import Forbidden, NotPending, UnknownRun
from agents.logs import bind_run
from agents.summary import RunSummary
from serve_app.bodies import read_json
from serve_app.config import AppConfig
from serve_app.http_params import validated
from serve_app.schemas import ApprovalDecision
from serve_app.tenancy import Authenticator, TenantConfig


class ApprovalRoutes:
    """The approval route and handle method; the gateway provides what they read."""

    _auth: Authenticator
    _config: AppConfig

    async def _client(self) -> Runs:
        raise NotImplementedError  # the gateway's: the runs client, made on first use

    def approval_routes(self) -> list[Route]:
        path = "/v1/runs/{run_id}/approvals/{call_id}"
        return [Route(path, self._http_decide, methods=["POST"])]

    async def decide_approval(
        self,
        run_id: str,
        call_id: str,
        decision: str,
        arguments: dict[str, JsonValue] | None = None,
        message: str | None = None,
        api_key: str | None = None,
    ) -> RunSummary:
        """Approve, edit or reject the tool call the run waits on; returns the run's summary
        once the decision is stored and the run has resumed."""
        body = {"decision": decision, "arguments": arguments, "message": message}
        header = f"Bearer {api_key}" if api_key else None
        return await self._decide(run_id, call_id, validated(ApprovalDecision, body), header)

    async def _http_decide(self, request: Request) -> Response:
        header = request.headers.get("authorization")
        body = validated(ApprovalDecision, await read_json(request, self._config.max_body_bytes))
        params = request.path_params
        summary = await self._decide(params["run_id"], params["call_id"], body, header)
        return JSONResponse(summary.model_dump(mode="json"))

    async def _decide(
        self, run_id: str, call_id: str, body: ApprovalDecision, authorization: str | None
    ) -> RunSummary:
        admin = self._auth.is_admin(authorization)
        caller: TenantConfig | None = None
        if not admin:
            caller = self._auth.authenticate(authorization)
            bind_run(tenant=caller.id)
        runs = await self._client()
        summary = await runs.summary(run_id)
        if caller is not None and summary.tenant != caller.id:
            raise UnknownRun(f"unknown run {run_id!r}", run_id)
        asked = summary.approval
        if asked is None or asked.call_id != call_id:
            raise NotPending(f"tool call {call_id[:80]!r} of run {run_id!r} does not wait")
        who = "admin" if caller is None else "tenant"
        if who not in asked.deciders:
            raise Forbidden(f"this call is decided by: {', '.join(asked.deciders)}")
        by = "admin" if caller is None else f"tenant:{caller.id}"
        decided: RunSummary = await runs.decide(
            run_id, call_id, body.decision, by, body.arguments, body.message
        )
        return decided
