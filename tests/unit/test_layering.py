"""Imports flow one way: serve_app -> actors -> agents. Checked by parsing, not importing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> top-level names it must never import
FORBIDDEN = {
    "agents": {"actors", "serve_app", "ray"},
    "actors": {"serve_app"},
    "serve_app": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(code: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of everything `code` (module `module`) imports, relative ones resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                found.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                found.add(node.module)
    return found


def imports_of(path: Path) -> set[str]:
    code = path.read_text(encoding="utf-8")
    return imported_modules(code, module_name(path), is_package=path.name == "__init__.py")


def sources() -> list[Path]:
    return sorted(p for pkg in FORBIDDEN for p in (ROOT / pkg).rglob("*.py"))


def test_there_is_something_to_check() -> None:
    checked = {path.relative_to(ROOT).parts[0] for path in sources()}
    assert {"agents", "actors"} <= checked


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_one_way(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    bad = sorted(name for name in imports_of(path) if name.split(".")[0] in FORBIDDEN[package])
    assert not bad, f"{path.relative_to(ROOT)} ({package}) must not import {bad}"


def test_the_checker_sees_relative_and_nested_imports() -> None:
    assert "agents.spec" in imports_of(ROOT / "agents" / "examples" / "__init__.py")
    code = "from ..x import a\nfrom . import b\nimport ray.serve\ndef f():\n    import serve_app\n"
    names = imported_modules(code, "agents.examples.sample")
    assert names == {"agents.x", "agents.examples", "ray.serve", "serve_app"}
