"""The plugin mounts the app in Airflow's own API server, and requests reach it there."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.loyalty_moengage.api.conftest import API_KEY, STORE_KEY, WRITE_KEY, free_port, serve

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def fresh_plugins(monkeypatch, keys_env, seeded_db):
    """Airflow's plugin caches and our app singleton reset, the app pointed at the test DB."""
    from airflow import plugins_manager

    import loyalty_moengage.api.app as api_app

    monkeypatch.setenv("LOYALTY_API_DSN", seeded_db)
    monkeypatch.setattr(api_app, "_default_app", None)
    for fn in (getattr(plugins_manager, "_get_plugins", None), getattr(plugins_manager, "get_fastapi_plugins", None)):
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()
    yield plugins_manager
    for fn in (getattr(plugins_manager, "_get_plugins", None),):
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()


def test_plugins_manager_loads_plugin_and_app(fresh_plugins):
    apps, _ = fresh_plugins.get_fastapi_plugins()
    mine = [a for a in apps if a["url_prefix"] == "/loyalty-moengage"]
    assert len(mine) == 1 and mine[0]["name"] == "Loyalty API for MoEngage"
    from fastapi import FastAPI

    assert isinstance(mine[0]["app"], FastAPI)


def test_request_through_airflow_api_server_reaches_endpoint(fresh_plugins, capfd, monkeypatch):
    from airflow.api_fastapi.app import create_app

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "test-only-jwt-secret-0123456789")

    airflow_app = create_app()
    with serve(airflow_app) as url, httpx.Client(base_url=url, timeout=10) as client:
        params = {"api_key": API_KEY, "store_key": STORE_KEY, "customer_phone": "+91 98765 43210"}
        r = client.get("/loyalty-moengage/api/loyalty/points", params=params)
        assert r.status_code == 200, r.text
        assert r.json()["customer_id"] == "REL-0001" and r.json()["points_available"] == 1020
        r = client.get("/loyalty-moengage/api/loyalty/points", params={**params, "api_key": "x" * 20})
        assert r.status_code == 401 and r.json()["error"]["field"] == "api_key"
        # the connector's write key in a header, as MoEngage's connectors send custom headers
        r = client.post("/loyalty-moengage/api/customers/add", headers={"X-API-Key": WRITE_KEY},
                        json={"customer_details": {"number": "9123456780", "store_id": "A123", "amount": "100"}})
        assert r.status_code == 200 and r.json()["results"][0]["points_credited"] == 10
        time.sleep(0.2)
    out = capfd.readouterr()
    logged = out.out + out.err
    # Airflow's own access log (HttpAccessLogMiddleware) saw the requests, with both keys redacted
    assert "path=/loyalty-moengage/api/loyalty/points" in logged
    assert "api_key=%2A%2A%2A&store_key=%2A%2A%2A" in logged
    assert API_KEY not in logged and STORE_KEY not in logged and WRITE_KEY not in logged


def test_standalone_server_logs_requests_without_keys(keys_env, seeded_db, tmp_path):
    """`python -m loyalty_moengage.api` in its own process: real HTTP, redacted access log."""
    import os

    port = free_port()
    env = {**os.environ, "LOYALTY_API_DSN": seeded_db, "LOYALTY_API_POOL_MIN": "1"}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "loyalty_moengage.api", "--port", str(port)],
                                env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log_path.read_text()) from None
                time.sleep(0.1)
        r = httpx.get(url + "/api/loyalty/points",
                      params={"api_key": API_KEY, "store_key": STORE_KEY, "customer_phone": "9876543210"})
        assert r.status_code == 200 and r.json()["points_available"] == 1020
        assert "server" not in r.headers  # no server banner
        time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(10)
    logged = log_path.read_text()
    assert re.search(r'"GET /api/loyalty/points\?api_key=\*\*\*&store_key=\*\*\*&customer_phone=\*{8}10" 200', logged), logged
    assert API_KEY not in logged and STORE_KEY not in logged and "9876543210" not in logged


@pytest.mark.parametrize("name", ["api_key", "api-key", "API-KEY", "apiKey", "store-key", "storeKey", "store_key",
                                  "access_token", "client_secret", "password", "Authorization"])
def test_a_key_under_any_spelling_of_its_name_is_redacted(name):
    from loyalty_moengage.api.access_log import redact_query

    assert redact_query(f"{name}=s3cr3t-value&customer_id=REL-1") == f"{name}=***&customer_id=REL-1"


def test_a_phone_or_email_keeps_only_its_last_two_characters():
    from loyalty_moengage.api.access_log import redact_query

    assert redact_query("customer_phone=9876543210&customer_id=REL-1") == "customer_phone=********10&customer_id=REL-1"
    assert redact_query("mobile=%2B919876543210&email=a%40b.in") == "mobile=***********10&email=****in"


def test_a_reference_made_from_a_phone_keeps_only_its_last_two_digits():
    from loyalty_moengage.api.access_log import redact_query

    assert redact_query("customer_id=PH-919876543210&x=1") == "customer_id=PH-**********10&x=1"
    assert redact_query("uid=ph-%2B919876543210") == "uid=ph-***********10"
    assert redact_query("customer_id=REL-0001") == "customer_id=REL-0001"    # an ordinary reference is kept


def _asgi_get(app, path: str, query: str) -> tuple[int, dict, dict]:
    """One in-process GET: (status, headers, the caller's scope after the app returned), as
    Airflow's ``HttpAccessLogMiddleware`` sees that scope when it writes its line."""
    import asyncio

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
             "root_path": "", "headers": [(b"host", b"api")], "client": ("127.0.0.1", 1), "server": ("api", 80)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), scope


REDACTED = b"api_key=***&store_key=***&customer_phone=********10"


@pytest.mark.parametrize("path", ["/api/loyalty/points", "/api/loyalty/points/"])
def test_the_callers_scope_is_redacted_with_or_without_a_trailing_slash(keys_env, path):
    from urllib.parse import urlencode

    from loyalty_moengage.api.app import create_app
    from loyalty_moengage.api.settings import Settings

    app = create_app(Settings.from_env(dsn="postgresql://nobody@127.0.0.1:1/none"))
    query = urlencode({"api_key": "wrong-key-0123456789", "store_key": STORE_KEY, "customer_phone": "9876543210"})
    status, _, scope = _asgi_get(app, path, query)
    assert status == 401
    assert scope["query_string"] == REDACTED and scope["path"] == "/api/loyalty/points"


def test_a_request_shed_by_admission_is_redacted_too(keys_env):
    from urllib.parse import urlencode

    from loyalty_moengage.api.admission import Admission
    from loyalty_moengage.api.app import create_app
    from loyalty_moengage.api.settings import Settings

    app = create_app(Settings.from_env(dsn="postgresql://nobody@127.0.0.1:1/none", max_in_flight=1))
    query = urlencode({"api_key": API_KEY, "store_key": STORE_KEY, "customer_phone": "9876543210"})
    _asgi_get(app, "/nowhere", "")                     # builds the middleware stack
    layer = app.middleware_stack
    while not isinstance(layer, Admission):
        layer = layer.app
    layer.reads.in_flight = 1                          # the read budget is full
    status, headers, scope = _asgi_get(app, "/api/loyalty/points", query)
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert scope["query_string"] == REDACTED
