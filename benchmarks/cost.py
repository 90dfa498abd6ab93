"""Cost per successful run (C6-C11): one support-desk workload run side by side on the
simulator's prices, naively (strong tier everywhere, no pruning, no caching) and with
rayfleet's cost controls on. Prints each arm's runs, success rate, total cost, cost per
successful run, tokens per run and cache hits, where its money went, and the ratio
naive / controls (DESIGN.md target: >= 5x lower cost per successful run with controls on,
at equal success).

The workload (seeded, identical for every arm): an online-shop help desk serving a few shops
(tenants) whose end customers hold conversations (threads) of 3 to 8 turns (the last thread
is cut to make the count), recalled from the memory store at every turn, so a thread's
history grows as it goes. A customer has an account and 1-3 recent orders (the newest of the
account's order history) and asks, per turn:

    status   where an order is ("Where is my order 40213?"), most often about the newest
             order, so the same order comes back in a thread; the tool output is small
    policy   returns, shipping times, password resets, delivery address changes: the same
             few topics from every customer of a shop, in a few phrasings
    history  the account's whole order history (once per thread at most): a large tool
             output (12-24 orders, ~0.5-1K tokens, `order_history` below)
    refund   a refund of one of the customer's orders (side effect, never cached)

A first turn opens with a greeting and any turn may end with thanks, so exact repeats happen
about as often as they would at a desk, not on every request. Threads run concurrently
(`--concurrency`); the turns of one thread run in order. Runs are compressed in time (a few
seconds per arm): a cache TTL here covers the whole workload, as a one-hour TTL would cover
an hour of a small desk's traffic. The phrasings are chosen so that the simulator's
word-overlap policy picks the right tool in every arm: the benchmark measures cost, and the
simulator answers the same on every tier, so success cannot show a quality loss from moving
work to a cheaper tier (that judgement is the team's: the concierge keeps refunds strong).

The arms (same simulator, policy mode, same tools; each arm with its own empty caches and
memory, after a reset of the simulator's prompt cache):

    naive             agents/examples/support.yaml: every call on the strong tier (the fast
                      tier is removed, so a wrap-up would be strong too), `context.max_tokens`
                      and `tool_output_max_tokens` unset (no pruning), no response cache, no
                      tool cache.
    controls          agents/examples/concierge.yaml as it ships, the supervisor pattern: a
                      fast-tier supervisor routes look-ups to a fast-tier orders agent, refunds
                      (a decision with a side effect) to a strong-tier refunds agent and policy
                      questions to a fast-tier help agent; with its context pruning (history
                      summarised on the fast tier beyond a token budget, long tool outputs
                      cut), its response caches (exact match, per tenant) and tool caches.

Both arms get the benchmark's `order_history` tool (the example agents have no tool with a
large output). The help sub-agent's `semantic_search_kb` embeds through the embedding
batcher, a Ray actor: here its function is swapped for the lexical `search_kb` of the
support agent, so both arms search the articles the same way, in process, without Ray.

Success, checked identically in both arms on the run's final output (a failed or cancelled
run is unsuccessful):

    status   the output states the asked order's true status: `"order_id":N,"status":"S"`
             as `lookup_order` (agents/examples/support_tools._order) reports it
    history  the output states the account's newest order and its true status, as above
    refund   the output states that the asked order was refunded (`"order_id":N` and
             `"status":"refunded"` in the refund record)
    policy   the first help-article title in the output is the right article's (an answer
             that leads with the wrong article, or quotes none, fails)

The simulator's policy answers by quoting its tool results, so an answer's length, and the
thread history it adds to, follow the tool output (a real model would paraphrase): both
arms' output tokens are inflated by this, the naive arm's more (nothing is truncated).

Cost per successful run = the cost of all the runs of an arm / its successful runs (as in
actors/outcomes.py); a run's cost includes its sub-agents' and its summaries'. Also printed:
the same without provider prompt caching. The simulator caches an Anthropic prefix marked
`cache_control` however short it is; Anthropic caches none under 1,024-4,096 tokens (by
model), and every cacheable prefix here is shorter, so that figure is the one to expect from
real Anthropic models.

In process, no Ray: a RunHost (actors/run_host.py) per arm, with an in-process ToolPool, a
SQLite memory store (actors.state) and a diskcache CacheStore in a private temporary
directory; the simulator in its own process on 127.0.0.1.

Usage: .venv/bin/python benchmarks/cost.py [--runs 240] [--seed 7] [--concurrency 8]
       [--ttft-ms 2] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import httpx2
from pydantic import JsonValue

from actors.caches import CacheSettings
from actors.run_host import RunHost, new_run_id
from actors.settings import RuntimeSettings, simulator_providers
from actors.state import State
from actors.tool_pool import ToolPool
from agents.events import (
    ContextPruned,
    Event,
    ModelCompleted,
    RunCompleted,
    RunFailed,
    SubagentEvent,
    ToolResulted,
    parse_event,
)
from agents.examples import EXAMPLES_DIR, support_tools
from agents.loop import RunInput
from agents.messages import Usage
from agents.pricing import DEFAULT_PRICES, PriceTable
from agents.spec import AgentSpec

HISTORY_CACHE_TTL_S = 30.0
"""Like the example's lookup_order: an order history changes as orders move."""

LEXICAL_SEARCH = "agents.examples.support_tools:search_kb"
"""The help desk's search in both arms (the support agent's own)."""

# -- the benchmark's large-output tool --------------------------------------------------------


def account_orders(account: int) -> list[int]:
    """The order ids of an account, newest first: 12 to 24 of them, fixed by the account."""
    count = 12 + account % 13
    ids: list[int] = []
    k = 0
    while len(ids) < count:
        order_id = 10_000 + (account * 7_919 + k * 104_729) % 89_990
        if order_id not in ids:
            ids.append(order_id)
        k += 1
    return ids


async def order_history(customer_id: int) -> dict[str, JsonValue]:
    """Every order of an account, newest first, with status, items, total and tracking."""
    orders: list[JsonValue] = []
    for age, order_id in enumerate(account_orders(customer_id)):
        order = support_tools._order(order_id)
        assert order is not None
        orders.append(
            {
                "order_id": order_id,
                "status": order["status"],
                "placed": f"2026-{11 - age // 28:02d}-{28 - age % 28:02d}",
                "items": order["items"],
                "total_usd": order["total_usd"],
                "tracking": f"TRK{order_id * 31 % 1_000_000:06d}FR",
            }
        )
    return {"customer_id": customer_id, "orders": orders}


HISTORY_TOOL: dict[str, Any] = {
    "name": "order_history",
    "description": "List every order of a customer account, newest first, with status, items "
    "and tracking: the account's full order history.",
    "function": f"{__name__}:order_history",
    "parameters": {
        "type": "object",
        "properties": {
            "customer_id": {"type": "integer", "description": "The customer's account number."}
        },
        "required": ["customer_id"],
    },
}

# -- the workload ------------------------------------------------------------------------------

TENANTS = (("acme-outdoor", 4), ("bluebird-books", 3), ("cafe-kit", 2), ("dune-audio", 1))
KINDS = (("status", 42), ("policy", 38), ("history", 10), ("refund", 10))

STATUS_TEXTS = (
    "Where is my order {order}?",
    "What is the status of order {order}?",
    "Can you check the status of my order {order}, please?",
    "Any news on order {order}? It has been a few days.",
)
REFUND_TEXTS = (
    "I want a refund for order {order}, it arrived damaged.",
    "Please refund order {order}; the size is wrong.",
)
HISTORY_TEXTS = (
    "Can you list my order history for account {account}?",
    "Show me the full history of orders on account {account}, with their status.",
)
# topic -> (the right article's id, phrasings)
POLICY_TEXTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "returns": (
        "kb-returns",
        (
            "Is there a help article about returns? How many days do I have?",
            "What is your returns policy? I need help with a return.",
        ),
    ),
    "shipping": (
        "kb-shipping",
        (
            "How long does shipping take? Is there a help article on delivery times?",
            "Please search the help articles: when will my parcel arrive after shipping?",
        ),
    ),
    "password": (
        "kb-password",
        (
            "I forgot my password. Is there a help article on resetting it?",
            "How do I reset my password? I could use some help.",
        ),
    ),
    "address": (
        "kb-address",
        (
            "Can I change the delivery address? Is there a help article?",
            "I moved house. Please search the help articles on updating my delivery address.",
        ),
    ),
}
GREETINGS = ("Hi! ", "Hello, ", "Good morning. ", "")
FOLLOW_UPS = ("", "", "Also, ", "Sorry, ")
THANKS = ("", "", " Thanks.", " Thank you!")


@dataclass(frozen=True)
class Turn:
    kind: str
    text: str
    order: int | None = None
    """The order asked about (status, refund) or the account's newest (history)."""
    article: str | None = None
    """The right help article (policy)."""


@dataclass(frozen=True)
class Thread:
    tenant: str
    thread_id: str
    turns: tuple[Turn, ...]


def build_workload(runs: int, seed: int) -> list[Thread]:
    """Threads whose turns add up to exactly `runs`; the same for a given seed."""
    rng = random.Random(seed)
    threads: list[Thread] = []
    total = 0
    while total < runs:
        tenant = rng.choices([t for t, _ in TENANTS], [w for _, w in TENANTS])[0]
        account = rng.randint(1_000, 9_999)
        recent = account_orders(account)[: rng.randint(1, 3)]
        length = min(rng.randint(3, 8), runs - total)
        turns: list[Turn] = []
        refunded: set[int] = set()
        asked_history = False
        for n in range(length):
            kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
            if kind == "history" and asked_history:
                kind = "status"
            open_orders = [o for o in recent if o not in refunded]
            if kind == "refund" and not open_orders:
                kind = "status"
            opening = rng.choice(GREETINGS) if n == 0 else rng.choice(FOLLOW_UPS)
            thanks = rng.choice(THANKS)
            if kind == "status":
                order = rng.choices(recent, [3, 2, 1][: len(recent)])[0]
                body = rng.choice(STATUS_TEXTS).format(order=order)
                turn = Turn(kind, opening + body + thanks, order=order)
            elif kind == "refund":
                order = rng.choice(open_orders)
                refunded.add(order)
                body = rng.choice(REFUND_TEXTS).format(order=order)
                turn = Turn(kind, opening + body + thanks, order=order)
            elif kind == "history":
                asked_history = True
                body = rng.choice(HISTORY_TEXTS).format(account=account)
                turn = Turn(kind, opening + body + thanks, order=account_orders(account)[0])
            else:
                article, texts = POLICY_TEXTS[rng.choice(sorted(POLICY_TEXTS))]
                turn = Turn(kind, opening + rng.choice(texts) + thanks, article=article)
            turns.append(turn)
        threads.append(Thread(tenant, f"th-{len(threads):04d}-{account}", tuple(turns)))
        total += length
    return threads


# -- the success checker (identical for both arms) ---------------------------------------------

_TITLES = {a["id"]: a["title"] for a in support_tools._ARTICLES}


def _states(output: str, order: int, status: str) -> bool:
    pattern = rf'"order_id":\s*{order},\s*"status":\s*"{re.escape(status)}"'
    return re.search(pattern, output) is not None


def successful(turn: Turn, status: str, output: str) -> bool:
    """Whether the run's final output answers the customer (see the module docstring)."""
    if status != "completed":
        return False
    if turn.kind in ("status", "history"):
        assert turn.order is not None
        order = support_tools._order(turn.order)
        assert order is not None
        return _states(output, turn.order, str(order["status"]))
    if turn.kind == "refund":
        return (
            re.search(rf'"order_id":\s*{turn.order},', output) is not None
            and re.search(r'"status":\s*"refunded"', output) is not None
        )
    assert turn.article is not None
    found = [(output.find(title), key) for key, title in _TITLES.items() if title in output]
    return bool(found) and min(found)[1] == turn.article


# -- the two arms' agents ---------------------------------------------------------------------


def _revalidated(spec: AgentSpec, **changes: Any) -> AgentSpec:
    """`spec` with `changes`, validated again (a model_copy would not check them)."""
    return AgentSpec.model_validate(spec.model_dump() | changes)


def naive_agent() -> AgentSpec:
    support = AgentSpec.from_yaml(EXAMPLES_DIR / "support.yaml")
    tools = [t.model_dump() for t in support.tools] + [HISTORY_TOOL]
    return _revalidated(
        support,
        tiers={"strong": support.tiers["strong"].model_dump()},
        loop_tier="strong",
        wrap_up_tier=None,
        tools=tools,
        context={"max_tokens": None, "tool_output_max_tokens": None},
        response_cache_ttl_s=None,
    )


def controls_agent() -> AgentSpec:
    """The concierge example as it ships, with `order_history` on its orders desk and the
    lexical search on its help desk (semantic search needs the Ray embedding batcher)."""
    concierge = AgentSpec.from_yaml(EXAMPLES_DIR / "concierge.yaml")
    desks: list[dict[str, Any]] = []
    for tool in concierge.tools:
        assert tool.agent is not None
        sub = tool.agent.model_dump()
        if tool.name == "orders_desk":
            sub["tools"] = [*sub["tools"], HISTORY_TOOL | {"cache_ttl_s": HISTORY_CACHE_TTL_S}]
        for t in sub["tools"]:
            # Matched by name: the module holding it has moved before (kb_tools).
            if str(t["function"]).endswith(":semantic_search_kb"):
                t["function"] = LEXICAL_SEARCH
        desks.append(tool.model_dump() | {"agent": sub})
    semantic = [
        t["function"]
        for d in desks
        for t in d["agent"]["tools"]
        if "semantic" in str(t["function"])
    ]
    if semantic:
        raise RuntimeError(f"a help tool still needs the Ray embedding batcher: {semantic}")
    orders = next(d for d in desks if d["name"] == "orders_desk")
    orders["description"] = (
        "Hand a question about an order (where it is, its status) or about an account's "
        "order history to the orders agent."
    )
    return _revalidated(concierge, tools=desks)


# -- running an arm ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One model call of a run (its sub-agents' included)."""

    agent: str
    model: str
    purpose: str  # "step" or "summary"
    cached: bool
    usage: Usage
    cost_usd: float


@dataclass
class RunResult:
    tenant: str
    turn: Turn
    status: str
    output: str
    cost_usd: float
    ok: bool
    calls: list[Call] = field(default_factory=list)
    tool_calls: int = 0
    tool_cache_hits: int = 0
    pruned: int = 0
    """context.pruned decisions that cut something (truncated, summarised or dropped)."""


def _walk(events: list[Event], agent: str) -> Iterator[tuple[str, Event]]:
    """Every event with the agent that emitted it, sub-agents' nested events unfolded."""
    for event in events:
        if isinstance(event, SubagentEvent):
            yield from _walk([parse_event(json.dumps(event.event))], event.agent)
        else:
            yield agent, event


def _agents(spec: AgentSpec) -> dict[str, AgentSpec]:
    """The agent and its sub-agents (at any depth), by name."""
    found = {spec.name: spec}
    for tool in spec.tools:
        if tool.agent is not None:
            found |= _agents(tool.agent)
    return found


def _result(spec: AgentSpec, tenant: str, turn: Turn, events: list[Event]) -> RunResult:
    end = events[-1]
    status = {"run.completed": "completed", "run.failed": "failed"}.get(end.kind, "cancelled")
    output = end.output if isinstance(end, RunCompleted) else ""
    cost = end.cost_usd if isinstance(end, RunCompleted | RunFailed) else 0.0
    result = RunResult(tenant, turn, status, output, cost, successful(turn, status, output))
    for agent, event in _walk(events, spec.name):
        if isinstance(event, ModelCompleted):
            cost_usd = event.cost_usd
            call = Call(agent, event.model, "step", event.cached, event.usage, cost_usd)
            result.calls.append(call)
        elif isinstance(event, ContextPruned):
            if event.model:  # a summary call was made
                call = Call(agent, event.model, "summary", False, event.usage, event.cost_usd)
                result.calls.append(call)
            if event.truncated or event.summarized or event.dropped:
                result.pruned += 1
        elif isinstance(event, ToolResulted):
            tool = _agents(spec)[agent].tool(event.tool)
            if tool is not None and tool.agent is None:  # a function tool, not a sub-agent
                result.tool_calls += 1
                result.tool_cache_hits += event.cached
    return result


async def _one_run(host: RunHost, spec: AgentSpec, thread: Thread, turn: Turn) -> RunResult:
    request = RunInput(
        run_id=new_run_id(host.host_id),
        input=turn.text,
        thread_id=thread.thread_id,
        namespace=thread.tenant,
        tenant=thread.tenant,
    )
    run_id = await host.start_run(spec, request)
    events: list[Event] = []
    async with asyncio.timeout(120):
        async for batch in host.events(run_id):
            events.extend(batch.events())
    return _result(spec, thread.tenant, turn, events)


async def run_arm(
    name: str, spec: AgentSpec, threads: list[Thread], sim: c.Simulator, concurrency: int
) -> tuple[list[RunResult], float]:
    """Every thread's turns, in order within a thread, `concurrency` threads at once, on a
    fresh run host with its own empty caches and memory, after a simulator reset."""
    async with httpx2.AsyncClient(timeout=10) as client:
        (await client.post(f"{sim.base_url}/_sim/reset")).raise_for_status()
    support_tools.reset_refunds()
    with tempfile.TemporaryDirectory(prefix=f"rayfleet-cost-{name}-") as tmp:
        settings = RuntimeSettings(
            providers=simulator_providers(sim.base_url),
            cache=CacheSettings(directory=str(Path(tmp) / "cache")),
        )
        state = State(f"sqlite://{tmp}")
        host_id = re.sub(r"[^a-z0-9]", "", name)[:16]
        host = RunHost(host_id, settings, ToolPool(max_concurrency=64), memory=state.memory)
        results: list[list[RunResult]] = []
        started = time.perf_counter()
        try:

            async def thread_job(i: int) -> list[RunResult]:
                thread = threads[i]
                return [await _one_run(host, spec, thread, turn) for turn in thread.turns]

            results = await c.bounded(len(threads), concurrency, thread_job)
        finally:
            await host.aclose()
            await state.close()
        wall_s = time.perf_counter() - started
    return [r for thread_results in results for r in thread_results], wall_s


# -- the report ---------------------------------------------------------------------------------


@dataclass
class ArmStats:
    name: str
    runs: int
    successes: int
    cost_usd: float
    tokens: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    provider_calls: int
    response_cache_hits: int
    summary_calls: int
    tool_calls: int
    tool_cache_hits: int
    pruned_runs: int
    wall_s: float
    calls_cost_usd: float
    uncached_prefix_cost_usd: float
    """The cost had no provider prompt cache served or written a prefix (see `stats`)."""

    @property
    def success_rate(self) -> float:
        return self.successes / self.runs if self.runs else 0.0

    @property
    def cost_per_success_usd(self) -> float:
        return self.cost_usd / self.successes if self.successes else float("inf")


def stats(name: str, results: list[RunResult], wall_s: float) -> ArmStats:
    calls = [call for r in results for call in r.calls]
    return ArmStats(
        name=name,
        runs=len(results),
        successes=sum(r.ok for r in results),
        cost_usd=sum(r.cost_usd for r in results),
        tokens=sum(call.usage.total_tokens for call in calls),
        input_tokens=sum(call.usage.input_tokens + call.usage.cache_write_tokens for call in calls),
        cached_input_tokens=sum(call.usage.cached_input_tokens for call in calls),
        output_tokens=sum(call.usage.output_tokens for call in calls),
        provider_calls=sum(not call.cached for call in calls),
        response_cache_hits=sum(call.cached for call in calls),
        summary_calls=sum(call.purpose == "summary" for call in calls),
        tool_calls=sum(r.tool_calls for r in results),
        tool_cache_hits=sum(r.tool_cache_hits for r in results),
        pruned_runs=sum(r.pruned > 0 for r in results),
        wall_s=wall_s,
        calls_cost_usd=sum(call.cost_usd for call in calls),
        uncached_prefix_cost_usd=sum(r.cost_usd for r in results)
        + sum(_without_prompt_cache(call) - call.cost_usd for call in calls),
    )


_PRICES = PriceTable(DEFAULT_PRICES)


def _without_prompt_cache(call: Call) -> float:
    """A call's cost had the provider billed its cached and cache-write tokens as plain
    input. The simulator caches any Anthropic prefix marked `cache_control`, however short;
    Anthropic caches none under 1,024-4,096 tokens (by model), and every prefix here is
    shorter: this is the figure to expect from real Anthropic models."""
    if call.cached:
        return call.cost_usd
    u = call.usage
    plain = Usage(
        input_tokens=u.input_tokens + u.cached_input_tokens + u.cache_write_tokens,
        output_tokens=u.output_tokens,
    )
    return _PRICES.cost_usd(call.model, plain)


def print_arms(arms: list[ArmStats]) -> None:
    def row(label: str, values: list[str]) -> None:
        print(f"  {label:<34}" + "".join(f"{v:>20}" for v in values))

    print()
    row("", [a.name for a in arms])
    row("runs", [str(a.runs) for a in arms])
    row("successful runs", [str(a.successes) for a in arms])
    row("success rate", [f"{a.success_rate:.1%}" for a in arms])
    row("total cost", [f"${a.cost_usd:.4f}" for a in arms])
    row("cost per run", [f"${a.cost_usd / a.runs:.6f}" for a in arms])
    row("cost per successful run", [f"${a.cost_per_success_usd:.6f}" for a in arms])
    row(
        "  same, no provider prompt caching",
        [f"${a.uncached_prefix_cost_usd / a.successes:.6f}" for a in arms],
    )
    row("tokens per run (all calls)", [f"{a.tokens / a.runs:,.0f}" for a in arms])
    row("  input (uncached + cache write)", [f"{a.input_tokens / a.runs:,.0f}" for a in arms])
    row(
        "  input read from provider cache", [f"{a.cached_input_tokens / a.runs:,.0f}" for a in arms]
    )
    row("  output", [f"{a.output_tokens / a.runs:,.0f}" for a in arms])
    row("provider model calls", [str(a.provider_calls) for a in arms])
    row("  of which summaries", [str(a.summary_calls) for a in arms])
    row("response-cache hits", [str(a.response_cache_hits) for a in arms])
    row("tool calls / tool-cache hits", [f"{a.tool_calls} / {a.tool_cache_hits}" for a in arms])
    row("runs with context pruned", [str(a.pruned_runs) for a in arms])
    row("wall time", [f"{a.wall_s:.1f} s" for a in arms])
    for a in arms:
        if abs(a.calls_cost_usd - a.cost_usd) > 1e-9 * max(1.0, a.runs):
            print(
                f"  WARNING {a.name}: the runs' costs (${a.cost_usd:.6f}) differ from their "
                f"calls' costs (${a.calls_cost_usd:.6f})"
            )


def print_breakdown(name: str, results: list[RunResult]) -> None:
    """Where an arm's money went: by agent, model and purpose; and by question kind."""
    total = sum(r.cost_usd for r in results) or 1.0
    groups: dict[tuple[str, str, str], list[Call]] = {}
    for call in (call for r in results for call in r.calls):
        groups.setdefault((call.agent, call.model, call.purpose), []).append(call)
    print(f"\n{name}: model calls by agent, model and purpose")
    print(
        f"  {'agent':<18}{'model':<12}{'purpose':<9}{'calls':>7}{'cached':>8}{'in tok':>10}"
        f"{'cache-rd':>10}{'out tok':>9}{'cost':>11}{'share':>7}"
    )
    for (agent, model, purpose), calls in sorted(
        groups.items(), key=lambda kv: -sum(call.cost_usd for call in kv[1])
    ):
        cost = sum(call.cost_usd for call in calls)
        inp = sum(call.usage.input_tokens + call.usage.cache_write_tokens for call in calls)
        print(
            f"  {agent:<18}{model:<12}{purpose:<9}{len(calls):>7}"
            f"{sum(call.cached for call in calls):>8}{inp:>10,}"
            f"{sum(call.usage.cached_input_tokens for call in calls):>10,}"
            f"{sum(call.usage.output_tokens for call in calls):>9,}"
            f"  ${cost:>8.4f}{cost / total:>7.1%}"
        )
    print(f"{name}: by question kind")
    print(f"  {'kind':<10}{'runs':>6}{'success':>9}{'cost/run':>12}{'share':>7}")
    kinds = Counter(r.turn.kind for r in results)
    for kind, count in kinds.most_common():
        of_kind = [r for r in results if r.turn.kind == kind]
        cost = sum(r.cost_usd for r in of_kind)
        print(
            f"  {kind:<10}{count:>6}{sum(r.ok for r in of_kind) / count:>9.1%}"
            f"  ${cost / count:>9.6f}{cost / total:>7.1%}"
        )
    failures = [r for r in results if not r.ok]
    for r in failures[:3]:
        print(f"  unsuccessful: [{r.turn.kind}] {r.turn.text!r} -> {r.status}: {r.output[:160]!r}")


def describe_workload(threads: list[Thread]) -> None:
    turns = [t for th in threads for t in th.turns]
    kinds = Counter(t.kind for t in turns)
    tenants = Counter(th.tenant for th in threads for _ in th.turns)
    print(
        f"workload: {len(turns)} runs in {len(threads)} threads "
        f"({min(len(th.turns) for th in threads)}-{max(len(th.turns) for th in threads)} "
        f"turns); kinds {dict(kinds)}; tenants {dict(tenants)}; "
        f"distinct texts {len({(th.tenant, t.text) for th in threads for t in th.turns})}",
        flush=True,
    )


async def amain(args: argparse.Namespace) -> None:
    threads = build_workload(args.runs, args.seed)
    describe_workload(threads)
    print(f"{args.concurrency} threads in flight (one run in flight per thread)", flush=True)
    arms = (("naive", naive_agent()), ("controls", controls_agent()))
    with c.simulator(args.ttft_ms) as sim:
        measured: list[tuple[str, list[RunResult], float]] = []
        for name, spec in arms:
            results, wall_s = await run_arm(name, spec, threads, sim, args.concurrency)
            print(f"{name} done: {len(results)} runs in {wall_s:.1f} s", flush=True)
            measured.append((name, results, wall_s))
    summaries = [stats(name, results, wall_s) for name, results, wall_s in measured]
    for name, results, _ in measured:
        print_breakdown(name, results)
    print_arms(summaries)
    naive, *controls = summaries
    print()
    for arm in controls:
        ratio = c.ratio(naive.cost_per_success_usd, arm.cost_per_success_usd)
        print(
            f"cost per successful run, naive / {arm.name}: {ratio:.2f}x "
            f"(success {naive.success_rate:.1%} naive, {arm.success_rate:.1%} {arm.name}); "
            f"{c.ratio(naive.uncached_prefix_cost_usd, arm.uncached_prefix_cost_usd):.2f}x "
            "without provider prompt caching"
        )
    print("target (DESIGN.md): naive / controls >= 5x at equal success")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per arm (default 240)")
    parser.add_argument("--seed", type=int, default=7, help="the workload's random seed")
    parser.add_argument("--concurrency", type=int, default=8, help="threads in flight")
    parser.add_argument("--ttft-ms", type=float, default=2.0, help="simulator latency per call")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 40 runs")
    args = parser.parse_args()
    if args.runs is None:
        args.runs = 40 if args.quick else 240
    c.header("cost per successful run", args)
    asyncio.run(asyncio.wait_for(amain(args), timeout=900))


if __name__ == "__main__":
    main()
