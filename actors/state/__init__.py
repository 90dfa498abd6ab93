"""The state layer: everything rayfleet must not lose, behind one interface per concern,
opened directly by every process that needs it (no actor in between).

    runs       RunStore          runs and their durable event logs       (state/runs.py)
    settings   SettingsStore     kill switches, rollbacks, batch journals (state/runs.py)
    keys       IdempotencyKeys   Idempotency-Key claims                   (state/runs.py)
    outcomes   OutcomeStore      how runs ended, per-version statistics  (state/outcomes.py)
    memory     MemoryStore       conversation threads                     (state/memory.py)
    ledger     EffectLedger      side-effecting tool calls by key        (state/ledger.py)
    limiter    LimiterState      tenant spend, run leases, limits         (state/limiter.py)

Two backends (state/db.py): SQLite files in the data directory (the embedded default: one
node, no server) and PostgreSQL (clusters: every node opens the same database). Where the
state lives is a URL: `RuntimeSettings.state_url`, else `$RAYFLEET_STATE_URL`, else SQLite
in the data directory; `sqlite:///some/dir` puts the SQLite files in that directory.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from actors.datadir import default_data_dir
from actors.state.db import Database, PostgresDatabase, SqliteDatabase
from agents.errors import ConfigError

if TYPE_CHECKING:
    from actors.state.ledger import EffectLedger
    from actors.state.limiter import LimiterState
    from actors.state.memory import MemoryStore
    from actors.state.outcomes import OutcomeStore
    from actors.state.runs import IdempotencyKeys, RunStore, SettingsStore

STATE_URL_ENV = "RAYFLEET_STATE_URL"

# SQLite: one file per concern, so a busy concern does not hold the others' write lock.
# FULL: a commit survives a power cut; outcomes are statistics, where NORMAL will do.
_SQLITE_FILES: dict[str, tuple[str, Literal["NORMAL", "FULL"]]] = {
    "runs": ("runs.sqlite", "FULL"),
    "outcomes": ("outcomes.sqlite", "NORMAL"),
    "memory": ("memory.sqlite", "FULL"),
    "ledger": ("effects.sqlite", "FULL"),
    "limiter": ("limiter.sqlite", "FULL"),
}


def resolve_state_url(configured: str | None, environ: dict[str, str] | None = None) -> str:
    """Where the state lives: `configured`, else $RAYFLEET_STATE_URL, else SQLite in the data
    directory (as `sqlite:///<dir>`)."""
    env = os.environ if environ is None else environ
    url = configured or env.get(STATE_URL_ENV) or ""
    return url or f"sqlite://{default_data_dir()}"


def describe(url: str) -> str:
    """`url` without its password, for logs and errors."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


class State:
    """Every concern's store over one state URL. Each store (and its database) opens on first
    use; `clock` (unix seconds) stamps what they write."""

    def __init__(
        self, url: str, *, clock: Callable[[], float] = time.time, max_connections: int = 8
    ) -> None:
        self.url = url
        self._clock = clock
        self._databases: dict[str, Database] = {}
        if url.startswith(("postgresql://", "postgres://")):
            self.backend: Literal["sqlite", "postgresql"] = "postgresql"
            self._postgres: PostgresDatabase | None = PostgresDatabase(
                url, max_connections=max_connections
            )
            self._sqlite_dir: Path | None = None
        elif url.startswith("sqlite://"):
            self.backend = "sqlite"
            self._postgres = None
            self._sqlite_dir = Path(url.removeprefix("sqlite://"))
            if not self._sqlite_dir.is_absolute():
                raise ConfigError(f"state URL {url!r}: the SQLite directory must be absolute")
        else:
            raise ConfigError(
                f"state URL {describe(url)!r}: expected postgresql://... or sqlite:///<dir>"
            )

    def __repr__(self) -> str:
        return f"State({describe(self.url)!r})"

    def database(self, concern: str) -> Database:
        """The database `concern` lives in (for tests and benchmarks)."""
        if self._postgres is not None:
            return self._postgres
        found = self._databases.get(concern)
        if found is None:
            assert self._sqlite_dir is not None
            name, synchronous = _SQLITE_FILES[concern]
            found = SqliteDatabase(self._sqlite_dir / name, synchronous=synchronous)
            self._databases[concern] = found
        return found

    @functools.cached_property
    def runs(self) -> RunStore:
        from actors.state.runs import RunStore

        return RunStore(self.database("runs"), clock=self._clock)

    @functools.cached_property
    def settings(self) -> SettingsStore:
        from actors.state.runs import SettingsStore

        return SettingsStore(self.database("runs"))

    @functools.cached_property
    def keys(self) -> IdempotencyKeys:
        from actors.state.runs import IdempotencyKeys

        return IdempotencyKeys(self.database("runs"))

    @functools.cached_property
    def outcomes(self) -> OutcomeStore:
        from actors.state.outcomes import OutcomeStore

        return OutcomeStore(self.database("outcomes"), clock=self._clock)

    @functools.cached_property
    def memory(self) -> MemoryStore:
        from actors.state.memory import MemoryStore

        return MemoryStore(self.database("memory"))

    @functools.cached_property
    def ledger(self) -> EffectLedger:
        from actors.state.ledger import EffectLedger

        return EffectLedger(self.database("ledger"), clock=self._clock)

    @functools.cached_property
    def limiter(self) -> LimiterState:
        from actors.state.limiter import LimiterState

        return LimiterState(self.database("limiter"))

    async def close(self) -> None:
        databases = list(self._databases.values())
        if self._postgres is not None:
            databases.append(self._postgres)
        for db in databases:
            await db.close()


def open_state(
    url: str | None = None, *, clock: Callable[[], float] = time.time, max_connections: int = 8
) -> State:
    """The state at `url` (see `resolve_state_url`); a new `State` each call: a process
    opens one and keeps it (see `process_state`)."""
    return State(resolve_state_url(url), clock=clock, max_connections=max_connections)


_process_states: dict[str, State] = {}


def process_state(url: str | None) -> State:
    """This process's one `State` for `url`: actors and replicas share its connections.
    Use it from one event loop (a Ray actor's or a Serve replica's)."""
    resolved = resolve_state_url(url)
    state = _process_states.get(resolved)
    if state is None:
        state = _process_states[resolved] = State(resolved)
    return state
