"""The HTTP part both provider clients share: one call with a deadline, errors translated.

Every failure leaves here as ProviderUnavailable (408/409/429/5xx, timeouts, connection
errors, broken streams) or ProviderRejected (other 4xx). Nothing here retries: the router is
the only retry loop. The API key never appears in an error message.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx2

from actors.providers._sse import SSEEvent, SSEParser
from agents.errors import ModelOutputUnusable, ProviderError, ProviderRejected, ProviderUnavailable

_MAX_ERROR_CHARS = 300


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` as seconds or an HTTP date."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


def redact(text: str, secret: str | None) -> str:
    """The text without the secret, cut to a readable length."""
    if secret:
        text = text.replace(secret, "***")
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "..."


def _error_detail(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace").strip()
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind, message = error.get("type"), error.get("message")
        return f"{kind}: {message}" if kind else str(message)
    return str(body)


def status_error(
    provider: str, status: int, headers: Mapping[str, str], raw: bytes, secret: str | None
) -> ProviderError:
    """The error for an HTTP error status."""
    message = redact(f"{provider}: HTTP {status}: {_error_detail(raw)}", secret)
    if status in (408, 409, 429) or status >= 500 or status < 400:
        return ProviderUnavailable(message, provider, status, parse_retry_after(headers))
    return ProviderRejected(message, provider, status)


class _Deadline:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._end = time.monotonic() + timeout_s

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())


def _transport_error(
    provider: str, exc: Exception, timeout_s: float, secret: str | None
) -> ProviderUnavailable:
    if isinstance(exc, (httpx2.TimeoutException, TimeoutError)):
        return ProviderUnavailable(f"{provider}: no answer within {timeout_s:g} s", provider)
    detail = redact(f"{provider}: connection failed: {type(exc).__name__}: {exc}", secret)
    return ProviderUnavailable(detail, provider)


async def stream_events(
    http: httpx2.AsyncClient,
    url: str,
    *,
    provider: str,
    headers: dict[str, str],
    body: dict[str, Any],
    timeout_s: float,
    secret: str | None,
) -> AsyncGenerator[SSEEvent, None]:
    """POST `body` and yield the SSE events of the reply, all within `timeout_s` of waiting.

    The deadline covers connecting, the headers and every read (time the consumer spends
    between events counts too: the whole call has one budget).
    """
    deadline = _Deadline(timeout_s)
    request = http.build_request(
        "POST", url, json=body, headers=headers, timeout=httpx2.Timeout(timeout_s)
    )
    try:
        async with asyncio.timeout(deadline.remaining()):
            response = await http.send(request, stream=True)
    except (httpx2.TransportError, TimeoutError) as exc:
        raise _transport_error(provider, exc, timeout_s, secret) from None
    try:
        if response.status_code != 200:
            async with asyncio.timeout(deadline.remaining()):
                raw = await response.aread()
            raise status_error(provider, response.status_code, response.headers, raw, secret)
        parser = SSEParser()
        lines = response.aiter_lines()
        while True:
            try:
                async with asyncio.timeout(deadline.remaining()):
                    line = await anext(lines)
            except StopAsyncIteration:
                return
            event = parser.feed(line)
            if event is not None:
                yield event
    except (httpx2.TransportError, httpx2.DecodingError, TimeoutError) as exc:
        raise _transport_error(provider, exc, timeout_s, secret) from None
    finally:
        await response.aclose()


async def post_json(
    http: httpx2.AsyncClient,
    url: str,
    *,
    provider: str,
    headers: dict[str, str],
    body: dict[str, Any],
    timeout_s: float,
    secret: str | None,
) -> Any:
    """POST `body` and return the decoded JSON reply (non-streaming endpoints)."""
    try:
        async with asyncio.timeout(timeout_s):
            response = await http.post(
                url, json=body, headers=headers, timeout=httpx2.Timeout(timeout_s)
            )
    except (httpx2.TransportError, httpx2.DecodingError, TimeoutError) as exc:
        raise _transport_error(provider, exc, timeout_s, secret) from None
    if response.status_code != 200:
        raise status_error(
            provider, response.status_code, response.headers, response.content, secret
        )
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProviderUnavailable(f"{provider}: reply is not JSON", provider, 200) from None


def decode_data(provider: str, event: SSEEvent) -> dict[str, Any]:
    """An event's JSON payload (a garbled one makes the provider unavailable)."""
    try:
        value = json.loads(event.data)
    except json.JSONDecodeError:
        raise ProviderUnavailable(f"{provider}: garbled stream event", provider, 200) from None
    if not isinstance(value, dict):
        raise ProviderUnavailable(f"{provider}: unexpected stream event", provider, 200)
    return value


def parse_arguments(provider: str, name: str, raw: str) -> dict[str, Any]:
    """A tool call's JSON arguments ("" = none)."""

    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ModelOutputUnusable(
            f"{provider}: tool call {name!r} has arguments that are not JSON: {raw[:80]!r}"
        ) from None
    if not isinstance(value, dict):
        raise ModelOutputUnusable(f"{provider}: tool call {name!r} arguments are not an object")
    return value


class ClientBase:
    """What every provider client shares: a name, an endpoint, a default key (a tenant's own
    key may replace it per call) and the process's pooled HTTP client."""

    _fixed_headers: dict[str, str] = {}

    def __init__(
        self, name: str, base_url: str, api_key: str | None, http: httpx2.AsyncClient
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._http = http

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    def _auth(self, key: str) -> dict[str, str]:
        raise NotImplementedError

    def _headers(self, api_key: str | None = None) -> dict[str, str]:
        key = api_key or self._api_key
        headers = {"accept": "text/event-stream", **self._fixed_headers}
        if key:
            headers.update(self._auth(key))
        return headers
