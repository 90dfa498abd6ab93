"""Request bodies: bad JSON and JSON nested past the limit are invalid input, never a crash."""

from __future__ import annotations

import json
import sys

import pytest

from agents.errors import RequestInvalid
from serve_app.bodies import MAX_JSON_DEPTH, depth_exceeds, parse_json
from serve_app.http_errors import status_for


def test_a_plain_body_parses() -> None:
    assert parse_json(b'{"input": "hi", "inputs": [["a"], {"b": [1]}]}')["input"] == "hi"


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_nesting_far_past_the_stack_is_a_422_naming_the_depth(opening: str) -> None:
    body = (opening * 100_000).encode()
    assert 100_000 > sys.getrecursionlimit()  # json.loads alone raises RecursionError here
    with pytest.raises(RequestInvalid, match=f"nested more than {MAX_JSON_DEPTH} levels") as err:
        parse_json(body)
    assert err.value.field == "body"
    assert status_for(err.value) == 422


def test_nesting_the_parser_accepts_is_still_refused_past_the_limit() -> None:
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    json.loads(deep)  # valid JSON, within the interpreter's stack
    with pytest.raises(RequestInvalid, match="nested more than"):
        parse_json(deep.encode())
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse_json(at_limit.encode()) is not None


def test_depth_counts_objects_and_arrays_alike() -> None:
    assert not depth_exceeds("text", 0)
    assert not depth_exceeds({"a": [1, {"b": []}]}, 4)
    assert depth_exceeds({"a": [1, {"b": []}]}, 3)
    assert depth_exceeds([[], [[[]]]], 3)


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe", b"", b"[1,]"])
def test_invalid_json_is_a_422(raw: bytes) -> None:
    with pytest.raises(RequestInvalid, match="not valid JSON"):
        parse_json(raw)
