"""The console: a web page to watch runs live, start them and run the fleet.

Static HTML, ES modules and CSS shipped as package data (no build step, no CDN), served by
the gateway at `/console` under a strict Content-Security-Policy. The page calls the HTTP
API with the key a person enters, kept only in the tab's session storage: it sees exactly
what that key may see.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from serve_app.http_errors import problem

_STATIC = Path(__file__).parent / "static"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
ASSETS = (
    "api.js",
    "approvals.js",
    "budget.js",
    "console.css",
    "console.js",
    "fleet.js",
    "format.js",
    "liveruns.js",
    "providers.js",
    "run.js",
    "runs.js",
    "runtable.js",
    "sse.js",
    "tenants.js",
    "thread.js",
    "timeline.js",
    "versions.js",
    "waterfall.js",
)
"""The files under `/console/static/`: nothing else is served from there."""

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
"""Only the gateway's own scripts, styles and API: no inline script, no other origin."""

_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Small files, and a new release must not run an old script against a new API.
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return (_STATIC / name).read_bytes()


async def console_page(request: Request) -> Response:
    """`GET /console`: the page itself."""
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


async def console_asset(request: Request) -> Response:
    """`GET /console/static/{name}`: one of the page's scripts or its style sheet."""
    name = request.path_params["name"]
    if name not in ASSETS:  # never a path from the request: only the files named above
        return problem(404, "NotFound", f"no console file {name[:80]!r}", "not_found")
    return Response(_read(name), media_type=_TYPES[Path(name).suffix], headers=_HEADERS)
