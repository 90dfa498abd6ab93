"""Load with random provider faults: hundreds of concurrent SSE runs, every stream whole.

What is asserted is stream integrity, not success: each run's stream has seq 1..n with no
gap or duplicate and exactly one terminal event, last; `GET /v1/runs/{id}` agrees with it;
the service is healthy afterwards. How many runs completed or failed depends on the
runtime's retries and fallbacks, and is printed (run with `-s` to see it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from agents.events import TERMINAL_KINDS
from tests.fixtures_sim import Sim
from tests.serve.conftest import Service

pytestmark = [pytest.mark.serve, pytest.mark.slow]

RUNS = 300
CONCURRENCY = 50
FAULTS = {"rate": 0.1, "seed": 42, "retry_after_s": 0, "slow_ms": 300}
RUN_TIMEOUT_S = 60.0
"""One run's whole stream; a hung stream fails the test instead of hanging CI."""
TEST_TIMEOUT_S = 180.0
QUESTIONS = (
    "Where is order 1001?",
    "Where is order 1002?",
    "What is the status of order 1003?",
    "How do refunds work?",
)
STATUS_OF = {"run.completed": "completed", "run.failed": "failed", "run.cancelled": "cancelled"}


@dataclass
class RunStream:
    """What one client saw: the raw SSE events of one run, in order."""

    tag: str
    seqs: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    run_ids: set[str] = field(default_factory=set)
    terminal: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = []
        if self.seqs != list(range(1, len(self.seqs) + 1)):
            found.append(f"seq not 1..n: {self.seqs}")
        terminals = [k for k in self.kinds if k in TERMINAL_KINDS]
        if len(terminals) != 1 or self.kinds[-1] not in TERMINAL_KINDS:
            found.append(f"terminal events {terminals}, last kind {self.kinds[-1:]}")
        if len(self.run_ids) != 1:
            found.append(f"run ids {self.run_ids}")
        return found

    @property
    def run_id(self) -> str:
        return next(iter(self.run_ids))


def _feed(stream: RunStream, block: list[str]) -> None:
    """One SSE event from its lines; read raw so that a kind we don't know still counts."""
    fields: dict[str, list[str]] = {}
    for line in block:
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))
    if "data" not in fields:
        return
    data = json.loads("\n".join(fields["data"]))
    stream.seqs.append(int(fields["id"][0]))
    stream.kinds.append(fields.get("event", [data.get("kind", "")])[0])
    stream.run_ids.add(data["run_id"])
    if stream.kinds[-1] in TERMINAL_KINDS:
        stream.terminal = data


async def _one_run(client: httpx2.AsyncClient, gate: asyncio.Semaphore, i: int) -> RunStream:
    # The tag makes the run's model requests findable in the simulator's log; it comes after
    # the order number, which is the first number the simulated model reads.
    stream = RunStream(tag=f"[load-{i:04d}]")
    body = {"input": f"{QUESTIONS[i % len(QUESTIONS)]} {stream.tag}"}
    async with gate, asyncio.timeout(RUN_TIMEOUT_S):
        headers = {"Accept": "text/event-stream"}
        async with client.stream(
            "POST", "/v1/agents/support/runs", json=body, headers=headers
        ) as response:
            if response.status_code != 200:
                raise AssertionError(f"run {i}: {response.status_code} {await response.aread()!r}")
            block: list[str] = []
            async for line in response.aiter_lines():
                if line:
                    block.append(line)
                else:
                    _feed(stream, block)
                    block = []
            _feed(stream, block)
    return stream


async def _status(client: httpx2.AsyncClient, gate: asyncio.Semaphore, run_id: str) -> str:
    async with gate, asyncio.timeout(30):
        response = await client.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


def _faults_per_tag(requests: list[dict[str, Any]], tags: list[str]) -> dict[str, list[str]]:
    """The faults injected into each run's model requests, found by the run's tag."""
    out: dict[str, list[str]] = {tag: [] for tag in tags}
    for entry in requests:
        text = json.dumps(entry["body"])
        for tag in tags:
            if tag in text and entry.get("fault"):
                out[tag].append(entry["fault"])
    return out


async def test_hundreds_of_runs_under_provider_faults_each_end_exactly_once(
    service: Service, sim: Sim
) -> None:
    started = time.monotonic()
    async with (
        httpx2.AsyncClient(base_url=sim.base_url, timeout=10) as sim_http,
        httpx2.AsyncClient(
            base_url=service.base_url,
            timeout=httpx2.Timeout(30.0),
            limits=httpx2.Limits(max_connections=CONCURRENCY + 10),
        ) as client,
    ):
        response = await sim_http.post("/_sim/faults", json=FAULTS)
        assert response.status_code == 200, response.text
        try:
            async with asyncio.timeout(TEST_TIMEOUT_S):
                gate = asyncio.Semaphore(CONCURRENCY)
                results = await asyncio.gather(
                    *(_one_run(client, gate, i) for i in range(RUNS)), return_exceptions=True
                )
                streamed_s = time.monotonic() - started
                errors = [r for r in results if isinstance(r, BaseException)]
                assert not errors, f"{len(errors)} runs raised, e.g. {errors[:3]!r}"
                streams = [r for r in results if isinstance(r, RunStream)]
                statuses = await asyncio.gather(
                    *(_status(client, gate, s.run_id) for s in streams if len(s.run_ids) == 1)
                )
        finally:
            off = await sim_http.delete("/_sim/faults")
            injected = (off.json().get("last") or {}).get("injected", {})
        health = await client.get("/healthz")
        # The service recovers: a run after the faults completes. Breakers opened by the load
        # would also fail the tests that share this session's service after this one.
        after = await asyncio.wait_for(_one_run(client, asyncio.Semaphore(1), RUNS), 30)

    broken = {s.tag: p for s in streams if (p := s.problems())}
    assert not broken, f"{len(broken)} broken streams, e.g. {list(broken.items())[:3]}"
    disagree = [
        (s.run_id, s.kinds[-1], status)
        for s, status in zip(streams, statuses, strict=True)
        if STATUS_OF[s.kinds[-1]] != status
    ]
    assert not disagree, f"GET /v1/runs/{{id}} disagrees with the stream: {disagree[:5]}"
    assert health.status_code == 200 and health.json() == {"status": "ok"}, health.text
    assert sum(injected.values()) > 0, "no fault was injected: is the simulator the provider?"
    assert not after.problems() and after.kinds[-1] == "run.completed", after.terminal

    ends = Counter(s.kinds[-1] for s in streams)
    with_tools = sum(1 for s in streams if "tool.call" in s.kinds)
    failed = [s for s in streams if s.kinds[-1] == "run.failed"]
    faults = _faults_per_tag(await asyncio.to_thread(sim.requests), [s.tag for s in failed])
    unexplained = [s for s in failed if not faults[s.tag]]
    codes = Counter(s.terminal.get("code") for s in failed)
    print(
        f"\nload: {RUNS} runs, {CONCURRENCY} concurrent, streamed in {streamed_s:.1f}s; "
        f"ends {dict(ends)}; runs with a tool call {with_tools}; "
        f"failure codes {dict(codes)}; injected faults {injected}; "
        f"failed runs without an injected fault: {len(unexplained)}"
        + "".join(f"\n  {s.run_id}: {s.terminal.get('message')}" for s in unexplained[:5])
    )
