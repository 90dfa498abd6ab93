"""Every error in the tree pickles (it crosses Ray boundaries) and has its own code."""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import pytest

from agents.errors import RayfleetError, all_error_classes

# A value for every constructor argument name used in the tree; a new argument name must be
# added here, which is the point: the test then proves the new class still pickles.
SAMPLE_ARGUMENTS: dict[str, object] = {
    "message": "something specific went wrong",
    "source": "agents/examples/support.yaml",
    "agent": "support",
    "run_id": "run-42",
    "field": "input",
    "limit": "cost",
    "tool": "issue_refund",
    "retryable": True,
    "provider": "sim-openai",
    "status_code": 429,
    "retry_after_s": 2.5,
    "quota": 60,
    "remaining": 0,
    "reset_s": 12.0,
    "batch_id": "batch-0123",
    "service": "rayfleet-store",
    "asked": 11,
    "cap": 10,
}

CLASSES = all_error_classes()


def build(cls: type[RayfleetError]) -> RayfleetError:
    kwargs: dict[str, Any] = {}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        assert name in SAMPLE_ARGUMENTS, f"{cls.__name__}: add a sample for argument {name!r}"
        kwargs[name] = SAMPLE_ARGUMENTS[name]
    return cls(**kwargs)


def test_the_tree_is_complete() -> None:
    names = {cls.__name__ for cls in CLASSES}
    assert {"RayfleetError", "AgentSpecError", "BudgetExceeded", "ProviderUnavailable"} <= names
    assert len(names) == len(CLASSES)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_pickles_to_the_same_error(cls: type[RayfleetError]) -> None:
    error = build(cls)
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is cls
    assert str(restored) == str(error) == error.message
    assert restored.args == error.args
    assert vars(restored) == vars(error)
    assert (restored.code, restored.retryable) == (error.code, error.retryable)
    rebuilt = cls(*error.args)  # the documented contract: cls(*err.args) rebuilds it
    assert vars(rebuilt) == vars(error)


def test_codes_are_distinct() -> None:
    codes = [cls.code for cls in CLASSES]
    assert len(codes) == len(set(codes)), sorted(codes)
    assert all(code and code == code.lower() for code in codes)
