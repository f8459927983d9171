"""One sandbox per test module, reset to one workspace before each test."""

from __future__ import annotations

import pytest

from loyalty_moengage_devtools.sandbox.server import SandboxServer

WS, KEY = "WS_SANDBOX", "sandbox-key-123"


@pytest.fixture(scope="module")
def server():
    with SandboxServer(port=0) as sb:
        yield sb


@pytest.fixture
def sb(server):
    server.reset(workspaces=True)
    server.add_workspace(WS, KEY, "03")
    return server
