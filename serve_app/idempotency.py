"""`Idempotency-Key` on the creating POSTs (`.../runs`, `.../batches`): a retried request
gets what the first one created instead of creating it again.

Follows the IETF draft "The Idempotency-Key HTTP Header Field"
(draft-ietf-httpapi-idempotency-key-header):
- a key is scoped to the tenant and the endpoint; the first request with it claims it in the
  run store (one atomic claim, so replicas and concurrent requests agree: one run, not two);
- the same key with the same request (agent and validated body) returns the first request's
  run or batch id; with a different request it is a 422 (the draft's "reuse with a different
  payload"); while the first request is still being handled, a retry waits a little, then
  gets 409 with Retry-After (the draft's "original request still being processed");
- a first request that rayfleet refused (429, 404, ...) gives the key back, so a retry may
  succeed; one that failed without proving that nothing was created (a dead actor or
  replica) keeps its claim pending, and a client that leaves does not stop the creation
  (serve_app.detached): its run id is still recorded with the key;
- keys are remembered `idempotency_key_ttl_s` (24 h by default), then forgotten by the
  retention sweep. A claim whose gateway died before answering is taken over after
  `pending_s`: a batch keeps the id it was given (its driver's submit is idempotent), a run
  may then be started again (its id is chosen by the host that starts it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from actors.state.runs import KeyClaim
from agents.errors import Conflict, RequestInvalid
from agents.logs import first_traceback
from serve_app.detached import detached, nothing_started

logger = logging.getLogger("rayfleet")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
"""`true` on an answer that repeats the first request's result."""
_KEY = re.compile(r"[!-~]{1,255}")
"""Printable ASCII without spaces: what the OpenAPI document declares."""


class KeyStore(Protocol):
    """The state's idempotency keys (actors.state.runs.IdempotencyKeys)."""

    async def claim_key(
        self,
        scope: str,
        fingerprint: str,
        proposed: str | None,
        now: float,
        ttl_s: float,
        pending_s: float,
    ) -> KeyClaim: ...

    async def finish_key(self, scope: str, result: str) -> None: ...

    async def release_key(self, scope: str) -> None: ...


@dataclass(frozen=True)
class Created:
    """What a request created: the first request's id when `replayed`."""

    id: str
    replayed: bool = False

    def headers(self) -> dict[str, str]:
        return {REPLAYED_HEADER: "true"} if self.replayed else {}


def key_of(header: str | None) -> str | None:
    """The header's key (an sf-string per the draft: quotes optional here), or None."""
    if header is None:
        return None
    key = header.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if _KEY.fullmatch(key) is None:
        raise RequestInvalid(
            f"{HEADER} must be 1 to 255 printable ASCII characters without spaces, "
            f"not {header[:40]!r}",
            HEADER,
        )
    return key


def fingerprint(agent: str, body: BaseModel) -> str:
    """What makes two requests "the same": the agent and the validated body."""
    canonical = json.dumps([agent, body.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Idempotency:
    """Creates once per (tenant, endpoint, key). No Ray in here: `store` is the run store
    or an adapter over its actor."""

    def __init__(
        self,
        store: KeyStore,
        ttl_s: float,
        *,
        pending_s: float = 120.0,
        wait_s: float = 10.0,
        poll_s: float = 0.1,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._pending_s = pending_s
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._clock = clock
        self._sleep = sleep

    async def once(
        self,
        headers: Mapping[str, str],
        tenant: str,
        endpoint: str,
        agent: str,
        body: BaseModel,
        create: Callable[[str | None], Awaitable[str]],
        proposed: str | None = None,
    ) -> Created:
        """`create(id)` unless the request's key (in `headers`) was used before: then what
        the first request created. `proposed` is an id `create` will use if given (kept
        with the claim, so a request that takes over a dead claim reuses it)."""
        key = key_of(headers.get(HEADER))
        if key is None:
            return Created(await create(proposed))
        scope = json.dumps([tenant, endpoint, key])
        claim = await self._claim(scope, fingerprint(agent, body), proposed)
        if claim.state == "mismatch":
            raise RequestInvalid(
                f"{HEADER} {key[:80]!r} was already used with a different request "
                "(use a new key for a new request)",
                HEADER,
            )
        if claim.state == "done":
            assert claim.result is not None
            return Created(claim.result, replayed=True)

        async def create_and_record() -> str:
            try:
                created = await create(claim.result)
            except BaseException as exc:
                if nothing_started(exc):  # a retry may create: give the key back
                    await self._release(scope)
                raise  # else it may exist: the claim stays pending until taken over
            await self._finish(scope, created)
            return created

        return Created(await detached(create_and_record()))

    async def _claim(self, scope: str, request: str, proposed: str | None) -> KeyClaim:
        """Claim the key; while its first request is being handled, wait for it (bounded)."""
        waited = 0.0
        while True:
            claim = await self._store.claim_key(
                scope, request, proposed, self._clock(), self._ttl_s, self._pending_s
            )
            if claim.state != "pending":
                return claim
            if waited >= self._wait_s:
                raise Conflict(
                    f"a request with this {HEADER} is still being handled: retry it shortly", 1.0
                )
            await self._sleep(self._poll_s)
            waited += self._poll_s

    async def _finish(self, scope: str, created: str) -> None:
        for attempt in range(1, 4):
            try:
                await self._store.finish_key(scope, created)
                return
            except Exception as exc:  # it was created: answer anyway
                logger.warning(
                    "could not record idempotency key (%d): %r",
                    attempt,
                    exc,
                    exc_info=first_traceback(exc),
                )
                await self._sleep(0.1 * attempt)

    async def _release(self, scope: str) -> None:
        try:
            await self._store.release_key(scope)
        except Exception as exc:  # the claim lapses after pending_s
            logger.warning(
                "could not release idempotency key: %r", exc, exc_info=first_traceback(exc)
            )
