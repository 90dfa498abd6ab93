"""Random fault injection in the provider simulator (`/_sim/faults`), over real HTTP."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from serve_app.simulator.faults import ALL_FAULT_KINDS, FaultConfig, FaultInjector
from tests.fixtures_sim import Sim

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
OPENAI_BODY: dict[str, Any] = {"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_BODY: dict[str, Any] = {**OPENAI_BODY, "max_tokens": 64}


@pytest.fixture
def http(sim: Sim) -> Iterator[httpx2.Client]:
    """A client of the simulator; `sim` resets it (faults included) after the test."""
    with httpx2.Client(base_url=sim.base_url, timeout=5) as client:
        yield client


def set_faults(http: httpx2.Client, **config: Any) -> dict[str, Any]:
    response = http.post("/_sim/faults", json=config)
    assert response.status_code == 200, response.text
    summary: dict[str, Any] = response.json()["faults"]
    return summary


def get_faults(http: httpx2.Client) -> dict[str, Any] | None:
    found: dict[str, Any] | None = http.get("/_sim/faults").json()["faults"]
    return found


def fault_log(sim: Sim) -> list[str | None]:
    return [r["fault"] for r in sim.requests()]


def chat(http: httpx2.Client, n: int, path: str = CHAT) -> list[int]:
    """`n` non-streaming requests; their status codes (a cut body counts as -1)."""
    body = OPENAI_BODY if path == CHAT else ANTHROPIC_BODY
    statuses = []
    for _ in range(n):
        try:
            statuses.append(http.post(path, json=body).status_code)
        except httpx2.HTTPError:
            statuses.append(-1)
    return statuses


# --- the injector on its own --------------------------------------------------------------


def test_the_same_seed_draws_the_same_faults_and_another_seed_others() -> None:
    def draws(seed: int) -> list[str | None]:
        injector = FaultInjector(FaultConfig(rate=0.3, seed=seed))
        return [f.kind if (f := injector.draw("chat")) else None for _ in range(300)]

    assert draws(42) == draws(42)
    assert draws(42) != draws(43)


def test_the_rate_is_roughly_honoured_and_every_kind_is_chosen() -> None:
    injector = FaultInjector(FaultConfig(rate=0.1, seed=1))
    faults = [f for _ in range(5000) if (f := injector.draw("chat"))]
    assert 400 <= len(faults) <= 600  # 500 expected; sd ~21
    assert set(Counter(f.kind for f in faults)) == set(ALL_FAULT_KINDS)
    assert injector.eligible == 5000 and sum(injector.injected.values()) == len(faults)


def test_rate_zero_never_fails_and_rate_one_always_does() -> None:
    never = FaultInjector(FaultConfig(rate=0.0, seed=3))
    always = FaultInjector(FaultConfig(rate=1.0, seed=3, kinds=("drop",)))
    assert all(never.draw("chat") is None for _ in range(200))
    assert all((f := always.draw("chat")) and f.kind == "drop" for _ in range(200))


def test_embeddings_are_spared_unless_asked_for() -> None:
    spared = FaultInjector(FaultConfig(rate=1.0))
    assert spared.draw("embeddings") is None and spared.eligible == 0
    hit = FaultInjector(FaultConfig(rate=1.0, embeddings=True))
    assert hit.draw("embeddings") is not None


# --- over HTTP ----------------------------------------------------------------------------


def test_rate_over_http_and_each_request_records_its_fault(sim: Sim, http: httpx2.Client) -> None:
    set_faults(http, rate=0.25, seed=42, kinds=["status_429", "status_500", "slow"], slow_ms=1)
    statuses = chat(http, 300)
    log = fault_log(sim)
    assert len(log) == 300
    failed = [kind for kind in log if kind in ("status_429", "status_500")]
    assert 45 <= len([k for k in log if k is not None]) <= 105  # 75 expected; sd 7.5
    assert statuses.count(429) == log.count("status_429")
    assert statuses.count(500) == log.count("status_500")
    assert statuses.count(200) == 300 - len(failed)
    summary = get_faults(http)
    assert summary is not None and summary["eligible"] == 300
    assert summary["injected"] == dict(Counter(k for k in log if k is not None))


def test_the_same_seed_gives_the_same_faults_in_the_same_request_order(
    sim: Sim, http: httpx2.Client
) -> None:
    runs = []
    for _ in range(2):
        set_faults(http, rate=0.3, seed=42, slow_ms=1)
        chat(http, 60)
        runs.append(fault_log(sim))
        sim.reset()
    assert runs[0] == runs[1]
    assert any(runs[0]) and None in runs[0]


@pytest.mark.parametrize(("path", "status"), [(CHAT, 429), (MESSAGES, 429)])
def test_status_429_carries_retry_after(http: httpx2.Client, path: str, status: int) -> None:
    set_faults(http, rate=1, kinds=["status_429"], retry_after_s=2)
    body = OPENAI_BODY if path == CHAT else ANTHROPIC_BODY
    response = http.post(path, json=body)
    assert response.status_code == status
    assert response.headers["retry-after"] == "2"
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error"


def test_status_500_is_a_server_error_the_sdk_sees(sim: Sim, http: httpx2.Client) -> None:
    set_faults(http, rate=1, kinds=["status_500"])
    with (
        openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test", max_retries=0) as client,
        pytest.raises(openai.InternalServerError),
    ):
        client.chat.completions.create(
            model="sim-fast", messages=[{"role": "user", "content": "x"}]
        )
    assert http.post(MESSAGES, json=ANTHROPIC_BODY).json()["error"]["type"] == "api_error"


def _stream_text(http: httpx2.Client, path: str) -> tuple[str, bool]:
    """The raw SSE text of a streamed reply, and whether the connection was cut."""
    body = {**(OPENAI_BODY if path == CHAT else ANTHROPIC_BODY), "stream": True}
    received: list[str] = []
    try:
        with http.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            for text in response.iter_text():
                received.append(text)
    except httpx2.HTTPError:
        return "".join(received), True
    return "".join(received), False


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
@pytest.mark.parametrize("after_chunks", [0, 2, 10_000])
def test_drop_cuts_the_stream_before_it_ends(
    http: httpx2.Client, path: str, after_chunks: int
) -> None:
    set_faults(http, rate=1, kinds=["drop"], after_chunks=after_chunks)
    text, cut = _stream_text(http, path)
    assert cut
    assert "[DONE]" not in text and "message_stop" not in text


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_drop_cuts_a_non_streaming_body(http: httpx2.Client, path: str) -> None:
    set_faults(http, rate=1, kinds=["drop"])
    assert chat(http, 1, path) == [-1]


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_stream_error_is_an_in_band_error_after_a_200(http: httpx2.Client, path: str) -> None:
    set_faults(http, rate=1, kinds=["stream_error"])
    text, cut = _stream_text(http, path)
    assert not cut
    last = text.strip().split("\n\n")[-1]
    assert '"error"' in last and "simulated fault" in last
    assert "[DONE]" not in text and "message_stop" not in text


def test_stream_error_on_a_non_streaming_request_is_an_overload_status(
    http: httpx2.Client,
) -> None:
    set_faults(http, rate=1, kinds=["stream_error"])
    assert chat(http, 1, CHAT) == [503]
    assert chat(http, 1, MESSAGES) == [529]


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_slow_delays_then_answers_normally(sim: Sim, http: httpx2.Client, path: str) -> None:
    set_faults(http, rate=1, kinds=["slow"], slow_ms=150)
    started = time.monotonic()
    text, cut = _stream_text(http, path)
    assert time.monotonic() - started >= 0.15
    assert not cut and ("[DONE]" in text or "message_stop" in text)
    assert fault_log(sim) == ["slow"]


def test_embeddings_fail_only_when_asked(sim: Sim, http: httpx2.Client) -> None:
    body = {"model": "sim-embed", "input": "hello"}
    set_faults(http, rate=1, kinds=["status_500"])
    assert http.post("/v1/embeddings", json=body).status_code == 200
    set_faults(http, rate=1, kinds=["status_500"], embeddings=True)
    assert http.post("/v1/embeddings", json=body).status_code == 500
    assert fault_log(sim) == [None, "status_500"]


def test_scripted_replies_win_over_random_faults(sim: Sim, http: httpx2.Client) -> None:
    set_faults(http, rate=1, kinds=["status_500"])
    sim.script({"type": "text", "text": "scripted answer"})
    first = http.post(CHAT, json=OPENAI_BODY)
    assert first.status_code == 200
    assert first.json()["choices"][0]["message"]["content"] == "scripted answer"
    assert http.post(CHAT, json=OPENAI_BODY).status_code == 500
    assert fault_log(sim) == [None, "status_500"]
    summary = get_faults(http)
    assert summary is not None and summary["eligible"] == 1  # the scripted one drew nothing


def test_delete_and_reset_turn_faults_off(sim: Sim, http: httpx2.Client) -> None:
    set_faults(http, rate=1, kinds=["status_500"])
    assert chat(http, 1) == [500]
    deleted = http.delete("/_sim/faults").json()
    assert deleted["faults"] is None and deleted["last"]["injected"] == {"status_500": 1}
    assert get_faults(http) is None
    assert chat(http, 1) == [200]

    set_faults(http, rate=1, kinds=["status_500"])
    sim.reset()
    assert get_faults(http) is None
    assert chat(http, 1) == [200]
    assert fault_log(sim) == [None]


@pytest.mark.parametrize(
    "config",
    [
        {"rate": 1.5},
        {"rate": 0.1, "kinds": ["status_418"]},
        {"rate": 0.1, "kinds": []},
        {"rate": 0.1, "colour": "red"},
        {"kinds": ["drop"]},
    ],
)
def test_a_bad_fault_config_is_rejected_and_changes_nothing(
    http: httpx2.Client, config: dict[str, Any]
) -> None:
    response = http.post("/_sim/faults", json=config)
    assert response.status_code == 422, response.text
    assert get_faults(http) is None
    assert http.post("/_sim/faults", content=b"{").status_code == 400
