"""The API keeps answering when the world around it misbehaves: the database drops its
connections, clients stall mid-upload, a 503 always says when to retry, and ``--log-level``
reaches the spawned uvicorn workers. Real uvicorn, real Postgres."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi import APIRouter
from starlette.requests import Request

from loyalty_moengage.api.admission import Admission
from loyalty_moengage.api.app import create_app
from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.responses import json_response
from loyalty_moengage.api.settings import Settings
from loyalty_moengage.api.state import api_state
from tests.loyalty_moengage.api.conftest import API_KEY, STORE_KEY, WRITE_KEY, free_port, serve

POINTS = "/api/loyalty/points"
ADD = "/api/customers/add"
READ = {"api_key": API_KEY, "store_key": STORE_KEY, "customer_phone": "+919876543210"}
ROOT = Path(__file__).resolve().parents[3]


def burst(base_url: str, n: int, method: str = "GET", path: str = POINTS, **kwargs) -> list[httpx.Response]:
    """``n`` requests at once, the way MoEngage renders a campaign."""
    async def go() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0, limits=limits) as client:
            return await asyncio.gather(*(client.request(method, path, **kwargs) for _ in range(n)))
    return asyncio.run(go())


def drop_api_connections(dsn: str) -> int:
    """What a Postgres restart, failover or proxy idle timeout does to the API: its backends die
    (this database's only, other test sessions share the server). Returns once they are gone."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'loyalty_moengage_api' "
            "AND datname = current_database()").fetchall()]
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone()[0]:
            assert time.monotonic() < deadline, "terminated backends did not exit"
            time.sleep(0.01)
    return len(pids)


# ---- 1. dropped database connections ----------------------------------------------------------

def test_no_request_fails_after_the_database_drops_every_connection(make_server, seeded_db):
    client, _app = make_server(seeded_db)
    url = str(client.base_url)
    assert {r.status_code for r in burst(url, 40, params=READ)} == {200}     # several pooled connections
    assert drop_api_connections(seeded_db) >= 2
    after = [client.get(POINTS, params=READ) for _ in range(3)] + burst(url, 40, params=READ)
    assert [r.status_code for r in after] == [200] * len(after), [r.text for r in after if r.status_code != 200]

    burst(url, 20, params=READ)
    assert drop_api_connections(seeded_db) >= 2
    body = {"customer_details": {"number": "9123456780", "store_id": "A123", "amount": "100"}}
    r = client.post(ADD, params={"api_key": WRITE_KEY}, json=body, headers={"Idempotency-Key": "stays-up-1"})
    assert r.status_code == 200, r.text


def retry_app(dsn: str, work) -> object:
    """The real app plus ``/test/run``, which runs ``work`` through ``ApiState.run``."""
    app = create_app(Settings.from_env(dsn=dsn, pool_min=1, pool_max=2))
    router = APIRouter()

    @router.get("/test/run")
    async def run(request: Request):
        return json_response({"value": await api_state(request).run(work)})

    app.include_router(router)
    return app


def test_work_whose_connection_dies_under_it_runs_once_more_on_a_fresh_one(keys_env, loyalty_db):
    with psycopg.connect(loyalty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.retried (n int)")
    attempts = []

    async def work(conn):
        """A write in one transaction whose backend dies before COMMIT on the first attempt."""
        attempts.append(1)
        async with conn.transaction():
            await conn.execute("INSERT INTO public.retried VALUES (1)")
            if len(attempts) == 1:
                await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        cur = await conn.execute("SELECT count(*) FROM public.retried")
        return (await cur.fetchone())[0]

    with serve(retry_app(loyalty_db, work)) as url:
        r = httpx.get(url + "/test/run", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"value": 1} and len(attempts) == 2     # the first attempt rolled back


def test_a_statement_timeout_is_not_retried_and_a_third_loss_is_a_503(keys_env, loyalty_db):
    attempts = []

    async def slow(conn):
        attempts.append("slow")
        async with conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = 50")
            await conn.execute("SELECT pg_sleep(2)")

    async def always_dies(conn):
        attempts.append("dies")
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with serve(retry_app(loyalty_db, slow)) as url:
        r = httpx.get(url + "/test/run", timeout=10)
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and attempts == ["slow"]
    assert "busy" in r.json()["error"]["message"]
    with serve(retry_app(loyalty_db, always_dies)) as url:
        r = httpx.get(url + "/test/run", timeout=10)
    assert r.status_code == 503 and r.headers["retry-after"] == "5" and attempts == ["slow", "dies", "dies", "dies"]


# ---- 2. stalled uploads ------------------------------------------------------------------------

def stalled_post(port: int) -> socket.socket:
    """A webhook call with a valid key that sends its headers and 20 of 1,000 body bytes, then nothing."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(8)
    s.sendall((f"POST {ADD}?api_key={WRITE_KEY} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
               'Content-Length: 1000\r\n\r\n{"customer_details": ').encode())
    return s


def response_head(s: socket.socket) -> tuple[int, dict[str, str]]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(":", 1) for line in lines[1:] if ":" in line)
    return int(lines[0].split()[1]), {k: v.strip() for k, v in headers.items()}


def admission_of(app) -> Admission:
    layer = app.middleware_stack
    while not isinstance(layer, Admission):
        layer = layer.app
    return layer


def test_stalled_uploads_get_408_and_never_starve_the_content_api(make_server, seeded_db):
    client, app = make_server(seeded_db, body_timeout_s=2.0, max_in_flight=50, max_in_flight_writes=20)
    port = client.base_url.port
    assert client.get(POINTS, params=READ).status_code == 200
    held = [stalled_post(port) for _ in range(20)]
    started = time.monotonic()
    deadline = started + 5
    while admission_of(app).in_flight < 20:
        assert time.monotonic() < deadline, "the stalled uploads were not admitted"
        time.sleep(0.01)
    refused = []
    for _ in range(30):
        t0 = time.monotonic()
        s = stalled_post(port)
        refused.append((*response_head(s), time.monotonic() - t0))
        s.close()
    reads = burst(str(client.base_url), 50, params=READ)          # 50 reads while 20 writes stall
    assert time.monotonic() - started < 1.8, "reads waited for the stalled writes"
    assert [r.status_code for r in reads] == [200] * 50
    assert all(status == 503 and h["retry-after"] == "1" and took < 0.5 for status, h, took in refused), refused
    with ThreadPoolExecutor(20) as pool:
        timed_out = list(pool.map(response_head, held))
    waited = time.monotonic() - started
    for s in held:
        s.close()
    assert [status for status, _ in timed_out] == [408] * 20
    assert 1.9 < waited < 5, waited
    assert admission_of(app).in_flight == 0 and client.get(POINTS, params=READ).status_code == 200


# ---- 3. every 503 says when to retry -----------------------------------------------------------

def test_a_program_with_keys_but_no_row_is_a_403_naming_the_row(make_server, loyalty_db):
    client, _app = make_server(loyalty_db)               # schema, but no program rows at all
    r = client.get(POINTS, params=READ)
    assert r.status_code == 403, r.text
    assert "loyalty.programs" in r.json()["error"]["message"] and "demo" in r.json()["error"]["message"]


def test_every_503_carries_retry_after(keys_env, seeded_db):
    app = create_app(Settings.from_env(dsn=seeded_db, pool_min=1, pool_max=2))
    router = APIRouter()

    @router.get("/test/bare-503")
    async def bare():
        raise ApiError(503, None, "a 503 that forgot its Retry-After")

    @router.get("/test/own-retry-after")
    async def own():
        raise ApiError(503, None, "a 503 with its own", headers={"Retry-After": "30"})

    app.include_router(router)
    with serve(app) as url:
        bare_503 = httpx.get(url + "/test/bare-503")
        own_503 = httpx.get(url + "/test/own-retry-after")
    assert bare_503.status_code == 503 and bare_503.headers.get_list("retry-after") == ["5"]
    assert own_503.status_code == 503 and own_503.headers.get_list("retry-after") == ["30"]


# ---- 4. --log-level reaches the workers --------------------------------------------------------

def test_log_level_debug_reaches_every_spawned_worker(keys_env, seeded_db, tmp_path):
    port = free_port()
    env = {**os.environ, "LOYALTY_API_DSN": seeded_db, "PYTHONUNBUFFERED": "1"}
    env.pop("LOYALTY_API_LOG_LEVEL", None)
    out = (tmp_path / "server.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "loyalty_moengage.api", "--log-level", "debug", "--port", str(port),
                             "--workers", "2"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}{POINTS}", params=READ, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        while time.monotonic() < deadline and (tmp_path / "server.log").read_text().count("pool opened") < 2:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        out.close()
    lines = [line for line in (tmp_path / "server.log").read_text().splitlines()
             if "DEBUG" in line and "loyalty database pool opened" in line]
    assert len({line.rsplit("process ", 1)[-1] for line in lines}) == 2, (tmp_path / "server.log").read_text()


@pytest.mark.parametrize("level", ["warning", "DEBUG"])
def test_the_log_level_setting_sets_the_loyalty_logger(monkeypatch, level):
    import logging

    logger = logging.getLogger("loyalty_moengage")
    before = logger.level
    monkeypatch.setenv("LOYALTY_API_LOG_LEVEL", level)
    try:
        create_app(Settings.from_env(dsn="postgresql://unused"))
        assert logger.level == getattr(logging, level.upper())
    finally:
        logger.setLevel(before)
