"""Pytest plugin: a private PostgreSQL server (tests/postgres.py) for the tests that ask.

`postgres_server` starts one server per session, only when a test first requests it, and
stops it at the end. `postgres_url` gives each test a fresh database of its own on that
server and drops it afterwards. If the server cannot start, the requesting tests error with
the reason: they are not skipped, since CI must have PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server on 127.0.0.1 (fsync off: tests guard against process
    death, not power loss)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """`postgresql://...` of a new, empty database for this test alone; dropped afterwards."""
    name = postgres_server.create_database(f"test_{uuid.uuid4().hex}")
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
