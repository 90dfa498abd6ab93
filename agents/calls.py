"""Tool calls as the durable log names them: stable ids and idempotency keys.

A provider's call ids cannot name an effect: a model call redone after a crash gets new ones,
and some providers send empty or repeated ids. What the run's durable log holds can: the
step, the call's position in it, the tool and its arguments. A resumed run re-issues a call
from that log, so it derives the same key and the effect ledger answers instead of the tool.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from pydantic import JsonValue

from agents.messages import ToolCall


def canonical_json(arguments: Mapping[str, JsonValue]) -> str:
    """One text for equal arguments, whatever their key order or spacing."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def idempotency_key(
    run_id: str, step: int, position: int, tool: str, arguments: Mapping[str, JsonValue]
) -> str:
    """The key of the `position`-th call (from 0) of `step`: readable where it can be, the
    arguments as a digest (they may be long, or hold what a log should not repeat)."""
    digest = hashlib.sha256(canonical_json(arguments).encode()).hexdigest()[:32]
    return f"{run_id}:{step}:{position}:{tool}:{digest}"


def with_stable_ids(calls: Sequence[ToolCall], step: int) -> tuple[ToolCall, ...]:
    """The step's calls with an id each that no other call of the step has: a provider's id
    is kept unless it is empty or already taken; such a call gets `rf-<step>-<position>`
    (suffixed until free), so every result is matched to its own call."""
    taken = {call.id for call in calls if call.id}
    seen: set[str] = set()
    stable: list[ToolCall] = []
    for position, call in enumerate(calls):
        call_id = call.id
        if not call_id or call_id in seen:
            call_id = f"rf-{step}-{position}"
            while call_id in taken:
                call_id += "x"
            taken.add(call_id)
            call = call.model_copy(update={"id": call_id})
        seen.add(call_id)
        stable.append(call)
    return tuple(stable)
