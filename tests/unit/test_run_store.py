"""The run store: runs, their durable events, shared settings, and older stores upgraded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from actors.credentials import TenantContext
from actors.store import RunStore
from agents.events import RunCompleted, RunCreated, StepStarted
from agents.examples import example_specs
from agents.loop import RunInput
from agents.messages import Usage


async def test_runs_events_and_settings_round_trip(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs.sqlite"))
    spec = example_specs()[0]
    request = RunInput(run_id="run-h0-00000000000000000001", input="hi", tenant="acme")
    await store.create_run(spec, request, TenantContext(tenant="acme"), "h0")
    created = RunCreated(run_id=request.run_id, seq=1, agent="support", version="v1", input="hi")
    await store.append_events(
        {request.run_id: [created, StepStarted(run_id=request.run_id, seq=2, step=1)]}
    )
    assert await store.live_runs_on("h0") == [request.run_id]
    done = RunCompleted(
        run_id=request.run_id, seq=3, output="ok", steps=1, usage=Usage(), cost_usd=0.0
    )
    await store.append_events({request.run_id: [done, done]})  # a retried flush: no dup
    record = await store.load_run(request.run_id)
    assert record is not None and [e.seq for e in record.events] == [1, 2, 3]
    assert record.context.tenant == "acme" and record.spec == spec
    assert await store.live_runs_on("h0") == []
    await store.move_run(request.run_id, "h1")
    assert await store.host_of(request.run_id) == "h1"

    await store.put_setting("kill/admin", '{"tools": {"issue_refund": "audit"}}')
    await store.put_setting("rollback/support", "{}")
    await store.put_setting("kill_switch", "not under kill/")  # '_' is not a wildcard
    await store.put_setting("kill0", "just past the range")
    assert set(await store.settings("kill/")) == {"kill/admin"}
    assert set(await store.settings("")) == {
        "kill/admin",
        "rollback/support",
        "kill_switch",
        "kill0",
    }
    await store.put_setting("kill/admin", None)
    assert await store.settings("kill/") == {}
    store.close()


async def test_a_store_from_before_tenants_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, spec TEXT NOT NULL, request TEXT NOT NULL,"
        " host_id TEXT NOT NULL, ended INTEGER NOT NULL DEFAULT 0)"
    )
    spec = example_specs()[0]
    request = RunInput(run_id="run-h0-00000000000000000002", input="hi")
    old.execute(
        "INSERT INTO runs (run_id, spec, request, host_id) VALUES (?, ?, ?, ?)",
        (request.run_id, spec.model_dump_json(), request.model_dump_json(), "h0"),
    )
    old.commit()
    old.close()
    store = RunStore(str(path))
    record = await store.load_run(request.run_id)
    assert record is not None and record.context.tenant == "default"
    store.close()


def test_every_commit_is_synced_to_disk(tmp_path: Path) -> None:
    # WAL with synchronous=FULL (2): a committed event survives a power cut, not only a crash.
    store = RunStore(str(tmp_path / "runs.sqlite"))
    try:
        assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)
    finally:
        store.close()
