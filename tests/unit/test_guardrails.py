"""Guardrails on every tool call (agents/guardrails.py), through the real loop and tool pool
with a scripted model: schema-checked arguments, the run's end user beside the tenant,
`max_side_effects`, and capped tool output. No Ray."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from actors.state import State
from actors.tool_pool import ToolPool
from agents.errors import AgentSpecError
from agents.eventlog import EventLog
from agents.events import Event, RunCreated, RunFailed, ToolResulted
from agents.examples import example_specs, support_tools
from agents.guardrails import _validator, cap_output, check_arguments
from agents.loop import Ports, RunInput, execute_run
from agents.messages import ToolCall
from agents.spec import AgentSpec, BudgetSpec, ToolSpec
from serve_app.schemas import RunRequest
from tests import tools_for_tests as tools
from tests.scripted import Hang, Reply, Script, ScriptedModel

REQUEST = RunInput(run_id="run-1", input="refund my orders", tenant="acme", user="cust-7")
SECRET = "4111-1111-1111-1111"
"""A value a model might pass where it should not: never repeated in an error."""

SHIP = ToolSpec(
    name="ship",
    description="ships an item",
    parameters={
        "type": "object",
        "properties": {"item": {"type": "string", "minLength": 2}},
        "required": ["item"],
        "additionalProperties": False,
    },
    function=f"{tools.HERE}:flaky_effect",
    side_effects=True,
)
WHOAMI = ToolSpec(
    name="whoami",
    description="who the run acts for",
    function=f"{tools.HERE}:whoami",
)
BIG = ToolSpec(
    name="big",
    description="a large output",
    parameters={"type": "object", "properties": {"size": {"type": "integer"}}},
    function=f"{tools.HERE}:big",
)


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    tools.reset()
    support_tools.reset_refunds()
    yield
    tools.reset()
    support_tools.reset_refunds()


def support(**update: object) -> AgentSpec:
    base = next(s for s in example_specs() if s.name == "support")
    return base.model_copy(update={"tools": (*base.tools, SHIP, WHOAMI, BIG), **update})


def capped(max_side_effects: int) -> AgentSpec:
    spec = support()
    budgets = spec.budgets.model_copy(update={"max_side_effects": max_side_effects})
    return spec.model_copy(update={"budgets": budgets})


def call(call_id: str, name: str, **arguments: object) -> ToolCall:
    return ToolCall(id=call_id, name=name, arguments=arguments)  # type: ignore[arg-type]


async def run(
    script: list[Script],
    spec: AgentSpec | None = None,
    events: list[Event] | None = None,
    pool: ToolPool | None = None,
) -> tuple[list[Event], ScriptedModel]:
    model = ScriptedModel(script)
    log = EventLog(REQUEST.run_id, events)
    await execute_run(spec or support(), REQUEST, Ports(model, pool or ToolPool()), log)
    model.check()
    return log.events(), model


def results(events: list[Event]) -> list[ToolResulted]:
    return [e for e in events if isinstance(e, ToolResulted)]


# Arguments are checked against the tool's schema


async def test_schema_invalid_arguments_never_reach_the_tool_and_the_model_is_told() -> None:
    bad = call("c1", "issue_refund", order_id=SECRET, reason="late")
    good = call("c2", "issue_refund", order_id=1003, reason="late")
    events, model = await run([Reply("", (bad,)), Reply("", (good,)), Reply("Refunded.")])
    assert events[-1].kind == "run.completed"
    assert len(support_tools.refunds()) == 1  # only the valid call acted, counted at the tool
    first, second = results(events)
    assert not first.ok and first.error_code == "tool_arguments_invalid"
    assert first.error is not None and "'order_id': must be of type integer, not string" in (
        first.error
    )
    assert "did not run" in first.error
    assert second.ok and second.error_code is None
    # The model got the error as the call's result, and no value it sent came back.
    told = model.requests[1][-1]
    assert told.role == "tool" and told.tool_call_id == "c1"
    assert json.loads(told.content)["error"] == first.error
    assert SECRET not in first.model_dump_json()


async def test_a_side_effect_with_invalid_arguments_does_not_wait_for_the_store() -> None:
    # It will not run, so it has nothing to make durable first: a store that never answers
    # does not hold up the model's correction.
    never = asyncio.Event()

    async def durable(_seq: int) -> None:
        await never.wait()

    model = ScriptedModel([Reply("", (call("c1", "ship", item="x"),)), Reply("Could not ship.")])
    log = EventLog(REQUEST.run_id)
    ports = Ports(model, ToolPool(), durable=durable)
    await asyncio.wait_for(execute_run(support(), REQUEST, ports, log), 10)
    model.check()
    [result] = results(log.events())
    assert result.error_code == "tool_arguments_invalid" and tools.calls["flaky_effect"] == 0


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({}, ["'item': required"]),
        ({"item": "x"}, ["'item': must be at least 2 characters long"]),
        ({"item": "kettle", "extra": SECRET}, ["the arguments: unexpected properties (extra)"]),
        ({"item": "kettle", SECRET + " x": 1}, ["unexpected properties (<name>)"]),
        ({"item": 7}, ["'item': must be of type string, not integer"]),
    ],
)
def test_errors_name_the_field_and_the_rule_never_the_value(
    arguments: dict[str, object], named: list[str]
) -> None:
    with pytest.raises(Exception) as caught:
        check_arguments(SHIP, arguments)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("invalid arguments for tool ship: ")
    for words in named:
        assert words in message
    assert SECRET not in message


def test_each_schema_is_compiled_once_per_process() -> None:
    check_arguments(SHIP, {"item": "kettle"})
    compiled = _validator.cache_info().misses
    for n in range(50):
        check_arguments(SHIP, {"item": f"kettle {n}"})
    assert _validator.cache_info().misses == compiled


def test_a_tool_whose_schema_is_not_a_schema_fails_at_load_time() -> None:
    spec = support().model_dump(mode="json")
    spec["tools"][0]["parameters"] = {"type": "object", "properties": {"n": {"type": "numbr"}}}
    with pytest.raises(AgentSpecError) as caught:
        AgentSpec.from_mapping(spec, "support.yaml")
    assert "support.yaml: tools.0.parameters" in str(caught.value)
    assert "not a valid JSON schema at 'properties.n.type'" in str(caught.value)


# The end user reaches tools beside the tenant


async def test_tools_receive_the_runs_user_and_tenant_whatever_the_model_says() -> None:
    spoof = call("c1", "whoami", user="mallory", tenant="globex")
    events, _ = await run([Reply("", (spoof,)), Reply("You are cust-7.")])
    [result] = results(events)
    assert json.loads(result.output) == {"tenant": "acme", "user": "cust-7"}
    created = events[0]
    assert isinstance(created, RunCreated) and created.user == "cust-7"


async def test_a_run_without_a_user_gives_tools_none() -> None:
    model = ScriptedModel([Reply("", (call("c1", "whoami", user="mallory"),)), Reply("?")])
    log = EventLog("run-2")
    await execute_run(
        support(), RunInput(run_id="run-2", input="who?"), Ports(model, ToolPool()), log
    )
    [result] = results(log.events())
    assert json.loads(result.output) == {"tenant": "default", "user": None}


@pytest.mark.parametrize(
    "user", ["", " cust-7", "cust-7 ", "cust\n7", "cust-7\n", "a\x00b", "josé", "x" * 129]
)
def test_a_user_must_be_short_printable_text(user: str) -> None:
    with pytest.raises(ValidationError):
        RunRequest(input="hi", user=user)
    with pytest.raises(ValidationError):
        RunInput(run_id="run-1", input="hi", user=user)
    assert RunRequest(input="hi", user="customer 7 <c7@example.com>").user is not None


# max_side_effects


async def test_a_step_that_would_cross_max_side_effects_runs_none_of_its_calls() -> None:
    script: list[Script] = [
        Reply("", (call("c1", "ship", item="kettle"),)),
        # Two more would make three: none of this step's calls runs, the read-only one neither.
        Reply(
            "",
            (call("c2", "whoami"), call("c3", "ship", item="lamp"), call("c4", "ship", item="mug")),
        ),
    ]
    events, _ = await run(script, capped(2))
    end = events[-1]
    assert isinstance(end, RunFailed) and end.code == "side_effects_exceeded"
    assert "3 side-effecting tool calls in this run (ship x3)" in end.message
    assert "max_side_effects=2" in end.message and "none of step 2's calls ran" in end.message
    assert len(tools.effects) == 1 and tools.calls["whoami"] == 0


async def test_up_to_max_side_effects_run_and_invalid_calls_do_not_count() -> None:
    script: list[Script] = [
        Reply("", (call("c1", "ship", item="kettle"), call("c2", "ship", item="x"))),
        Reply("", (call("c3", "ship", item="lamp"),)),
        Reply("Shipped two."),
    ]
    events, _ = await run(script, capped(2))
    assert events[-1].kind == "run.completed"
    assert len(tools.effects) == 2


async def test_zero_side_effects_means_none() -> None:
    events, _ = await run(
        [Reply("", (call("c1", "issue_refund", order_id=1003, reason="late"),))], capped(0)
    )
    assert isinstance(events[-1], RunFailed) and events[-1].code == "side_effects_exceeded"
    assert support_tools.refunds() == {}
    assert BudgetSpec().max_side_effects == 10


@pytest.fixture
async def ledger_pool(tmp_path: Path) -> AsyncIterator[Callable[[], ToolPool]]:
    """New tool pools on one effect ledger (as after a restart of the pool's process)."""
    opened: list[State] = []

    def pool() -> ToolPool:
        opened.append(State(f"sqlite://{tmp_path / 'state'}"))
        return ToolPool(ledger=opened[-1].ledger)

    yield pool
    for state in opened:
        await state.close()


async def test_a_resumed_runs_recorded_effects_count_once(
    ledger_pool: Callable[[], ToolPool],
) -> None:
    spec = capped(2)
    both = Reply("", (call("c1", "ship", item="kettle"), call("c2", "ship", item="lamp")))
    model = ScriptedModel([both, Hang()])
    log = EventLog(REQUEST.run_id)
    task = asyncio.create_task(execute_run(spec, REQUEST, Ports(model, ledger_pool()), log))
    await asyncio.wait_for(model.hanging.wait(), 10)
    task.cancel()  # the host dies after both acted, with only the first result durable
    await asyncio.gather(task, return_exceptions=True)
    events = log.events()
    durable = events[: next(i for i, e in enumerate(events) if e.kind == "tool.result") + 1]
    assert len(tools.effects) == 2

    # Resumed: the second call is re-issued and the ledger answers it; it is still one of
    # two, so the run goes on. A third effect is one too many.
    third = Reply("", (call("c3", "ship", item="mug"),))
    resumed, _ = await run([third], spec, durable, ledger_pool())
    assert [r.ok for r in results(resumed)] == [True, True]
    assert isinstance(resumed[-1], RunFailed) and resumed[-1].code == "side_effects_exceeded"
    assert "3 side-effecting tool calls" in resumed[-1].message
    assert len(tools.effects) == 2


# Output is capped


async def test_a_large_output_is_cut_and_marked_before_it_enters_the_run() -> None:
    spec = support(tool_output_max_bytes=1024)
    events, model = await run([Reply("", (call("c1", "big", size=5000),)), Reply("Big.")], spec)
    [result] = results(events)
    assert result.truncated and result.output_bytes == 10_000
    head, _, marker = result.output.partition("\n[rayfleet: ")
    assert head == "é" * 512 and marker == "tool output truncated to 1024 of 10000 bytes]"
    assert model.requests[1][-1].content == result.output  # what the model saw: the cut
    small, _ = await run([Reply("", (call("c1", "big", size=10),)), Reply("Small.")], spec)
    assert not results(small)[0].truncated and results(small)[0].output_bytes is None


def test_a_cut_never_splits_a_character() -> None:
    text, size = cap_output("aé" * 10, 4)  # a é | a é: the fourth byte is inside é
    assert text.startswith("aéa\n") and size == 30
    assert cap_output("short", 5) == ("short", None)


def test_the_default_cap_is_64_kib() -> None:
    assert support().tool_output_max_bytes == 65_536


async def test_a_sub_agents_side_effects_count_against_its_callers_cap() -> None:
    # The concierge (cap 1) hands two refunds to its refunds desk (cap 10 of its own): the
    # second finds nothing left of its caller's cap and refunds nothing.
    concierge = next(s for s in example_specs() if s.name == "concierge")
    concierge = concierge.model_copy(
        update={"budgets": concierge.budgets.model_copy(update={"max_side_effects": 1})}
    )
    refunds = concierge.tool("refunds_desk")
    assert refunds is not None and refunds.agent is not None
    assert refunds.agent.budgets.max_side_effects == 10
    model = ScriptedModel(
        [
            Reply("", (call("d1", "refunds_desk", task="refund order 1003"),)),
            Reply("", (call("c1", "issue_refund", order_id=1003, reason="late"),)),
            Reply("Refunded order 1003."),
            Reply("", (call("d2", "refunds_desk", task="and order 1002"),)),
            Reply("", (call("c1", "issue_refund", order_id=1002, reason="late"),)),
            Reply("Order 1003 is refunded; 1002 could not be."),
        ]
    )
    log = EventLog(REQUEST.run_id)
    await execute_run(concierge, REQUEST, Ports(model, ToolPool()), log)
    model.check()
    assert len(support_tools.refunds()) == 1
    events = log.events()
    assert events[-1].kind == "run.completed"
    first, second = results(events)
    assert first.ok and not second.ok
    assert "max_side_effects=0" in (second.error or "")
