"""Latency a fallback adds after a 429, beyond the failed call's own round trip: rayfleet's
ModelRouter (in-process) and, if its throwaway venv exists, LiteLLM's Router, side by side
against the same standalone simulator (OpenAI wire for every call).

Per sample, interleaved, each on a fresh router (closed breakers: the first fallback, not the
skip that follows once the breaker is open):

    rtt_429    one bare client call the simulator answers 429 (Retry-After 30 s)
    unfaulted  the router on chain [first, second]; `first` answers
    fallback   the same chain; `first` answers 429 (Retry-After 30 s > the 2 s cap), `second`
               answers
    added      = fallback - unfaulted - rtt_429          (target: <= 2 ms, DESIGN.md)

Also: `skipped`, the same fallback once the breaker is open (no request reaches `first`).
Request counts at the simulator are checked: no stacked retries.

LiteLLM (optional, never a project dependency):
    uv venv /tmp/litellm-venv && uv pip install --python /tmp/litellm-venv/bin/python \
        "litellm==1.81.13"
LiteLLM runs in its venv as a subprocess, with `num_retries=0` and `fallbacks`, streaming.

Usage: .venv/bin/python benchmarks/fallback.py [--quick] [--samples N] [--ttft-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

LITELLM_PYTHON = Path("/tmp/litellm-venv/bin/python")
FIRST, SECOND = "bench-first", "bench-second"
FAULT = {"type": "status", "status": 429, "retry_after_s": 30, "model": FIRST}


def _summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"p50": c.percentile(ms, 50), "p99": c.percentile(ms, 99)}


def _print(name: str, figures: dict[str, list[float]]) -> None:
    print(f"\n-- {name} --")
    for key, values in figures.items():
        s = _summary(values)
        print(f"  {key:<28} p50 {s['p50']:8.2f} ms   p99 {s['p99']:8.2f} ms   (n={len(values)})")


async def rayfleet_phase(sim: c.Simulator, samples: int) -> dict[str, list[float]]:
    import httpx2

    from actors.breaker import Breakers
    from actors.providers.openai import OpenAIClient
    from actors.router import ModelRouter
    from actors.settings import ProviderConfig
    from agents.errors import ProviderUnavailable
    from agents.messages import Message, ModelRequest
    from agents.ports import ModelResult
    from agents.pricing import DEFAULT_PRICES, PriceTable
    from agents.spec import ModelRef, TierSpec

    providers = {
        "first": ProviderConfig(kind="openai", base_url=f"{sim.base_url}/v1"),
        "second": ProviderConfig(kind="openai", base_url=f"{sim.base_url}/v1"),
    }
    tier = TierSpec(
        chain=(ModelRef(provider="first", model=FIRST), ModelRef(provider="second", model=SECOND))
    )
    messages = (Message(role="user", content="Say something short."),)
    prices = PriceTable(dict(DEFAULT_PRICES))
    out: dict[str, list[float]] = {k: [] for k in ("rtt_429", "unfaulted", "fallback", "skipped")}
    async with httpx2.AsyncClient(timeout=None) as http, httpx2.AsyncClient() as control:

        async def script(*replies: dict[str, Any]) -> None:
            r = await control.post(f"{sim.base_url}/_sim/script", json={"replies": list(replies)})
            r.raise_for_status()

        async def call(router: ModelRouter, want: str) -> float:
            started = time.perf_counter()
            result = None
            async for item in router.stream(tier, messages, (), timeout_s=30):
                if isinstance(item, ModelResult):
                    result = item
            elapsed = time.perf_counter() - started
            assert result is not None and result.provider == want, result
            return elapsed

        bare = OpenAIClient("first", f"{sim.base_url}/v1", None, http)

        async def rtt_429() -> float:
            started = time.perf_counter()
            try:
                async for _ in bare.stream(
                    ModelRequest(model=FIRST, messages=messages), timeout_s=30
                ):
                    pass
            except ProviderUnavailable:
                return time.perf_counter() - started
            raise AssertionError("the 429 did not arrive")

        def fresh() -> ModelRouter:
            return ModelRouter(providers, prices, http, breakers=Breakers())

        await control.post(f"{sim.base_url}/_sim/reset")
        for warm in range(3):  # connections, imports
            await call(fresh(), "first")
            await script(FAULT)
            await call(fresh(), "second")
            del warm
        await control.post(f"{sim.base_url}/_sim/reset")
        tripped = fresh()
        await script({**FAULT, "retry_after_s": 3600})
        await call(tripped, "second")  # its breaker for `first` is now open for an hour
        for _ in range(samples):
            await script(FAULT)
            out["rtt_429"].append(await rtt_429())
            out["unfaulted"].append(await call(fresh(), "first"))
            await script(FAULT)
            out["fallback"].append(await call(fresh(), "second"))
            out["skipped"].append(await call(tripped, "second"))
        requests = (await control.get(f"{sim.base_url}/_sim/requests")).json()["requests"]
        firsts = sum(1 for r in requests if r["model"] == FIRST)
        expected = 1 + 3 * samples  # the trip, then per sample: bare 429, unfaulted, fallback
        assert firsts == expected, f"{firsts} requests reached `first`, expected {expected}"
    out["added"] = [
        f - u - r for f, u, r in zip(out["fallback"], out["unfaulted"], out["rtt_429"], strict=True)
    ]
    out["added (skipped, open)"] = [
        s - u for s, u in zip(out["skipped"], out["unfaulted"], strict=True)
    ]
    return out


_LITELLM_CODE = r"""
import asyncio, json, os, sys, time, warnings
warnings.filterwarnings("ignore")
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import httpx, litellm
from litellm import Router
litellm.telemetry = False
litellm.suppress_debug_info = True
base, samples = sys.argv[1], int(sys.argv[2])
FAULT = json.loads(sys.argv[3])
MSG = [{"role": "user", "content": "Say something short."}]

def router():
    deployments = [
        {"model_name": name, "litellm_params": {"model": f"openai/{model}",
         "api_base": f"{base}/v1", "api_key": "sk-bench"}}
        for name, model in (("first", "bench-first"), ("second", "bench-second"))
    ]
    return Router(model_list=deployments, fallbacks=[{"first": ["second"]}], num_retries=0)

async def call(r, want):
    started = time.perf_counter()
    stream = await r.acompletion(model="first", messages=MSG, stream=True)
    model = None
    async for chunk in stream:
        model = model or chunk.model
    elapsed = time.perf_counter() - started
    assert model and want in model, (model, want)
    return elapsed

async def main():
    out = {"unfaulted": [], "fallback": []}
    async with httpx.AsyncClient() as control:
        async def script(*replies):
            reply = await control.post(f"{base}/_sim/script", json={"replies": list(replies)})
            reply.raise_for_status()
        for _ in range(3):
            await call(router(), "bench-first")
            await script(FAULT)
            await call(router(), "bench-second")
        for _ in range(samples):
            out["unfaulted"].append(await call(router(), "bench-first"))
            await script(FAULT)
            out["fallback"].append(await call(router(), "bench-second"))
    print("RESULT " + json.dumps(out))

asyncio.run(main())
"""


def litellm_phase(sim: c.Simulator, samples: int) -> dict[str, list[float]] | None:
    if not LITELLM_PYTHON.exists():
        print(f"\nLiteLLM: {LITELLM_PYTHON} not found; skipped (see the docstring to install)")
        return None
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    proc = subprocess.run(
        [str(LITELLM_PYTHON), "-c", _LITELLM_CODE, sim.base_url, str(samples), json.dumps(FAULT)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        print(f"\nLiteLLM failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        return None
    version = subprocess.run(
        [str(LITELLM_PYTHON), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(f"\nLiteLLM {version}")
    out: dict[str, list[float]] = json.loads(line[len("RESULT ") :])
    return out


async def amain(args: argparse.Namespace) -> None:
    samples = args.samples or (20 if args.quick else 200)
    with c.simulator(args.ttft_ms) as sim:
        ours = await rayfleet_phase(sim, samples)
        _print(
            f"rayfleet ModelRouter ({samples} samples, 1 in flight, ttft {args.ttft_ms:g} ms)", ours
        )
        if not args.no_litellm:
            theirs = litellm_phase(sim, samples)
            if theirs is not None:
                rtt = ours["rtt_429"]
                theirs["added (vs our rtt_429)"] = [
                    f - u - r
                    for f, u, r in zip(theirs["fallback"], theirs["unfaulted"], rtt, strict=True)
                ]
                _print("LiteLLM Router, num_retries=0, streaming, 1 in flight", theirs)
    added = _summary(ours["added"])
    print(
        f"\nverdict: fallback adds p50 {added['p50']:.2f} ms, p99 {added['p99']:.2f} ms beyond "
        f"the failed call's round trip (target <= 2 ms): "
        f"{'met' if added['p50'] <= 2 else 'not met'} at p50"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode, < 60 s")
    parser.add_argument("--samples", type=int, default=None, help="samples (default 200)")
    parser.add_argument("--ttft-ms", type=float, default=200.0)
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM phase")
    args = parser.parse_args()
    c.header("fallback after a 429", args)
    asyncio.run(asyncio.wait_for(amain(args), timeout=1200))


if __name__ == "__main__":
    main()
