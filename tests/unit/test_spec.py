"""AgentSpec: the examples load; bad YAML fails with the file and the field path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agents.errors import AgentSpecError
from agents.examples import example_specs
from agents.spec import AgentSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "agents" / "examples"


def test_the_example_specs_load() -> None:
    specs = {spec.key: spec for spec in example_specs()}
    assert "support@v1" in specs
    support = specs["support@v1"]
    assert support.loop_tier == "strong"
    assert [(m.provider, m.model) for m in support.tiers["strong"].chain] == [
        ("sim-openai", "sim-strong"),
        ("sim-anthropic", "sim-strong"),
    ]
    assert [(m.provider, m.model) for m in support.tiers["fast"].chain] == [
        ("sim-anthropic", "sim-fast")
    ]
    side_effects = {tool.name: tool.side_effects for tool in support.tools}
    assert side_effects == {"lookup_order": False, "issue_refund": True, "search_kb": False}
    order_id = support.tool("lookup_order").parameters["properties"]["order_id"]  # type: ignore[union-attr,index,call-overload]
    assert order_id["type"] == "integer"  # type: ignore[index,call-overload]


def support_data() -> dict[str, object]:
    data = yaml.safe_load((EXAMPLES / "support.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_unknown_top_level_field(tmp_path: Path) -> None:
    data = support_data()
    data["max_stpes"] = 3
    path = write(tmp_path, data)
    with pytest.raises(AgentSpecError) as caught:
        AgentSpec.from_yaml(path)
    assert caught.value.source == str(path)
    assert f"{path}: max_stpes: Extra inputs are not permitted" in str(caught.value)


def test_unknown_nested_field_names_its_path(tmp_path: Path) -> None:
    data = support_data()
    data["tiers"]["strong"]["chain"][1]["modle"] = "x"  # type: ignore[index]
    path = write(tmp_path, data)
    with pytest.raises(AgentSpecError, match=r"tiers\.strong\.chain\.1\.modle"):
        AgentSpec.from_yaml(path)


def test_unknown_loop_tier_names_the_field_and_the_known_tiers(tmp_path: Path) -> None:
    data = support_data()
    data["loop_tier"] = "strnog"
    path = write(tmp_path, data)
    with pytest.raises(AgentSpecError) as caught:
        AgentSpec.from_yaml(path)
    message = str(caught.value)
    assert f"{path}: loop_tier:" in message
    assert "unknown tier 'strnog' in agent 'support' (known: fast, strong)" in message


def test_bad_tool_field_names_the_tool_index(tmp_path: Path) -> None:
    data = support_data()
    data["tools"][1]["side_effects"] = "sometimes"  # type: ignore[index]
    with pytest.raises(AgentSpecError, match=r"tools\.1\.side_effects"):
        AgentSpec.from_yaml(write(tmp_path, data))


def test_duplicate_tool_names(tmp_path: Path) -> None:
    data = support_data()
    data["tools"].append(dict(data["tools"][0]))  # type: ignore[attr-defined,index]
    with pytest.raises(AgentSpecError, match=r"duplicate tool names.*lookup_order"):
        AgentSpec.from_yaml(write(tmp_path, data))


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(AgentSpecError, match=r"broken\.yaml: not valid YAML"):
        AgentSpec.from_yaml(broken)
    with pytest.raises(AgentSpecError, match=r"missing\.yaml: cannot read"):
        AgentSpec.from_yaml(tmp_path / "missing.yaml")


def test_a_list_instead_of_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(AgentSpecError, match=r"agent\.yaml: \(top level\)"):
        AgentSpec.from_yaml(write(tmp_path, ["support"]))
