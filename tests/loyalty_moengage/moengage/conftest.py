"""A real sandbox on a free loopback port, and hooks pointed at it through AIRFLOW_CONN_* variables."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from loyalty_moengage_devtools.sandbox.server import SandboxServer


@pytest.fixture(scope="session")
def sandbox():
    with SandboxServer(port=0) as server:
        yield server


@pytest.fixture
def sb(sandbox):
    sandbox.set_faults()
    yield sandbox
    sandbox.set_faults()


@pytest.fixture
def workspace(sb):
    """(workspace_id, key) of a fresh workspace on DC-03."""
    workspace_id = f"WS_{uuid.uuid4().hex[:10].upper()}"
    key = f"key-{uuid.uuid4().hex}"
    sb.add_workspace(workspace_id, key, "03")
    return workspace_id, key


@pytest.fixture
def make_hook(sb, monkeypatch):
    from loyalty_moengage.moengage.hook import MoEngageHook

    def make(workspace_id: str, key: str, *, host: str = "DC-03", base_url: str | None = None,
             hook_kwargs: dict | None = None, **extra):
        conn_id = f"moe_{uuid.uuid4().hex[:8]}"
        conn = {"conn_type": "moengage", "login": workspace_id, "password": key, "host": host,
                "extra": {"base_url": base_url or sb.base_url_template, **extra}}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        kwargs = {"backoff_initial": 0.01, "backoff_max": 0.05, **(hook_kwargs or {})}
        return MoEngageHook(moengage_conn_id=conn_id, **kwargs)

    return make


@pytest.fixture
def virtual_time(sb, monkeypatch):
    """One virtual clock for the hooks (pass ``clock``/``sleep``) and for the sandbox's rate windows."""
    from loyalty_moengage_devtools.sandbox import server
    from tests.loyalty_moengage.moengage.virtual_clock import VirtualClock

    clock = VirtualClock()
    # A whole-second epoch, so the sandbox's 1 s windows start at virtual 0 on every run.
    monkeypatch.setattr(server, "time", clock.as_time_module(epoch=float(int(time.time()))))
    return clock
