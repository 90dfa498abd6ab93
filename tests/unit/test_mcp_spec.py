"""`{mcp: ...}` entries of an agent's tools, and how listed MCP tools become ToolSpecs (no
server here: the listings are data; discovery against a real server is in test_mcp_sessions)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from agents.errors import AgentSpecError
from agents.mcp import ListedTool
from agents.spec import AgentSpec

TIERS = {"strong": {"chain": [{"provider": "sim", "model": "m"}]}}
LOOKUP = ListedTool(
    name="lookup",
    description="Look up a city.",
    input_schema={"type": "object", "properties": {"city": {"type": "string"}}},
)
ORDER = ListedTool(
    name="place_order",
    description="Order.",
    input_schema={
        "type": "object",
        "properties": {"item": {"type": "string"}, "idempotency_key": {"type": "string"}},
        "required": ["item", "idempotency_key"],
    },
)


def agent(*tools: Any) -> AgentSpec:
    return AgentSpec.from_mapping(
        {"name": "a", "system_prompt": "x", "tiers": TIERS, "tools": list(tools)}
    )


def test_an_mcp_entry_is_a_server_not_a_tool() -> None:
    spec = agent(
        {"name": "local", "description": "d", "function": "m:f"},
        {"mcp": {"url": "http://127.0.0.1:9/mcp", "name": "weather", "tools": ["lookup"]}},
    )
    assert [t.name for t in spec.tools] == ["local"]
    assert spec.mcp_servers[0].name == "weather"
    assert spec.mcp_servers[0].tools == ("lookup",)
    assert not spec.mcp_listed


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"url": "ftp://h/mcp"}, "not an http(s) URL"),
        ({"url": "http://me:secret@h/mcp"}, "carries credentials: put them in headers_env"),
        ({"url": "http://h/mcp", "tools": ["a"], "side_effects": ["b"]}, "not in `tools`"),
        ({"url": "http://h/mcp", "headers_env": {"Authorization": "lower"}}, "env var name"),
        ({"url": "http://h/mcp", "transport": "stdio"}, "Extra inputs"),
        ({"tools": "*"}, "url"),
    ],
)
def test_a_bad_mcp_entry_is_a_clear_spec_error(entry: dict[str, Any], says: str) -> None:
    with pytest.raises(AgentSpecError, match=re.escape(says)):
        agent({"mcp": entry})


def test_the_error_names_the_entry_as_written() -> None:
    with pytest.raises(AgentSpecError, match=r"tools \(mcp entry 2\)\.url: .*not an http"):
        agent({"mcp": {"url": "http://h/mcp", "name": "one"}}, {"mcp": {"url": "file:///x"}})


def test_two_servers_with_one_name_need_distinct_names() -> None:
    with pytest.raises(AgentSpecError, match="share the name"):
        agent({"mcp": {"url": "http://127.0.0.1:1/mcp"}}, {"mcp": {"url": "http://127.0.0.1:2/a"}})


def test_listed_tools_become_tool_specs() -> None:
    spec = agent(
        {
            "mcp": {
                "url": "http://127.0.0.1:9/mcp",
                "name": "shop",
                "side_effects": ["place_order"],
                "approval": "required",
                "approval_tools": ["place_order"],
                "cache_ttl_s": 30,
            }
        }
    ).with_mcp_tools([[LOOKUP, ORDER]])
    lookup, order = spec.tools
    assert spec.mcp_listed
    assert (lookup.name, lookup.description) == ("lookup", "Look up a city.")
    assert lookup.mcp is not None and lookup.mcp.tool == "lookup" and lookup.mcp.server == "shop"
    assert lookup.cache_ttl_s == 30 and not lookup.side_effects and lookup.approval is None
    assert order.side_effects and order.cache_ttl_s is None and order.approval is not None
    # The key is ours: the model never sees it, the pool fills it in.
    assert order.mcp is not None and order.mcp.idempotency_arg
    assert order.parameters["properties"] == {"item": {"type": "string"}}
    assert order.parameters["required"] == ["item"]
    assert order.runs_in == "process"  # as any side-effecting tool


def test_tools_two_servers_share_are_namespaced_and_others_keep_their_names() -> None:
    spec = agent(
        {"name": "lookup", "description": "a function tool", "function": "m:f"},
        {"mcp": {"url": "http://127.0.0.1:1/mcp", "name": "one"}},
        {"mcp": {"url": "http://127.0.0.1:2/mcp", "name": "two"}},
    ).with_mcp_tools([[LOOKUP, ORDER], [ORDER, ListedTool(name="Get.Time")]])
    names = [t.name for t in spec.tools]
    assert names == ["lookup", "one__lookup", "one__place_order", "two__place_order", "get_time"]
    by_name = {t.name: t for t in spec.tools}
    assert by_name["get_time"].mcp is not None and by_name["get_time"].mcp.tool == "Get.Time"


def test_a_tool_the_server_does_not_list_is_an_error() -> None:
    spec = agent({"mcp": {"url": "http://127.0.0.1:1/mcp", "tools": ["lookup", "nope"]}})
    with pytest.raises(ValueError, match=r"no tool\(s\) \['nope'\].*lookup"):
        spec.with_mcp_tools([[LOOKUP]])


def test_a_resolved_spec_is_plain_data() -> None:
    spec = agent({"mcp": {"url": "http://127.0.0.1:1/mcp", "side_effects": ["place_order"]}})
    resolved = spec.with_mcp_tools([[LOOKUP, ORDER]])
    assert pickle.loads(pickle.dumps(resolved)) == resolved
    # As stored with a run (JSON), and listing again is a no-op.
    assert AgentSpec.model_validate_json(resolved.model_dump_json()) == resolved
    assert resolved.with_mcp_tools([[]]) is resolved


def test_an_mcp_entry_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(
        "name: a\nsystem_prompt: x\ntiers: {strong: {chain: [{provider: sim, model: m}]}}\n"
        "tools:\n  - mcp:\n      url: http://127.0.0.1:9/mcp\n      tools: [lookup]\n"
        "      headers_env: {Authorization: WEATHER_TOKEN}\n"
    )
    spec = AgentSpec.from_yaml(path)
    assert spec.mcp_servers[0].headers_env == {"Authorization": "WEATHER_TOKEN"}
    assert spec.mcp_servers[0].server_name == "h127_0_0_1"


def test_a_tool_the_server_marks_destructive_or_that_takes_our_key_has_side_effects() -> None:
    keyed = {"type": "object", "properties": {"idempotency_key": {"type": "string"}}}
    spec = agent({"mcp": {"url": "http://127.0.0.1:1/mcp"}}).with_mcp_tools(
        [
            [
                LOOKUP,
                ListedTool(name="wipe", destructive=True),
                ListedTool(name="charge", input_schema=keyed),
            ]
        ]
    )
    by_name = {t.name: t for t in spec.tools}
    assert not by_name["lookup"].side_effects
    assert by_name["wipe"].side_effects and by_name["charge"].side_effects
    charge = by_name["charge"].mcp
    assert charge is not None and charge.idempotency_arg


def test_a_sub_agents_mcp_servers_count_as_unlisted_until_discovered() -> None:
    sub = agent({"mcp": {"url": "http://127.0.0.1:1/mcp"}}).model_dump()
    parent = agent({"name": "helper", "description": "a sub-agent", "agent": sub})
    assert parent.mcp_unlisted() and not parent.mcp_servers
