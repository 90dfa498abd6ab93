"""Opening one of rayfleet's SQLite files: the one place its directory, journal mode and
fsync policy are set, so every state file (runs, memory, outcomes, ledger, limiter) is
opened the same way."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from actors.datadir import private_dir


def connect(
    path: str,
    *,
    synchronous: Literal["NORMAL", "FULL"],
    schema: Iterable[str] = (),
    busy_timeout_s: float = 5.0,
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable from worker
    threads behind the caller's own lock, with `schema` applied.

    WAL always; `synchronous` says what a commit survives: NORMAL a process crash (not a
    power cut), FULL a power cut too, at the cost of an fsync per commit."""
    private_dir(Path(path).parent)
    db = sqlite3.connect(
        path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_s
    )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    for statement in schema:
        db.execute(statement)
    return db
