"""The private PostgreSQL server the tests get (tests/postgres.py, tests/fixtures_pg.py)."""

from __future__ import annotations

import psycopg
import pytest

from tests.postgres import PostgresServer


def test_a_database_stores_and_reads_rows(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO notes VALUES (%s, %s)", (1, "héllo"))
        conn.commit()
    with psycopg.connect(postgres_url, connect_timeout=10) as conn:
        assert conn.execute("SELECT id, body FROM notes").fetchall() == [(1, "héllo")]


def test_the_server_listens_on_loopback_only(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.url(), connect_timeout=10) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()
            for name in ("listen_addresses", "fsync", "max_connections", "server_encoding")
        }
        peer = conn.execute("SELECT host(inet_server_addr())").fetchone()
    assert settings == {
        "listen_addresses": ("127.0.0.1",),
        "fsync": ("off",),
        "max_connections": ("300",),
        "server_encoding": ("UTF8",),
    }
    assert peer == ("127.0.0.1",)


def test_each_test_database_is_separate(postgres_server: PostgresServer, postgres_url: str) -> None:
    other = postgres_server.url(postgres_server.create_database("other_of_this_test"))
    try:
        with psycopg.connect(postgres_url, connect_timeout=10) as conn:
            conn.execute("CREATE TABLE mine (x int)")
        with psycopg.connect(other, connect_timeout=10) as conn:
            found = conn.execute("SELECT to_regclass('mine') IS NOT NULL").fetchone()
        assert found == (False,)
    finally:
        postgres_server.drop_database("other_of_this_test")


def test_the_password_is_required_and_never_shown(postgres_server: PostgresServer) -> None:
    password = postgres_server.url().split(":")[2].split("@")[0]
    assert password not in repr(postgres_server) and password not in str(postgres_server)
    wrong = postgres_server.url().replace(password, "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=10).close()


def test_a_durable_server_stops_and_leaves_nothing_behind() -> None:
    with PostgresServer(fsync=True) as server:
        url = server.url()
        with psycopg.connect(url, connect_timeout=10) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
    assert not server.dir.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()
