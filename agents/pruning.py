"""Context pruning: what one model call carries of a run's conversation (C7).

The run's conversation (`RunState.messages`) only grows; what a call sends is a view of it,
computed before every call from the conversation, the agent's ContextSpec and the run's
summary so far:

1. Tool outputs over `tool_output_max_tokens` are cut to their head and tail with a marker
   in between. The run log keeps the whole output (the `tool.result` event).
2. Over `max_tokens`, the turns before the recent window are summarised by the cheap tier
   (the loop makes that call; `plan` says when). The summary replaces them.
3. Still over, the oldest turns left are dropped, a whole turn at a time, until the call
   fits or only the system prompt, the request and the latest turn remain.

The system prompt (the stable, provider-cached prefix) and the run's request are never cut.
An assistant message that called tools and the tool results answering it form one turn and
are kept or cut together: providers reject a tool result without its call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from agents.messages import Message, ToolSchema
from agents.spec import ContextSpec
from agents.tokens import estimate_tokens, message_tokens

SUMMARY_HEADER = "[rayfleet: summary of the earlier conversation]\n"


@dataclass(frozen=True)
class Summary:
    """The cheap tier's summary of `messages[1:upto]` (the request excepted)."""

    upto: int
    text: str


@dataclass(frozen=True)
class View:
    """What one model call sends, and how it was cut. Token counts are computed when asked
    for: most steps prune nothing and need none of them."""

    messages: tuple[Message, ...]
    tools: tuple[ToolSchema, ...]
    full: tuple[Message, ...]
    """The conversation before pruning."""
    truncated: tuple[str, ...] = ()
    """Tool call ids whose outputs were cut."""
    dropped: int = 0
    """Messages left out entirely."""
    summarized: int = 0
    """Messages the summary stands for."""

    @property
    def pruned(self) -> bool:
        return bool(self.truncated or self.dropped or self.summarized)

    @cached_property
    def tokens(self) -> int:
        """Estimated input tokens of the call, tools included."""
        return estimate_tokens(self.messages, self.tools)

    @cached_property
    def full_tokens(self) -> int:
        """What the call would carry without pruning."""
        return estimate_tokens(self.full, self.tools)


def truncate_output(text: str, max_tokens: int) -> str:
    """Head and tail of `text` within about `max_tokens`, marked where it was cut."""
    keep = max_tokens * 4
    if len(text) <= keep:
        return text
    head, tail = keep * 2 // 3, keep // 3
    cut = len(text) - head - tail
    marker = (
        f"\n[... {cut} characters truncated by rayfleet; the run log has the full output ...]\n"
    )
    return text[:head] + marker + text[len(text) - tail :]


def _turns(messages: list[Message], start: int, end: int) -> list[range]:
    """messages[start:end] as turns: one message, or a tool-calling assistant message with
    the tool results after it."""
    turns: list[range] = []
    i = start
    while i < end:
        j = i + 1
        if messages[i].tool_calls:
            while j < end and messages[j].role == "tool":
                j += 1
        turns.append(range(i, j))
        i = j
    return turns


def window_start(messages: list[Message], spec: ContextSpec) -> int:
    """Index of the first message of the recent window (never inside a turn)."""
    start = max(1, len(messages) - spec.keep_recent_messages)
    while start > 1 and messages[start].role == "tool":
        start -= 1
    return start


def to_summarize(
    messages: list[Message], request_index: int, spec: ContextSpec, summary: Summary | None
) -> list[Message]:
    """The messages a new summary would fold in: before the window, not yet summarised."""
    first = summary.upto if summary is not None else 1
    end = window_start(messages, spec)
    return [messages[i] for i in range(first, end) if i != request_index]


def build_view(
    messages: list[Message],
    request_index: int,
    tools: tuple[ToolSchema, ...],
    spec: ContextSpec,
    summary: Summary | None,
    *,
    drop: bool = True,
) -> View:
    """The messages one call sends (see the module docstring, steps 1 and 3; without
    `drop`, step 3 is skipped: the view shows what a summary would have to save)."""
    cut = list(messages)
    truncated: list[str] = []
    if spec.tool_output_max_tokens is not None:
        for i, m in enumerate(cut):
            if m.role == "tool" and message_tokens(m) > spec.tool_output_max_tokens:
                short = truncate_output(m.content, spec.tool_output_max_tokens)
                cut[i] = m.model_copy(update={"content": short})
                truncated.append(m.tool_call_id or "")
    head = [cut[0]]
    rest_from = 1
    summarized = 0
    if summary is not None:
        head.append(Message(role="user", content=SUMMARY_HEADER + summary.text))
        rest_from = summary.upto
        while rest_from < len(cut) and cut[rest_from].role == "tool":
            rest_from += 1  # results of a summarised call (a resumed run's thread may differ)
        summarized = sum(1 for i in range(1, summary.upto) if i != request_index)
        if request_index < summary.upto:
            head.append(cut[request_index])
    turns = _turns(cut, rest_from, len(cut))
    dropped = 0
    if spec.max_tokens is not None and drop:
        tokens = estimate_tokens(head, tools) + sum(
            message_tokens(cut[i]) for turn in turns for i in turn
        )
        # Drop the oldest turns (never the request's, never the latest) until the call fits.
        kept: list[range] = []
        for n, turn in enumerate(turns):
            droppable = n < len(turns) - 1 and request_index not in turn
            if tokens > spec.max_tokens and droppable:
                tokens -= sum(message_tokens(cut[i]) for i in turn)
                dropped += len(turn)
            else:
                kept.append(turn)
        turns = kept
    sent = tuple(head + [cut[i] for turn in turns for i in turn])
    return View(
        messages=sent,
        tools=tools,
        full=tuple(messages),
        truncated=tuple(truncated),
        dropped=dropped,
        summarized=summarized,
    )


def summary_prompt(previous: Summary | None, messages: list[Message]) -> tuple[Message, ...]:
    """The cheap tier's instructions and the transcript to summarise."""
    lines = [f"Earlier summary: {previous.text}"] if previous is not None else []
    for m in messages:
        if m.role == "tool":
            lines.append(f"tool result: {m.content}")
        else:
            calls = "".join(f" [called {c.name}({c.arguments})]" for c in m.tool_calls)
            lines.append(f"{m.role}: {m.content}{calls}")
    return (
        Message(
            role="system",
            content="Summarise this part of a conversation for an assistant that will "
            "continue it. Keep names, ids, numbers, decisions, tool findings and open "
            "questions; drop pleasantries. Write at most 120 words.",
        ),
        Message(role="user", content="\n".join(lines)),
    )
