"""Token counts, estimated: ceil(characters / 4) for each part of a message.

A part is a message's text, one tool call (its name + compact JSON arguments), or one tool
schema (as JSON). This is the count the provider simulator bills with, so against it the
estimate is exact; against a real provider's tokenizer it is an estimate (about 4
characters a token is the usual rule of thumb for English). It is used where a count is
needed before a call: context pruning, the dollar budget's pre-call check and the tenant
limiter's reservation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from agents.messages import Message, ToolCall, ToolSchema


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def call_tokens(call: ToolCall) -> int:
    return text_tokens(call.name + json.dumps(call.arguments, separators=(",", ":")))


def message_tokens(message: Message) -> int:
    return text_tokens(message.content) + sum(call_tokens(c) for c in message.tool_calls)


def tool_tokens(tool: ToolSchema) -> int:
    schema = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return text_tokens(json.dumps(schema))


def estimate_tokens(messages: Iterable[Message], tools: Iterable[ToolSchema] = ()) -> int:
    """Input tokens of a model call carrying `messages` and offering `tools`."""
    return sum(message_tokens(m) for m in messages) + sum(tool_tokens(t) for t in tools)
