"""Fixtures for the API tests: a small program in a fresh database, keys in env-var Airflow
connections, and the app served by a real uvicorn on a free loopback port in a thread."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from contextlib import contextmanager
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

API_KEY = "demo-api-key-0123456789abcdef"
STORE_KEY = "demo-store-key-A123-0123456789"
STORE_KEY_B = "demo-store-key-B456-0123456789"
OTHER_API_KEY = "other-api-key-0123456789abcdef"
# Write keys (the connector webhook); API_KEY and OTHER_API_KEY, the passwords, are read keys.
WRITE_KEY = "demo-write-key-0123456789abcdef"
OTHER_WRITE_KEY = "other-write-key-0123456789abcdef"
OTHER_STORE_KEY = "other-store-key-Z999-012345678"
PHONE_1 = "+919876543210"
PHONE_2 = "+919800000002"


def today_ist() -> dt.date:
    return dt.datetime.now(ZoneInfo("Asia/Kolkata")).date()


def seed(dsn: str) -> dt.date:
    """Two programs; member REL-0001 has lots that exercise every points rule. Returns today."""
    today = today_ist()
    d = lambda n: today + dt.timedelta(days=n)  # noqa: E731
    with psycopg.connect(dsn, autocommit=False) as conn:
        for pid, name in (("demo", "Demo"), ("other", "Other")):
            conn.execute("INSERT INTO loyalty.programs (program_id, name, time_zone, earn_rate, currency, "
                         "default_country, points_validity_days) VALUES (%s, %s, 'Asia/Kolkata', 0.1, 'INR', 'IN', 365)",
                         (pid, name))
            for rank, tier in enumerate(("Silver", "Gold", "Platinum"), start=1):
                conn.execute("INSERT INTO loyalty.tiers VALUES (%s, %s, %s)", (pid, tier, rank))
        for pid, store in (("demo", "A123"), ("demo", "B456"), ("other", "Z999")):
            conn.execute("INSERT INTO loyalty.stores VALUES (%s, %s, %s)", (pid, store, f"Store {store}"))
        m1 = conn.execute("INSERT INTO loyalty.members (program_id, relation_reference, phone, name, tier, status, "
                          "enrolled_at) VALUES ('demo', 'REL-0001', %s, 'Asha', 'Gold', 'active', now() - interval '90 days') "
                          "RETURNING member_id", (PHONE_1,)).fetchone()[0]
        conn.execute("INSERT INTO loyalty.members (program_id, relation_reference, phone, tier, status, enrolled_at) "
                     "VALUES ('demo', 'REL-0002', %s, 'Silver', 'inactive', now())", (PHONE_2,))
        # A member of the other program with the same phone: must never leak across programs.
        conn.execute("INSERT INTO loyalty.members (program_id, relation_reference, phone, tier, status, enrolled_at) "
                     "VALUES ('other', 'OTH-1', %s, 'Platinum', 'active', now())", (PHONE_1,))

        def earn(points: int, expires: dt.date) -> int:
            return conn.execute(
                "INSERT INTO loyalty.points_ledger (program_id, member_id, entry_type, points, earning_type, "
                "expires_on, occurred_at, recorded_at) VALUES ('demo', %s, 'earn', %s, 'manual_bonus', %s, "
                "now() - interval '30 days', now() - interval '30 days') RETURNING entry_id",
                (m1, points, expires)).fetchone()[0]

        def debit(kind: str, points: int, lot: int, redemption: str | None = None) -> None:
            conn.execute("INSERT INTO loyalty.points_ledger (program_id, member_id, entry_type, points, "
                         "redemption_id, lot_entry_id, occurred_at, recorded_at) "
                         "VALUES ('demo', %s, %s, %s, %s, %s, now(), now())", (m1, kind, points, redemption, lot))

        conn.execute("INSERT INTO loyalty.redemptions (redemption_id, program_id, member_id, points, item_sku, "
                     "item_name, redeemed_at, recorded_at) VALUES ('R1', 'demo', %s, 80, 'SKU', 'Mug', now(), now())",
                     (m1,))
        lot0 = earn(30, d(5))      # fully redeemed: counts 0 and is not the next expiry
        debit("redeem", -30, lot0, "R1")
        earn(100, d(10))           # 30d
        lot2 = earn(200, d(45))    # 60d, 50 redeemed -> 150 remaining
        debit("redeem", -50, lot2, "R1")
        earn(300, d(80))           # 90d
        earn(400, d(200))          # beyond 90d
        lot5 = earn(50, d(-1))     # already expired
        debit("expire", -50, lot5)
        earn(70, today)            # expires today: not "expiring" (window is (today, today+N])
        conn.commit()
    return today


@pytest.fixture
def keys_env(monkeypatch):
    """API keys as Airflow connections in env vars, the way a deployment's secrets backend would hold them."""
    monkeypatch.setenv("LOYALTY_API_PROGRAMS", "demo,other")
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_DEMO", json.dumps(
        {"conn_type": "generic", "password": API_KEY, "extra": {
            "write_keys": [WRITE_KEY], "store_keys": {"A123": STORE_KEY, "B456": STORE_KEY_B}}}))
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_OTHER", json.dumps(
        {"conn_type": "generic", "password": OTHER_API_KEY, "extra": {
            "write_keys": [OTHER_WRITE_KEY], "store_keys": {"Z999": OTHER_STORE_KEY}}}))


@pytest.fixture
def seeded_db(loyalty_db: str) -> str:
    seed(loyalty_db)
    return loyalty_db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app, *, port: int | None = None):
    """Run ``app`` on a real uvicorn (lifespan and all) in a thread; yields its base URL."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                            lifespan="on", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def make_server(keys_env):
    """Factory: serve a new app on ``dsn`` with settings overrides; stops them all at the end."""
    from loyalty_moengage.api.app import create_app
    from loyalty_moengage.api.settings import Settings

    stack = []

    def start(dsn: str, **overrides):
        settings = Settings.from_env(dsn=dsn, pool_min=1, pool_max=8, **overrides)
        app = create_app(settings)
        cm = serve(app)
        url = cm.__enter__()
        stack.append(cm)
        return httpx.Client(base_url=url, timeout=10.0), app

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def api(make_server, seeded_db):
    client, _app = make_server(seeded_db)
    with client:
        yield client


def counts(dsn: str) -> dict[str, int]:
    tables = ("loyalty.members", "loyalty.transactions", "loyalty.points_ledger", "loyalty_api.idempotency")
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
