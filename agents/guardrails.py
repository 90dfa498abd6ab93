"""Guardrails on every tool call: checked arguments, a cap on side effects, a cap on output.

- A call's arguments are validated against its tool's declared JSON schema before it runs
  (`check_arguments`); what is wrong goes back to the model as the tool's error, named by
  field and rule, never by the value the model sent (a value may be a secret it was shown).
  Each schema is compiled once per process (`_validator`), not per call.
- A run may ask for at most `budgets.max_side_effects` side-effecting calls
  (`check_side_effects`). They are counted from the run's durable log, where each call is
  announced once: a resumed run re-issues a recorded call under the same `tool.call`, and
  the effect ledger answers it, so it never counts twice. A sub-agent's effects are its
  caller's too: they count against the caller's cap, and a sub-agent may ask for no more
  than its caller has left (`side_effects_left`).
- A tool's output is capped at `tool_output_max_bytes` before it enters the run
  (`cap_output`); the cut is marked in the text the model sees and on the `tool.result`.

The caller's end user (`EndUser`) is validated here too: it reaches tools beside the tenant.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from jsonschema import Draft202012Validator, SchemaError, ValidationError
from jsonschema.validators import validator_for
from pydantic import Field, JsonValue

from agents.calls import canonical_json
from agents.errors import SideEffectsExceeded, ToolArgumentsInvalid
from agents.events import Event, SubagentEvent, ToolCalled, parse_event

if TYPE_CHECKING:  # agents.spec checks schemas with this module: no import cycle at run time
    from agents.ports import ToolOutcome
    from agents.spec import AgentSpec, ToolSpec

USER_MAX_CHARS = 128
"""Longest end-user id a run accepts: an id, not a profile."""

MAX_PROBLEMS = 5
"""Problems named in one invalid-arguments error; the rest are counted."""

_NESTED_CALLS = frozenset({"tool.call", "subagent.event"})
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


USER_PATTERN = rf"^[!-~]([ -~]{{0,{USER_MAX_CHARS - 2}}}[!-~])?$"
"""Printable ASCII, inner spaces only: one rule for the JSON schema and every validator."""

EndUser = Annotated[
    str,
    Field(
        min_length=1,
        max_length=USER_MAX_CHARS,
        pattern=USER_PATTERN,
        description=f"The end user the run acts for (an id in the caller's system, 1 to "
        f"{USER_MAX_CHARS} printable ASCII characters, no surrounding spaces): tools that "
        "take a `user` argument receive it, beside the tenant.",
    ),
]
"""The caller's end-user identity: short, printable, as a request may carry it."""


# Arguments


def schema_problem(schema: Mapping[str, JsonValue]) -> str | None:
    """Why `schema` is not a usable JSON schema (None if it is): for spec validation."""
    try:
        _validator(canonical_json(schema))
    except SchemaError as exc:
        where = _where(exc.absolute_path)
        return f"not a valid JSON schema at {where}: {exc.message}"
    return None


@functools.lru_cache(maxsize=4096)
def _validator(schema_json: str) -> Any:
    """The compiled validator of one schema text: specs are long-lived and few, so a
    process compiles each tool's schema once. Draft 2020-12 unless `$schema` says."""
    schema = json.loads(schema_json)
    cls = validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def check_arguments(tool: ToolSpec, arguments: Mapping[str, JsonValue]) -> None:
    """Raise ToolArgumentsInvalid if `arguments` do not fit the tool's declared schema. The
    message names each failing field and rule (at most MAX_PROBLEMS), never a value."""
    validator = _validator(canonical_json(tool.parameters))
    errors = sorted(validator.iter_errors(dict(arguments)), key=lambda e: list(map(str, e.path)))
    if not errors:
        return
    problems: list[str] = []
    for error in errors:
        for problem in _describe(error):
            if problem not in problems:
                problems.append(problem)
    shown = "; ".join(problems[:MAX_PROBLEMS])
    more = len(problems) - MAX_PROBLEMS
    if more > 0:
        shown += f"; and {more} more"
    raise ToolArgumentsInvalid(
        f"invalid arguments for tool {tool.name}: {shown}. The tool did not run: call it "
        "again with arguments that fit its parameters schema.",
        tool.name,
    )


def _describe(error: ValidationError) -> list[str]:
    """What one schema error says, in words made of the schema and the field path only."""
    where = _where(error.absolute_path)
    rule, value, instance = str(error.validator), error.validator_value, error.instance
    if rule == "required" and isinstance(instance, dict) and isinstance(value, list):
        return [f"{_join(where, _name(p))}: required" for p in value if p not in instance]
    if rule == "additionalProperties" and isinstance(instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = [_name(k) for k in instance if k not in known]
        return [f"{where}: unexpected properties ({', '.join(extra)})"]
    if rule == "type":
        wanted = " or ".join(value) if isinstance(value, list) else str(value)
        return [f"{where}: must be of type {wanted}, not {_json_type(instance)}"]
    words = {
        "enum": f"must be one of {_short(value)}",
        "const": f"must be {_short(value)}",
        "minimum": f"must be >= {_short(value)}",
        "maximum": f"must be <= {_short(value)}",
        "exclusiveMinimum": f"must be > {_short(value)}",
        "exclusiveMaximum": f"must be < {_short(value)}",
        "multipleOf": f"must be a multiple of {_short(value)}",
        "minLength": f"must be at least {value} characters long",
        "maxLength": f"must be at most {value} characters long",
        "pattern": f"must match the pattern {_short(value)}",
        "format": f"must be a valid {_short(value)}",
        "minItems": f"must have at least {value} items",
        "maxItems": f"must have at most {value} items",
        "uniqueItems": "must not repeat items",
        "minProperties": f"must have at least {value} properties",
        "maxProperties": f"must have at most {value} properties",
        "anyOf": "does not match any of the allowed shapes",
        "oneOf": "must match exactly one of the allowed shapes",
        "not": "matches a shape that is not allowed",
    }
    return [f"{where}: {words.get(rule, f'does not satisfy {rule!r} of the schema')}"]


def _where(path: Iterable[str | int]) -> str:
    """'order_id', 'items[2].sku': a field path (names the model invented are masked)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{_name(part)}"
    return repr(text) if text else "the arguments"


def _join(where: str, name: str) -> str:
    if where == "the arguments":
        return repr(name)
    return repr(f"{where[1:-1]}.{name}")


def _name(part: object) -> str:
    # A property name the model made up may be anything: only plain ones are repeated.
    text = str(part)
    return text if _SAFE_NAME.match(text) else "<name>"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 200 else text[:197] + "..."


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# Side effects


def _acts(spec: AgentSpec, event: ToolCalled) -> bool:
    """Whether a logged call asks for a side effect: a side-effecting tool, with arguments
    that pass its schema (calls that fail it never run, so they spend nothing)."""
    tool = spec.tool(event.tool)
    if tool is None or not tool.side_effects:
        return False
    try:
        check_arguments(tool, event.arguments)
    except ToolArgumentsInvalid:
        return False
    return True


def side_effects_asked(
    spec: AgentSpec, events: Iterable[Event], leave_out: tuple[int, str] | None = None
) -> Counter[str]:
    """Side-effecting calls the run's log asks for, by tool, its sub-agents' included (their
    events nest in it: 'desk/tool'); `leave_out`: the (step, call id) of a sub-agent call
    whose own calls are not counted."""
    asked: Counter[str] = Counter()
    tools: dict[tuple[int, str], str] = {}
    nested: dict[tuple[int, str], list[Event]] = {}
    for event in events:
        if isinstance(event, ToolCalled):
            tools[(event.step, event.call_id)] = event.tool
            if _acts(spec, event):
                asked[event.tool] += 1
        elif (
            isinstance(event, SubagentEvent)
            and event.event.get("kind") in _NESTED_CALLS  # most nested events are deltas
            and (event.step, event.call_id) != leave_out
        ):
            inner = parse_event(json.dumps(event.event))
            nested.setdefault((event.step, event.call_id), []).append(inner)
    for call, inner_events in nested.items():
        tool = spec.tool(tools.get(call, ""))
        if tool is not None and tool.agent is not None:
            for name, n in side_effects_asked(tool.agent, inner_events).items():
                asked[f"{tool.name}/{name}"] += n
    return asked


def side_effects_left(spec: AgentSpec, events: Sequence[Event], step: int, call_id: str) -> int:
    """What a sub-agent called at (step, call_id) may still ask for: the caller's cap less
    everything else the caller's run asked for (the sub-agent counts its own calls)."""
    used = sum(side_effects_asked(spec, events, leave_out=(step, call_id)).values())
    return max(0, spec.budgets.max_side_effects - used)


def check_side_effects(spec: AgentSpec, events: Sequence[Event], step: int) -> None:
    """Raise SideEffectsExceeded if the run's log asks for more side-effecting calls than
    `budgets.max_side_effects`. Called before any call of `step` runs: the step's calls are
    logged by then, so a step that would cross the cap runs none of them."""
    cap = spec.budgets.max_side_effects
    asked = side_effects_asked(spec, events)
    total = sum(asked.values())
    if total <= cap:
        return
    which = ", ".join(f"{tool} x{n}" for tool, n in sorted(asked.items()))
    raise SideEffectsExceeded(
        f"the model asked for {total} side-effecting tool calls in this run ({which}), more "
        f"than max_side_effects={cap}: none of step {step}'s calls ran",
        total,
        cap,
    )


# Output


def cap_output(text: str, max_bytes: int) -> tuple[str, int | None]:
    """`text` cut to its first `max_bytes` bytes of UTF-8 (never inside a character), with
    a marker saying so, and its size before; or `text` and None if it fits."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text, None
    head = data[:max_bytes].decode("utf-8", errors="ignore")
    marker = f"\n[rayfleet: tool output truncated to {max_bytes} of {len(data)} bytes]"
    return head + marker, len(data)


def cap_outcome(outcome: ToolOutcome, spec: AgentSpec) -> tuple[ToolOutcome, int | None]:
    """The outcome with its output and error capped at the agent's `tool_output_max_bytes`,
    and the size of what was cut (None: nothing was)."""
    limit = spec.tool_output_max_bytes
    output, output_bytes = cap_output(outcome.output, limit)
    error, error_bytes = (None, None) if outcome.error is None else cap_output(outcome.error, limit)
    if output_bytes is None and error_bytes is None:
        return outcome, None
    capped = outcome.model_copy(update={"output": output, "error": error})
    return capped, output_bytes if output_bytes is not None else error_bytes
