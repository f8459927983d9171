"""The errors module: one way to build a message, and which failures mean the connection is wrong."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from loyalty_moengage.moengage.errors import (
    CONFIG_STATUSES,
    PERMANENT_STATUSES,
    MoEngageAuthError,
    MoEngageConfigError,
    MoEngageError,
    MoEngagePermanentError,
    MoEngageTransientError,
    MoEngageUncertainError,
    is_config_failure,
)

MOENGAGE = Path(__file__).resolve().parents[3] / "plugins" / "loyalty_moengage" / "moengage"


def test_of_builds_the_message_from_cause_and_fix():
    err = MoEngageAuthError.of("MoEngage rejected the credentials", "Check the key", detail="; request_id r-1",
                               status=401, request_id="r-1", attempts=2)
    assert type(err) is MoEngageAuthError
    assert str(err) == "MoEngage rejected the credentials; request_id r-1. Check the key"
    assert (err.cause, err.fix, err.status, err.request_id, err.attempts) == (
        "MoEngage rejected the credentials", "Check the key", 401, "r-1", 2)
    plain = MoEngageError.of("it broke", "mend it")
    assert str(plain) == "it broke. mend it" and plain.status is None and plain.attempts == 0


def test_config_statuses_are_permanent():
    assert CONFIG_STATUSES == {401, 403, 409} and CONFIG_STATUSES < PERMANENT_STATUSES


@pytest.mark.parametrize(("exc", "expected"), [
    (MoEngageConfigError("No Workspace ID (login) in this connection."), True),
    (MoEngageAuthError.of("c", "f", status=401), True),
    (MoEngagePermanentError.of("c", "f", status=403), True),
    (MoEngagePermanentError.of("c", "f", status=409), True),
    (MoEngagePermanentError.of("c", "f", status=400), False),
    (MoEngagePermanentError.of("c", "f"), False),  # too large, never sent
    (MoEngageTransientError.of("c", "f", status=401), False),
    (MoEngageUncertainError.of("c", "f"), False),
    (ValueError("not ours"), False),
])
def test_is_config_failure(exc, expected):
    assert is_config_failure(exc) is expected


def test_moengage_modules_keep_functions_short_and_names_private():
    """No def over 60 lines; no module imports another's private name."""
    for path in sorted(MOENGAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path.name}:{node.lineno} {node.name}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loyalty_moengage"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"
