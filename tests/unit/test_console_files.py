"""The console's static files: every one is served, none reaches another origin or writes
data as HTML."""

from __future__ import annotations

import re
from pathlib import Path

import serve_app.console
from serve_app.console import ASSETS, CSP

STATIC = Path(serve_app.console.__file__).parent / "static"


def test_every_static_file_is_served_and_only_those() -> None:
    on_disk = {p.name for p in STATIC.iterdir()} - {"index.html"}
    assert on_disk == set(ASSETS)


def test_no_file_names_another_origin_or_writes_html() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|@import", text), path.name
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", text)
        assert not re.search(r"\beval\(|new Function\(", text), path.name


def test_the_page_loads_scripts_only_as_files_and_modules() -> None:
    html = (STATIC / "index.html").read_text()
    assert "<script>" not in html and not re.search(r"\son[a-z]+=", html)  # no inline code
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        if src.startswith("#"):
            continue  # the console's own pages
        # Relative, so a console served under a route prefix loads its own files.
        assert src.startswith("console/static/"), src
        assert src.removeprefix("console/static/") in ASSETS


def test_every_module_imports_only_served_files() -> None:
    for path in STATIC.glob("*.js"):
        for name in re.findall(r'^import .* from "([^"]+)";$', path.read_text(), re.M):
            assert name.startswith("./") and name[2:] in ASSETS, (path.name, name)


def test_the_csp_allows_only_the_gateway() -> None:
    assert "default-src 'none'" in CSP
    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP and "*" not in CSP
