"""The simulator's model: a wire-neutral conversation, a rule-based policy, token estimates.

Token estimate (documented, used everywhere in the simulator): ceil(len(text) / 4) for each
message part (a text, a tool call's name + JSON arguments, a tool result, a tool schema as
JSON), at least 1 for a non-empty part.

The policy, deterministic:
- last message a user text and tools offered: call the tool whose name + description words
  overlap most with the user text (ties -> the first), arguments built from its JSON schema;
- last messages tool results: answer in text from them, then stop;
- no tools: a short answer that quotes the input;
- `steps=N` in the user text: keep calling tools until N-1 tool results follow the last
  user text, then answer.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import JsonValue


class WireError(Exception):
    """A request the simulator refuses, as (status, message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


def estimate_tokens(text: str) -> int:
    """ceil(len(text) / 4): the simulator's tokenizer."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True)
class SimToolCall:
    id: str
    name: str
    arguments: dict[str, JsonValue]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True)
class SimMessage:
    """One message in wire-neutral form. role "tool" = a tool result."""

    role: Literal["system", "user", "assistant", "tool"]
    text: str = ""
    tool_calls: tuple[SimToolCall, ...] = ()
    tool_call_id: str | None = None

    def tokens(self) -> int:
        parts = [self.text, *(c.name + c.arguments_json for c in self.tool_calls)]
        return sum(estimate_tokens(p) for p in parts)


@dataclass(frozen=True)
class SimTool:
    name: str
    description: str
    parameters: dict[str, JsonValue]

    def tokens(self) -> int:
        return estimate_tokens(
            json.dumps(
                {"name": self.name, "description": self.description, "parameters": self.parameters}
            )
        )


@dataclass(frozen=True)
class Conversation:
    model: str
    messages: tuple[SimMessage, ...]
    tools: tuple[SimTool, ...] = ()


@dataclass
class SimUsage:
    """Provider-neutral counts; `input_tokens` excludes cached and cache-write tokens."""

    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Completion:
    """What the model 'says': text, then tool calls. The wire modules render it."""

    text: str = ""
    tool_calls: list[SimToolCall] = field(default_factory=list)
    usage: SimUsage = field(default_factory=SimUsage)

    @property
    def finish(self) -> Literal["stop", "tool_calls"]:
        return "tool_calls" if self.tool_calls else "stop"

    def output_tokens(self) -> int:
        parts = [self.text, *(c.name + c.arguments_json for c in self.tool_calls)]
        return max(1, sum(estimate_tokens(p) for p in parts))


def short_hash(*parts: object, n: int = 24) -> str:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return h[:n]


_WORD = re.compile(r"[a-z0-9]+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_STEPS = re.compile(r"\bsteps=(\d+)\b")
_STOPWORDS = frozenset(
    "a an and are as at be by can do for from has have i in is it its me my of on or "
    "our please the this to was what when where which who why will with you your".split()
)


def _words(text: str) -> set[str]:
    found = set()
    for w in _WORD.findall(text.lower()):
        if w in _STOPWORDS:
            continue
        found.add(w[:-1] if len(w) > 3 and w.endswith("s") else w)
    return found


def _last_user_index(messages: tuple[SimMessage, ...]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            return i
    return None


def choose_tool(user_text: str, tools: tuple[SimTool, ...]) -> SimTool:
    """The tool whose name and description share the most words with the user text."""
    wanted = _words(user_text)
    best, best_score = tools[0], -1
    for tool in tools:
        score = len(wanted & _words(tool.name.replace("_", " ") + " " + tool.description))
        if score > best_score:
            best, best_score = tool, score
    return best


def build_arguments(schema: dict[str, JsonValue], user_text: str) -> dict[str, JsonValue]:
    """Arguments for a JSON schema: numbers and *id* fields from the text, strings = the text."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return {}
    required = schema.get("required")
    names = [n for n in props if not isinstance(required, list) or n in required]
    number_match = _NUMBER.search(user_text)
    number = number_match.group(0) if number_match else "1"
    args: dict[str, JsonValue] = {}
    for name in names:
        prop = props[name]
        kind = prop.get("type") if isinstance(prop, dict) else None
        enum = prop.get("enum") if isinstance(prop, dict) else None
        if isinstance(enum, list) and enum:
            args[name] = enum[0]
        elif kind == "integer":
            args[name] = int(float(number))
        elif kind == "number":
            args[name] = float(number)
        elif "id" in name.lower().split("_") or name.lower().endswith("id"):
            args[name] = int(float(number)) if kind is None else number
        elif kind == "boolean":
            args[name] = True
        elif kind == "array":
            args[name] = []
        elif kind == "object":
            args[name] = {}
        else:
            args[name] = user_text
    return args


def _chunk_words(text: str, per_chunk: int = 3) -> list[str]:
    words = text.split(" ")
    return [
        " ".join(words[i : i + per_chunk]) + (" " if i + per_chunk < len(words) else "")
        for i in range(0, len(words), per_chunk)
    ]


def split_text(text: str) -> list[str]:
    """Stream pieces: a few words each, joined back they give the text exactly."""
    return [p for p in _chunk_words(text) if p] or [text]


def split_fragments(text: str, size: int = 8) -> list[str]:
    """JSON argument fragments as providers stream them (several per call)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def policy_completion(conv: Conversation, request_key: str, id_prefix: str = "call_") -> Completion:
    """The rule-based answer for a conversation (see the module docstring)."""
    messages = conv.messages
    last_user = _last_user_index(messages)
    user_text = messages[last_user].text if last_user is not None else ""
    tail = messages[last_user + 1 :] if last_user is not None else messages
    results = [m for m in tail if m.role == "tool"]
    steps_match = _STEPS.search(user_text)
    clean_text = _STEPS.sub("", user_text).strip() or user_text

    wants_tool = bool(conv.tools) and (
        (int(steps_match.group(1)) - 1 > len(results))
        if steps_match
        else bool(messages) and messages[-1].role == "user"
    )
    if wants_tool:
        tool = choose_tool(clean_text, conv.tools)
        call = SimToolCall(
            id=f"{id_prefix}{short_hash(request_key, len(messages), tool.name, n=20)}",
            name=tool.name,
            arguments=build_arguments(tool.parameters, clean_text),
        )
        return Completion(tool_calls=[call])
    if results:
        names = {c.id: c.name for m in messages for c in m.tool_calls}
        found = "; ".join(
            f"{names.get(r.tool_call_id or '', 'the tool')} returned {r.text}" for r in results
        )
        return Completion(text=f"Here is what I found: {found}. Anything else I can help with?")
    snippet = clean_text if len(clean_text) <= 120 else clean_text[:117] + "..."
    return Completion(text=f"You said: {snippet}. This is a simulated answer.")


def embed_text(text: str, dim: int) -> list[float]:
    """A deterministic unit vector from a hash of the text."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


class PromptCache:
    """Prefixes seen before, keyed by model and prefix hash (cleared by /_sim/reset)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._max_entries = max_entries

    def seen(self, model: str, prefix_key: str) -> bool:
        return (model, prefix_key) in self._seen

    def add(self, model: str, prefix_key: str) -> None:
        if len(self._seen) >= self._max_entries:  # a long-running simulator: start over
            self._seen.clear()
        self._seen.add((model, prefix_key))

    def clear(self) -> None:
        self._seen.clear()
