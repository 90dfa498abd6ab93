"""A separate Ray driver that makes handle calls and prints each outcome as a JSON line.

    echo '[{"method": "_start", ...}]' | RAY_ADDRESS=host:port python -m tests.serve.handle_calls

Each call: `method`, optional `kwargs`, `stream` (iterate the response), `deployment` (a
deployment of the `rayfleet` app; default: the app's ingress), `dump` (the result is a
pydantic model: answer it whole as `json`). Each outcome: `ok`, and for
an error its rayfleet `code` and `message`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from ray import serve

from agents.errors import RayfleetError
from serve_app.join import join


async def call(spec: dict[str, Any]) -> dict[str, Any]:
    handle = (
        serve.get_deployment_handle(spec["deployment"], "rayfleet")
        if spec.get("deployment")
        else serve.get_app_handle("rayfleet")
    )
    stream = bool(spec.get("stream"))
    response = handle.options(method_name=spec["method"], stream=stream).remote(
        **spec.get("kwargs", {})
    )
    try:
        if stream:
            items = [item async for item in response]
            return {"ok": True, "items": len(items)}
        result = await response
        if spec.get("dump"):  # the result as JSON, whole
            return {"ok": True, "json": result.model_dump(mode="json")}
        return {"ok": True, "result": repr(result)[:200]}
    except RayfleetError as exc:
        return {"ok": False, "code": exc.code, "message": exc.message}


async def main(specs: list[dict[str, Any]]) -> None:
    for spec in specs:
        print(json.dumps(await call(spec)), flush=True)


if __name__ == "__main__":
    join(logging_level="ERROR", log_to_driver=False)
    asyncio.run(main(json.load(sys.stdin)))
