"""Runs, their durable events and the shared settings, on both backends; older SQLite
stores upgraded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from actors.credentials import TenantContext
from actors.state import State
from actors.state.db import SqliteDatabase
from agents.encoded import EncodedEvent
from agents.events import ModelDelta, RunCompleted, RunCreated, StepStarted
from agents.examples import example_specs
from agents.loop import RunInput
from agents.messages import Usage


async def test_an_encoded_event_is_stored_as_its_json(state: State) -> None:
    """A run host hands the store events it has encoded already: the JSON is the row."""
    spec = example_specs()[0]
    request = RunInput(run_id="run-h0-00000000000000000002", input="hi")
    await state.runs.create_run(spec, request, TenantContext(), "h0")
    created = RunCreated(run_id=request.run_id, seq=1, agent="support", version="v1", input="hi")
    delta = ModelDelta(run_id=request.run_id, seq=2, step=1, text="as encoded")
    # The given JSON is what is stored (here, on purpose, not the event's own encoding).
    stored = delta.model_dump_json().replace("as encoded", "as stored")
    batch = [EncodedEvent.of(created), EncodedEvent(delta, stored)]
    await state.runs.append_events({request.run_id: batch})
    record = await state.runs.load_run(request.run_id)
    assert record is not None and record.events[0] == created
    assert record.events[1] == delta.model_copy(update={"text": "as stored"})


async def test_runs_events_and_settings_round_trip(state: State) -> None:
    store, settings = state.runs, state.settings
    spec = example_specs()[0]
    request = RunInput(run_id="run-h0-00000000000000000001", input="hi", tenant="acme")
    await store.create_run(spec, request, TenantContext(tenant="acme"), "h0")
    await store.create_run(spec, request, TenantContext(tenant="acme"), "h0")  # a retry
    created = RunCreated(run_id=request.run_id, seq=1, agent="support", version="v1", input="hi")
    await store.append_events(
        {request.run_id: [created, StepStarted(run_id=request.run_id, seq=2, step=1)]}
    )
    assert await store.live_runs_on("h0") == [request.run_id]
    assert await store.live_hosts() == ["h0"]
    done = RunCompleted(
        run_id=request.run_id, seq=3, output="ok", steps=1, usage=Usage(), cost_usd=0.0
    )
    await store.append_events({request.run_id: [done, done]})  # a retried flush: no dup
    record = await store.load_run(request.run_id)
    assert record is not None and [e.seq for e in record.events] == [1, 2, 3]
    assert record.context.tenant == "acme" and record.spec == spec
    assert await store.live_runs_on("h0") == [] and await store.live_hosts() == []
    await store.move_run(request.run_id, "h1")
    assert await store.host_of(request.run_id) == "h1"
    assert await store.load_run("run-h0-00000000000000000099") is None

    await settings.put_setting("kill/admin", '{"tools": {"issue_refund": "audit"}}')
    await settings.put_setting("rollback/support", "{}")
    await settings.put_setting("kill_switch", "not under kill/")  # '_' is not a wildcard
    await settings.put_setting("kill0", "just past the range")
    await settings.put_setting("kill/admin", '{"tools": {}}')  # set again: replaced
    assert await settings.settings("kill/") == {"kill/admin": '{"tools": {}}'}
    assert set(await settings.settings("")) == {
        "kill/admin",
        "rollback/support",
        "kill_switch",
        "kill0",
    }
    await settings.put_setting("kill/admin", None)
    assert await settings.settings("kill/") == {}


async def test_what_one_process_committed_another_reads(state: State) -> None:
    request = RunInput(run_id="run-h0-00000000000000000003", input="hi")
    await state.runs.create_run(example_specs()[0], request, TenantContext(), "h0")
    created = RunCreated(run_id=request.run_id, seq=1, agent="support", version="v1", input="hi")
    await state.runs.append_events({request.run_id: [created]})
    other = State(state.url)  # a process that starts later, on the same state
    try:
        record = await other.runs.load_run(request.run_id)
        assert record is not None and [e.kind for e in record.events] == ["run.created"]
    finally:
        await other.close()


def _old_store(path: Path, columns: str, row: tuple[str, ...]) -> None:
    old = sqlite3.connect(path)
    old.execute(f"CREATE TABLE runs ({columns})")
    old.execute(f"INSERT INTO runs VALUES ({', '.join('?' * len(row))})", row)
    old.commit()
    old.close()


async def test_a_store_from_before_tenants_is_upgraded(tmp_path: Path) -> None:
    spec = example_specs()[0]
    request = RunInput(run_id="run-h0-00000000000000000002", input="hi")
    _old_store(
        tmp_path / "runs.sqlite",
        "run_id TEXT PRIMARY KEY, spec TEXT NOT NULL, request TEXT NOT NULL,"
        " host_id TEXT NOT NULL, ended INTEGER NOT NULL DEFAULT 0",
        (request.run_id, spec.model_dump_json(), request.model_dump_json(), "h0", "0"),
    )
    state = State(f"sqlite://{tmp_path}")
    try:
        record = await state.runs.load_run(request.run_id)
        assert record is not None and record.context.tenant == "default"
    finally:
        await state.close()


async def test_a_store_from_before_retention_gets_end_times(tmp_path: Path) -> None:
    _old_store(
        tmp_path / "runs.sqlite",
        "run_id TEXT PRIMARY KEY, spec TEXT NOT NULL, request TEXT NOT NULL,"
        " context TEXT NOT NULL, host_id TEXT NOT NULL, ended INTEGER NOT NULL DEFAULT 0",
        ("r1", "{}", "{}", "{}", "h0", "1"),
    )
    state = State(f"sqlite://{tmp_path}")
    try:
        # Ended before the upgrade: counted from the upgrade, so kept a full retention period.
        assert await state.runs.purge_ended(1.0) == []
        assert len(await state.runs.purge_ended(10.0**12)) == 1
    finally:
        await state.close()


async def test_every_sqlite_commit_is_synced_to_disk(tmp_path: Path) -> None:
    # WAL with synchronous=FULL (2): a committed event survives a power cut, not only a crash.
    state = State(f"sqlite://{tmp_path}")
    try:
        db = state.database("runs")
        assert isinstance(db, SqliteDatabase)
        assert await db.fetchone("PRAGMA journal_mode") == ("wal",)
        assert await db.fetchone("PRAGMA synchronous") == (2,)
    finally:
        await state.close()
