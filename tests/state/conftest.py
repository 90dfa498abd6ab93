"""The state-layer contract: every test here runs once per backend, on SQLite files in a
private directory and on a real PostgreSQL server (tests/fixtures_pg.py), and must pass on
both. Nothing here needs Ray."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.state import State


@pytest.fixture(params=["sqlite", "postgresql"])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[State]:
    """A fresh, empty state on each backend."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'state'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = State(url)
    try:
        yield opened
    finally:
        await opened.close()
