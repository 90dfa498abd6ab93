"""Request bodies: the one place the gateway turns bytes into JSON.

Nesting is bounded: a body of 100 000 `[` would otherwise make the JSON parser (or whatever
walks the value next) raise RecursionError, a 500. No route takes a body nested deeper than a
few levels, so anything past MAX_JSON_DEPTH is refused as invalid input (422).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from agents.errors import RequestInvalid, RequestTooLarge

MAX_JSON_DEPTH = 32
"""Arrays and objects inside one another in a request body, at most."""


async def read_json(request: Request, limit: int) -> Any:
    """The request's body as JSON: RequestTooLarge past `limit` bytes (declared or read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"body of {declared} bytes is over the {limit}-byte limit", "body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestTooLarge(f"body is over the {limit}-byte limit", "body")
    return parse_json(body)


def parse_json(raw: bytes | bytearray, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The body's JSON value; RequestInvalid (field `body`) if it is not JSON or is nested
    deeper than `max_depth`."""
    too_deep = RequestInvalid(
        f"body is nested more than {max_depth} levels deep (arrays and objects)", "body"
    )
    try:
        value = json.loads(raw)
    except RecursionError:  # deeper than the interpreter's stack allows: surely too deep
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestInvalid(f"body is not valid JSON: {exc}", "body") from None
    if depth_exceeds(value, max_depth):
        raise too_deep
    return value


def depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether arrays and objects nest more than `max_depth` levels in `value` (a parsed JSON
    value). Iterative, so it cannot itself run out of stack."""
    if not isinstance(value, (dict, list)):
        return False
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > max_depth:
            return True
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
