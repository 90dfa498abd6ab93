"""Listing runs for a caller: the store's pages, scoped to what the caller may see.

A tenant's key lists that tenant's runs only (a `tenant` filter naming another tenant finds
nothing); the admin key lists every tenant's, or one tenant's with `tenant`. The list comes
from the state store, so runs no longer held by any host are listed too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from actors.state.run_index import BadCursor, RunFilter, RunPage
from actors.state.runs import RunStore
from agents.errors import RequestInvalid
from serve_app.schemas import RunListQuery, ThreadRunsQuery


def _tenant(asked: str | None, caller: str | None) -> tuple[str | None, bool]:
    """The tenant to filter on (None: every tenant), and whether nothing can match."""
    if caller is None:  # the admin key
        return asked, False
    return caller, asked not in (None, caller)


async def list_page(store: RunStore, query: RunListQuery, caller: str | None) -> RunPage:
    """A page of runs, newest first. `caller`: the caller's tenant, None for the admin key."""
    tenant, nothing = _tenant(query.tenant, caller)
    if nothing:
        return RunPage(runs=[])
    where = RunFilter(
        tenant=tenant,
        agent=query.agent,
        version=query.version,
        status=query.status,
        thread_id=query.thread_id,
        since=query.since,
        until=query.until,
    )
    try:
        return await store.list_runs(where, query.limit, query.cursor)
    except BadCursor as exc:
        raise RequestInvalid(f"cursor: {exc}", "cursor") from None


async def thread_page(store: RunStore, query: ThreadRunsQuery, caller: str | None) -> RunPage:
    """A page of a conversation's runs, oldest first (the caller's, as for `list_page`)."""
    tenant, nothing = _tenant(query.tenant, caller)
    if nothing:
        return RunPage(runs=[])
    try:
        return await store.thread_runs(query.thread_id, tenant, query.limit, query.cursor)
    except BadCursor as exc:
        raise RequestInvalid(f"cursor: {exc}", "cursor") from None


LIVE_POLL_S = 1.0
"""How often a live list reads its first page again."""


async def live_pages(
    store: RunStore, query: RunListQuery, caller: str | None, poll_s: float = LIVE_POLL_S
) -> AsyncIterator[dict[str, str]]:
    """SSE events (`event: runs`) of the first page under `query`: now, then each time it
    changes (a new run, a status or figure that changed). Ends when the client goes."""
    first = query.model_copy(update={"cursor": None})
    sent = ""
    while True:
        page = (await list_page(store, first, caller)).model_dump_json()
        if page != sent:
            sent = page
            yield {"event": "runs", "data": page}
        await asyncio.sleep(poll_s)
