"""Human approval of tool calls: which calls wait for a person, and the rule language.

A tool declares `approval:`. Its call then waits for a decision (approve, edit, reject) before
the tool runs. The rule may narrow which calls wait: `when`, an expression on the call's
arguments (`args.amount > 100`), and `tenants`, the tenants whose runs ask. The expression
language is deliberately tiny and parsed once at load: comparisons, `and` / `or` / `not`,
literals, `args.<name>` and `args["<name>"]`, `in` over a literal list. Nothing else is
evaluated, so a spec cannot run code.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PrivateAttr, model_validator

from agents.errors import NotPending, RequestInvalid
from agents.events import ApprovalDecided, ApprovalRequested, Event, is_terminal

Decider = Literal["tenant", "admin"]
Decision = Literal["approve", "edit", "reject", "timeout"]
OnTimeout = Literal["reject", "fail"]

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_MISSING = object()


class ApprovalRule(BaseModel):
    """When a tool's call waits for a person, who may decide, and for how long."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    when: str | None = Field(
        None,
        max_length=500,
        description="Only calls whose arguments match, e.g. 'args.amount > 100' (unset: all).",
    )
    tenants: tuple[str, ...] | None = Field(
        None, description="Only runs of these tenants ask (unset: every tenant's)."
    )
    deciders: tuple[Decider, ...] = Field(
        ("tenant", "admin"),
        min_length=1,
        description="Who may decide: the run's tenant (its own key) and/or the admin key.",
    )
    timeout_s: float = Field(
        86_400.0, gt=0, le=30 * 86_400, description="How long a call waits for a decision."
    )
    on_timeout: OnTimeout = Field(
        "reject",
        description="Past the deadline: 'reject' (the model hears it was not approved) or "
        "'fail' (the run fails with code approval_timeout).",
    )
    _test: Callable[[Mapping[str, JsonValue]], bool] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _compile(self) -> ApprovalRule:
        if self.when is not None:
            self._test = compile_condition(self.when)
        return self

    def asks(self, arguments: Mapping[str, JsonValue], tenant: str) -> bool:
        """Whether this call, by a run of `tenant`, waits for a decision."""
        if self.tenants is not None and tenant not in self.tenants:
            return False
        return self._test is None or self._test(arguments)


def compile_condition(source: str) -> Callable[[Mapping[str, JsonValue]], bool]:
    """`source` as a test of a call's arguments; ValueError naming what is not allowed.

    A comparison with a missing argument, or of values that cannot be compared (a string with
    a number), is false: the rule does not match, rather than failing the run."""
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"approval.when is not an expression: {exc.msg}") from None
    _check(tree.body)

    def test(arguments: Mapping[str, JsonValue]) -> bool:
        return bool(_evaluate(tree.body, arguments))

    return test


def _check(node: ast.AST) -> None:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check(node.operand)
    elif isinstance(node, ast.Compare):
        if not all(type(op) in _COMPARE for op in node.ops):
            raise ValueError("approval.when: only ==, !=, <, <=, >, >=, in, not in compare")
        for part in (node.left, *node.comparators):
            _check_value(part)
    else:
        _check_value(node)


def _check_value(node: ast.AST) -> None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool):
        return
    if isinstance(node, ast.Constant) and node.value is None:
        return
    if isinstance(node, ast.List | ast.Tuple):
        for item in node.elts:
            if not isinstance(item, ast.Constant):
                raise ValueError("approval.when: a list holds literals only")
        return
    if _argument_name(node) is not None:
        return
    raise ValueError(
        f"approval.when: {ast.unparse(node)!r} is not allowed (use args.<name>, literals, "
        "comparisons, and, or, not)"
    )


def _argument_name(node: ast.AST) -> str | None:
    """The argument `args.name` or `args["name"]` reads, else None."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.attr if node.value.id == "args" else None
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "args"
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
    ):
        return node.slice.value
    return None


def _evaluate(node: ast.AST, arguments: Mapping[str, JsonValue]) -> Any:
    if isinstance(node, ast.BoolOp):
        values = (bool(_evaluate(v, arguments)) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        return not _evaluate(node.operand, arguments)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, arguments)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(right_node, arguments)
            if left is _MISSING or right is _MISSING:
                return False
            try:
                if not _COMPARE[type(op)](left, right):
                    return False
            except TypeError:  # "10" > 5: not comparable, so not a match
                return False
            left = right
        return True
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        return [item.value for item in node.elts if isinstance(item, ast.Constant)]
    name = _argument_name(node)
    assert name is not None  # _check allowed nothing else
    return arguments.get(name, _MISSING)


class AwaitingApproval(Exception):
    """The loop stops here: the call waits for a decision. Not an error: the run is paused,
    its log has no terminal event, and a decision resumes it from the log."""

    def __init__(self, request: ApprovalRequested) -> None:
        super().__init__(f"tool call {request.call_id} waits for approval")
        self.request = request


def waiting(events: list[Event]) -> ApprovalRequested | None:
    """The call a run waits on a decision for, if it is paused (else None)."""
    if not events or is_terminal(events[-1]):
        return None
    decided = {e.call_id for e in events if isinstance(e, ApprovalDecided)}
    for event in reversed(events):
        if isinstance(event, ApprovalRequested) and event.call_id not in decided:
            return event
    return None


def paused_s(events: list[Event], now: float) -> float:
    """Seconds the run spent waiting for decisions: not part of its run time budget."""
    asked: dict[str, float] = {}
    total = 0.0
    for event in events:
        if isinstance(event, ApprovalRequested):
            asked[event.call_id] = event.ts
        elif isinstance(event, ApprovalDecided) and event.call_id in asked:
            total += max(0.0, event.ts - asked.pop(event.call_id))
    return total + sum(max(0.0, now - ts) for ts in asked.values())


def decision_fields(
    events: list[Event],
    call_id: str,
    decision: Decision,
    by: str,
    arguments: dict[str, JsonValue] | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """The fields of the `approval.decided` event deciding `call_id` (emit them on the run's
    log); NotPending unless the run waits on exactly that call."""
    asked = waiting(events)
    if asked is None or asked.call_id != call_id:
        waits = f"; it waits on {asked.call_id}" if asked is not None else ""
        raise NotPending(f"tool call {call_id[:80]!r} does not wait for a decision{waits}")
    if (decision == "edit") != (arguments is not None):
        raise RequestInvalid("arguments: given with an edit, and only then", "arguments")
    return {
        "step": asked.step,
        "call_id": call_id,
        "tool": asked.tool,
        "decision": decision,
        "arguments": arguments,
        "message": message,
        "by": by,
    }
