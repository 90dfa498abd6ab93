"""A tenant's own provider key (BYOK) reaches the provider and appears nowhere else.

The `byok` tenant's key is a canary (tests/conftest.py puts it in the environment before Ray
starts). Its runs go through HTTP, streamed and 202-then-GET, succeeding, failing (401, a
500 on every attempt, a dropped stream, an in-band stream error, a provider echoing the key)
and cancelled; then every byte we can reach is searched for the canary: what HTTP returned,
the run store, effect ledger and memory SQLite files (WAL included), the Ray session
directory (logs and all), Ray's Prometheus metrics and every span exported. The tests run
in file order: the scan comes last and checks that every scenario ran first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from agents.events import TERMINAL_KINDS, Event
from serve_app.sse import SSEDecoder
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.otlp import OtlpReceiver
from tests.serve.conftest import Service
from tests.serve.metrics import scrape_until
from tests.serve.tenants import BYOK_KEY, BYOK_MISSING_KEY, CANARY, UNSET_ENV, auth

pytestmark = pytest.mark.serve

NEEDLE = CANARY.removeprefix("sk-canary-").encode()
"""The canary's random part: found also where the key is cut, re-prefixed or quoted."""
MAX_FILE_BYTES = 50 * 1024 * 1024
"""Larger files are listed as skipped, not read (none is expected this large)."""
SCENARIOS = {
    "sse-ok",
    "202-ok",
    "401",
    "401-echo",
    "500-all",
    "dropped",
    "stream-error",
    "cancelled",
    "missing-env",
}
RUNS = "/v1/agents/support/runs"
MODEL_PATHS = ("/v1/chat/completions", "/v1/messages")


@dataclass
class Transcript:
    """Everything the tests received, to be searched at the end."""

    texts: list[tuple[str, str]] = field(default_factory=list)
    scenarios: set[str] = field(default_factory=set)
    run_ids: set[str] = field(default_factory=set)

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))


@pytest.fixture(scope="module")
def seen() -> Iterator[Transcript]:
    yield Transcript()


# --- the scanner ---------------------------------------------------------------------------


def leaks_in(where: str, data: bytes | str, needle: bytes = NEEDLE) -> list[str]:
    """Where the needle occurs in `data`: `where@offset` for each occurrence."""
    raw = data.encode() if isinstance(data, str) else data
    found, start = [], raw.find(needle)
    while start != -1:
        found.append(f"{where}@{start}")
        start = raw.find(needle, start + 1)
    return found


@dataclass
class FileScan:
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)


def scan_files(roots: Iterable[Path], needle: bytes = NEEDLE) -> FileScan:
    """Every regular file under `roots` (symlinks and sockets aside), read as bytes."""
    scan = FileScan()
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder, name)
                if path.is_symlink() or not path.is_file():
                    continue
                try:
                    size = path.stat().st_size
                    if size > MAX_FILE_BYTES:
                        scan.skipped.append(f"{path} ({size} bytes)")
                        continue
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue  # rotated or removed while we walked
                scan.files += 1
                scan.bytes += len(data)
                scan.leaks += leaks_in(str(path), data, needle)
    return scan


def test_the_scanner_finds_a_planted_canary(tmp_path: Path) -> None:
    """The control: the scan can fail."""
    (tmp_path / "logs" / "deep").mkdir(parents=True)
    (tmp_path / "logs" / "clean.log").write_text("nothing to see\n")
    planted = tmp_path / "logs" / "deep" / "runs.sqlite-wal"
    planted.write_bytes(b"\x00\x01SQLite" + f"Bearer {CANARY}".encode() + b"\xff")
    scan = scan_files([tmp_path])
    assert scan.files == 2
    assert scan.leaks == [f"{planted}@25"]  # 8 bytes, "Bearer sk-canary-", the needle
    assert leaks_in("body", f'{{"message": "bad key {CANARY}"}}') == ["body@31"]
    assert leaks_in("cut", CANARY[:-1]) == []


# --- the runs ------------------------------------------------------------------------------


def stream_run(
    service: Service, seen: Transcript, where: str, method: str, url: str, key: str, **kw: Any
) -> list[Event]:
    """An SSE response read to its end; its raw text goes into the transcript."""
    decoder, events, lines = SSEDecoder(), [], []
    headers = {"Accept": "text/event-stream", **auth(key)}
    with service.http.stream(method, url, headers=headers, **kw) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            lines.append(line)
            event = decoder.feed(line)
            if event is not None:
                events.append(event)
    seen.add(where, "\n".join(lines))
    assert [e.kind in TERMINAL_KINDS for e in events].count(True) == 1, events
    return events


def get(service: Service, seen: Transcript, where: str, url: str, key: str) -> httpx2.Response:
    response = service.http.get(url, headers=auth(key))
    seen.add(f"{where} GET {url} -> {response.status_code}", response.text)
    return response


def finish(service: Service, seen: Transcript, where: str, run_id: str, key: str) -> Any:
    """The run's summary once it is no longer running; its replayed events are kept too."""

    def done() -> Any:
        summary = get(service, seen, where, f"/v1/runs/{run_id}", key).json()
        return summary if summary["status"] != "running" else None

    summary = wait_for(done, timeout_s=30)
    seen.run_ids.add(run_id)
    stream_run(service, seen, f"{where} replay", "GET", f"/v1/runs/{run_id}/events", key)
    return summary


def start(service: Service, seen: Transcript, where: str, key: str = BYOK_KEY, **body: Any) -> str:
    response = service.http.post(RUNS, json=body, headers=auth(key))
    seen.add(f"{where} POST -> {response.status_code}", response.text)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def model_calls(sim: Sim, seen: Transcript, where: str) -> list[dict[str, Any]]:
    requests = sim.requests()
    seen.add(f"{where} simulator request log", json.dumps(requests))
    return [r for r in requests if r["path"] in MODEL_PATHS]


def assert_key_reached_the_provider(
    sim: Sim, seen: Transcript, where: str, count: int, *, exact: bool = True
) -> None:
    """`count` model calls (at least, where the simulator's policy answers), each with a key."""
    calls = model_calls(sim, seen, where)
    assert len(calls) == count or (not exact and len(calls) > count), [c["path"] for c in calls]
    assert all(c["auth"] for c in calls), "a byok model request was sent without a key"


def test_a_streamed_run_completes_with_the_tenants_key(
    service: Service, sim: Sim, seen: Transcript
) -> None:
    seen.scenarios.add("sse-ok")  # ran, pass or fail: the scan reads what it left
    events = stream_run(
        service,
        seen,
        "sse-ok",
        "POST",
        RUNS,
        BYOK_KEY,
        json={"input": "Where is order 1002?", "thread_id": "byok-thread"},
    )
    assert events[-1].kind == "run.completed", events[-1]
    finish(service, seen, "sse-ok", events[0].run_id, BYOK_KEY)
    assert_key_reached_the_provider(sim, seen, "sse-ok", 2)  # a tool call, then the answer


def test_a_202_run_completes_with_the_tenants_key(
    service: Service, sim: Sim, seen: Transcript
) -> None:
    seen.scenarios.add("202-ok")
    run_id = start(service, seen, "202-ok", input="hello again", thread_id="byok-thread")
    assert finish(service, seen, "202-ok", run_id, BYOK_KEY)["status"] == "completed"
    assert_key_reached_the_provider(sim, seen, "202-ok", 1, exact=False)


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("401", "invalid x-api-key"),
        # Real providers echo (part of) a bad key back: the error must not carry it on.
        ("401-echo", f"Incorrect API key provided: {CANARY}"),
    ],
    ids=["401", "401-echo"],  # not the key, in the test ids
)
def test_a_rejected_key_fails_the_run_without_the_key(
    service: Service, sim: Sim, seen: Transcript, scenario: str, message: str
) -> None:
    seen.scenarios.add(scenario)
    sim.script({"type": "status", "status": 401, "message": message})
    if scenario == "401":
        events = stream_run(service, seen, scenario, "POST", RUNS, BYOK_KEY, json={"input": "hi"})
        failed: Any = events[-1]
        assert failed.kind == "run.failed", failed
        code, text = failed.code, failed.message
        summary = finish(service, seen, scenario, failed.run_id, BYOK_KEY)
    else:
        run_id = start(service, seen, scenario, input="hi")
        summary = finish(service, seen, scenario, run_id, BYOK_KEY)
        code, text = summary["error"]["code"], summary["error"]["message"]
    assert summary["status"] == "failed"
    assert code == "provider_rejected", text
    assert "401" in text
    if scenario == "401-echo":
        assert "***" in text and CANARY not in text
    assert_key_reached_the_provider(sim, seen, scenario, 1)  # rejected: never retried


def test_a_500_on_every_attempt_fails_the_run_without_the_key(
    service: Service, sim: Sim, seen: Transcript
) -> None:
    seen.scenarios.add("500-all")
    # The strong tier: sim-openai then sim-anthropic, two attempts each.
    sim.script(*[{"type": "status", "status": 500} for _ in range(4)])
    events = stream_run(service, seen, "500-all", "POST", RUNS, BYOK_KEY, json={"input": "hi"})
    failed: Any = events[-1]
    assert failed.kind == "run.failed" and failed.code == "all_providers_failed", failed
    assert "HTTP 500" in failed.message
    finish(service, seen, "500-all", failed.run_id, BYOK_KEY)
    assert_key_reached_the_provider(sim, seen, "500-all", 4)


@pytest.mark.parametrize(
    ("scenario", "reply"),
    [
        ("dropped", {"type": "drop", "after_chunks": 1}),
        ("stream-error", {"type": "stream_error", "after_chunks": 1}),
    ],
)
def test_a_broken_stream_is_retried_with_the_key(
    service: Service, sim: Sim, seen: Transcript, scenario: str, reply: dict[str, Any]
) -> None:
    seen.scenarios.add(scenario)
    sim.script(reply)
    events = stream_run(service, seen, scenario, "POST", RUNS, BYOK_KEY, json={"input": "hello"})
    assert events[-1].kind == "run.completed", events[-1]
    finish(service, seen, scenario, events[0].run_id, BYOK_KEY)
    assert_key_reached_the_provider(sim, seen, scenario, 2, exact=False)  # broken, retried


def test_a_cancelled_run_keeps_the_key_to_itself(
    service: Service, sim: Sim, seen: Transcript
) -> None:
    seen.scenarios.add("cancelled")
    sim.script({"type": "text", "text": "never sent", "delay_ms": 60_000})
    run_id = start(service, seen, "cancelled", input="hello")
    wait_for(lambda: len(model_calls(sim, seen, "cancelled")) == 1)  # the call is in flight
    response = service.http.post(f"/v1/runs/{run_id}/cancel", headers=auth(BYOK_KEY))
    seen.add("cancelled POST cancel", response.text)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert finish(service, seen, "cancelled", run_id, BYOK_KEY)["status"] == "cancelled"
    assert_key_reached_the_provider(sim, seen, "cancelled", 1)


def test_a_missing_key_variable_fails_the_run_and_names_the_variable(
    service: Service, sim: Sim, seen: Transcript
) -> None:
    seen.scenarios.add("missing-env")
    events = stream_run(
        service, seen, "missing-env", "POST", RUNS, BYOK_MISSING_KEY, json={"input": "hi"}
    )
    failed: Any = events[-1]
    assert failed.kind == "run.failed", failed
    assert failed.code == "config_invalid" and not failed.retryable, failed
    assert UNSET_ENV in failed.message, failed.message
    summary = finish(service, seen, "missing-env", failed.run_id, BYOK_MISSING_KEY)
    assert summary["status"] == "failed" and summary["error"]["code"] == "config_invalid"
    assert model_calls(sim, seen, "missing-env") == []  # nothing went out without a key
    # The service is still up for the tenant and everyone else.
    assert service.http.get("/healthz").status_code == 200


# --- the scan ------------------------------------------------------------------------------


def test_the_canary_appears_nowhere(service: Service, seen: Transcript, otlp: OtlpReceiver) -> None:
    import ray

    missing = SCENARIOS - seen.scenarios
    assert not missing, f"run the whole module: the scan needs every scenario first ({missing})"
    texts = list(seen.texts)
    for url in ("/openapi.json", "/healthz", "/v1/agents", "/v1/runs/run-h0-00000000000000000000"):
        response = service.http.get(url, headers=auth(BYOK_KEY))
        texts.append((f"GET {url} -> {response.status_code}", response.text))

    # Ray's metrics as Prometheus scrapes them, once they hold rayfleet's own for this
    # tenant's runs (tagged with tenants, providers, error codes, and the breakers of the
    # tenant's own keys, named by a digest: where a key would show if one leaked into a tag).
    def holds_the_tenants_figures(page: str) -> bool:
        return all(
            marker in page
            for marker in (
                "ray_rayfleet_runs_total{",
                'code="provider_rejected"',
                "ray_rayfleet_runs_started_total{",
                'tenant="byok"',
                "ray_rayfleet_breaker_state{",
                'provider="sim-openai#',
                "ray_rayfleet_model_attempt_duration_seconds_count{",
            )
        )

    metrics = scrape_until(holds_the_tenants_figures)
    texts.append(metrics)
    # Every span the processes exported (tests/otlp.py), once each run's spans are in: the
    # run span names its run.
    wait_for(lambda: all(run_id.encode() in otlp.raw() for run_id in seen.run_ids), 60)
    texts.append(("OTLP spans", otlp.raw().decode("latin-1")))
    text_leaks = [leak for where, text in texts for leak in leaks_in(where, text)]

    assert service.settings.state_url is not None
    data = Path(service.settings.state_url.removeprefix("sqlite://"))
    stores = {"runs.sqlite", "effects.sqlite", "memory.sqlite"}
    assert stores <= {p.name for p in data.iterdir()}, list(data.iterdir())
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert (session / "logs").is_dir()
    files = scan_files([data, session])
    # The positive control on real data: every run is in the store files the scan read
    # (committed to the WAL, mostly), so the scan looked where the runs are.
    for run_id in seen.run_ids:
        assert scan_files([data], run_id.encode()).leaks, f"{run_id} is not in {data}"
    # ... and rayfleet's own log lines (agents.logs) are among the files it read.
    assert scan_files([session / "logs"], b'"logger": "rayfleet"').leaks, "no rayfleet logs"

    print(
        f"\nscanned {len(texts)} HTTP bodies ({sum(len(t) for _, t in texts)} chars), "
        f"{files.files} files ({files.bytes} bytes) under {data} and {session}; "
        f"metrics: {metrics[0]}; skipped: {files.skipped}"
    )
    leaks = text_leaks + files.leaks
    assert not leaks, "the canary leaked:\n" + "\n".join(leaks)
