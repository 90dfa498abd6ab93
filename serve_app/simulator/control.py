"""The simulator's state and its `/_sim/*` control routes: how tests steer and inspect it.
Mounted only with `SimSettings.control_api` (off by default).

POST   /_sim/script     queue scripted replies: {"replies": [...]}
GET    /_sim/script     {"pending": <unused replies>}
GET    /_sim/requests   {"requests": [...]} every recorded model request
POST   /_sim/faults     random fault injection on (a FaultConfig); replaces any previous
GET    /_sim/faults     {"faults": null} or {"faults": {"config", "eligible", "injected"}}
DELETE /_sim/faults     random fault injection off
POST   /_sim/reset      clear the queue, the request log, the prompt caches and the faults
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serve_app.simulator.faults import FaultConfig, FaultInjector
from serve_app.simulator.policy import PromptCache, WireError
from serve_app.simulator.script import ReplyQueue, RequestLog, parse_replies

if TYPE_CHECKING:
    from serve_app.simulator.app import SimSettings


class SimState:
    """Everything one simulator app remembers between requests."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.queue = ReplyQueue()
        # Without the control API nobody can read the log: keep no request bodies at all.
        self.log = RequestLog() if settings.control_api else RequestLog(max_entries=0)
        self.cache = PromptCache()
        self.faults: FaultInjector | None = None

    def reset(self) -> None:
        self.queue.clear()
        self.log.clear()
        self.cache.clear()
        self.faults = None


def sim_state(request: Request) -> SimState:
    """The state of the app serving `request`."""
    state: SimState = request.app.state.sim
    return state


async def read_json(request: Request) -> Any:
    """The request body as JSON (WireError 400 if it is not)."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WireError(400, f"request body is not valid JSON: {exc}") from exc


async def post_script(request: Request) -> Response:
    try:
        body = await read_json(request)
        replies = parse_replies(body.get("replies") if isinstance(body, dict) else None)
    except WireError as err:
        return JSONResponse({"error": err.message}, status_code=400)
    except ValidationError as err:
        return JSONResponse({"error": err.errors(include_url=False)}, status_code=422)
    sim_state(request).queue.extend(replies)
    return JSONResponse({"pending": len(sim_state(request).queue)})


async def get_script(request: Request) -> Response:
    return JSONResponse({"pending": len(sim_state(request).queue)})


async def get_requests(request: Request) -> Response:
    return JSONResponse({"requests": list(sim_state(request).log.entries)})


async def post_faults(request: Request) -> Response:
    try:
        config = FaultConfig.model_validate(await read_json(request))
    except WireError as err:
        return JSONResponse({"error": err.message}, status_code=400)
    except ValidationError as err:
        return JSONResponse({"error": err.errors(include_url=False)}, status_code=422)
    injector = FaultInjector(config)
    sim_state(request).faults = injector
    return JSONResponse({"faults": injector.summary()})


async def get_faults(request: Request) -> Response:
    injector = sim_state(request).faults
    return JSONResponse({"faults": injector.summary() if injector else None})


async def delete_faults(request: Request) -> Response:
    injector = sim_state(request).faults
    sim_state(request).faults = None
    return JSONResponse({"faults": None, "last": injector.summary() if injector else None})


async def reset(request: Request) -> Response:
    sim_state(request).reset()
    return JSONResponse({"pending": 0})


CONTROL_ROUTES = [
    Route("/_sim/script", post_script, methods=["POST"]),
    Route("/_sim/script", get_script, methods=["GET"]),
    Route("/_sim/requests", get_requests, methods=["GET"]),
    Route("/_sim/faults", post_faults, methods=["POST"]),
    Route("/_sim/faults", get_faults, methods=["GET"]),
    Route("/_sim/faults", delete_faults, methods=["DELETE"]),
    Route("/_sim/reset", reset, methods=["POST"]),
]
