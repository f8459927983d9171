"""Read and write keys over real HTTP (uvicorn, real Postgres): a Content API key cannot enrol or
credit points, a connector key cannot read, keys travel in headers, rotate, and are rate limited."""

from __future__ import annotations

import json

import pytest

from tests.loyalty_moengage.api.conftest import (
    API_KEY, OTHER_API_KEY, OTHER_STORE_KEY, STORE_KEY, STORE_KEY_B, WRITE_KEY, counts,
)

POINTS = "/api/loyalty/points"
ADD = "/api/customers/add"
READ_KEY_2 = "demo-read-key-2-0123456789abcdef"
WRITE_KEY_2 = "demo-write-key-2-0123456789abcdef"
BODY = {"customer_details": {"number": "9123456780", "store_id": "A123", "amount": "100"}}


def add(client, *, params=None, headers=None, body=BODY):
    return client.post(ADD, params=params, content=json.dumps(body).encode(),
                       headers={"Content-Type": "application/json", **(headers or {})})


def points(client, *, params=None, headers=None):
    return client.get(POINTS, params={"customer_id": "REL-0001", **(params or {})}, headers=headers)


@pytest.fixture
def rotating(monkeypatch, keys_env):
    """demo mid-rotation: two read keys (password + read_keys) and two write keys."""
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_DEMO", json.dumps({
        "conn_type": "generic", "password": API_KEY, "extra": {
            "read_keys": [READ_KEY_2], "write_keys": [WRITE_KEY, WRITE_KEY_2],
            "store_keys": {"A123": STORE_KEY, "B456": STORE_KEY_B}}}))


@pytest.mark.parametrize("how", ["query", "header", "bearer"])
def test_a_read_key_cannot_enrol_or_credit(api, seeded_db, how):
    before = counts(seeded_db)
    sent = {"query": {"params": {"api_key": API_KEY}}, "header": {"headers": {"X-API-Key": API_KEY}},
            "bearer": {"headers": {"Authorization": f"Bearer {API_KEY}"}}}[how]
    r = add(api, **sent)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["field"] == "api_key"
    assert "can only read" in r.json()["error"]["message"] and "write key" in r.json()["error"]["message"]
    assert API_KEY not in r.text
    assert counts(seeded_db) == before


def test_a_write_key_cannot_read_points(api):
    for sent in ({"params": {"api_key": WRITE_KEY, "store_key": STORE_KEY}},
                 {"headers": {"X-API-Key": WRITE_KEY, "X-Store-Key": STORE_KEY}}):
        r = points(api, **sent)
        assert r.status_code == 403 and r.json()["error"]["field"] == "api_key"
        assert "can only write" in r.json()["error"]["message"] and "points_available" not in r.text


def test_keys_in_headers_read_and_write(api, seeded_db):
    for headers in ({"X-API-Key": API_KEY, "X-Store-Key": STORE_KEY},
                    {"Authorization": f"Bearer {API_KEY}", "X-Store-Key": STORE_KEY},
                    {"authorization": f"bearer  {API_KEY}", "x-store-key": STORE_KEY_B}):
        r = points(api, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["points_available"] == 1020
    before = counts(seeded_db)
    r = add(api, headers={"X-API-Key": WRITE_KEY})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["points_credited"] == 10
    assert counts(seeded_db)["loyalty.points_ledger"] == before["loyalty.points_ledger"] + 1
    r = add(api, headers={"Authorization": f"Bearer {WRITE_KEY}", "Idempotency-Key": "bearer-1"})
    assert r.status_code == 200 and r.headers["idempotent-replayed"] == "false"


def test_a_header_wins_but_a_different_query_value_is_400(api, seeded_db):
    # the same key in both places is fine
    r = points(api, params={"api_key": API_KEY, "store_key": STORE_KEY},
               headers={"X-API-Key": API_KEY, "X-Store-Key": STORE_KEY})
    assert r.status_code == 200, r.text
    cases = [
        ({"api_key": "x" * 20, "store_key": STORE_KEY}, {"X-API-Key": API_KEY}, "api_key"),
        ({"store_key": STORE_KEY_B}, {"X-API-Key": API_KEY, "X-Store-Key": STORE_KEY}, "store_key"),
        ({"store_key": STORE_KEY}, {"X-API-Key": API_KEY, "Authorization": "Bearer " + "y" * 20}, "api_key"),
    ]
    for params, headers, field in cases:
        r = points(api, params=params, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["field"] == field and API_KEY not in r.text and STORE_KEY not in r.text
    before = counts(seeded_db)
    r = add(api, params={"api_key": API_KEY}, headers={"X-API-Key": WRITE_KEY})
    assert r.status_code == 400 and r.json()["error"]["field"] == "api_key"
    assert counts(seeded_db) == before


def test_unknown_keys_are_401_and_non_bearer_authorization_is_ignored(api):
    r = points(api, headers={"X-API-Key": "nope-nope-nope-nope", "X-Store-Key": STORE_KEY})
    assert r.status_code == 401 and r.json()["error"]["field"] == "api_key"
    r = points(api, headers={"X-API-Key": API_KEY, "X-Store-Key": "nope-nope-nope-nope"})
    assert r.status_code == 401 and r.json()["error"]["field"] == "store_key"
    r = points(api, params={"api_key": API_KEY, "store_key": STORE_KEY},
               headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert r.status_code == 200
    assert add(api, headers={"X-API-Key": "w" * 300}).status_code == 401


def test_two_read_keys_and_two_write_keys_are_valid_at_once(rotating, make_server, seeded_db):
    client, _ = make_server(seeded_db)
    with client:
        for key in (API_KEY, READ_KEY_2):
            assert points(client, headers={"X-API-Key": key, "X-Store-Key": STORE_KEY}).status_code == 200
            assert add(client, headers={"X-API-Key": key}).status_code == 403
        for i, key in enumerate((WRITE_KEY, WRITE_KEY_2)):
            r = add(client, headers={"X-API-Key": key, "Idempotency-Key": f"rotation-{i}"})
            assert r.status_code == 200, r.text
            assert points(client, headers={"X-API-Key": key, "X-Store-Key": STORE_KEY}).status_code == 403


def test_a_program_without_write_keys_answers_401_on_the_webhook(monkeypatch, make_server, seeded_db):
    # 'other' configured as before scopes: a password (read key) and store keys only
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_OTHER", json.dumps(
        {"conn_type": "generic", "password": OTHER_API_KEY, "extra": {"store_keys": {"Z999": OTHER_STORE_KEY}}}))
    client, _ = make_server(seeded_db)
    with client:
        before = counts(seeded_db)
        r = add(client, params={"api_key": OTHER_API_KEY}, body={"customer_details": {"number": "9123456780",
                                                                                      "store_id": "Z999"}})
        assert r.status_code == 401, r.text
        assert r.json()["error"]["field"] == "api_key"
        assert "no write key is configured for this program" in r.json()["error"]["message"]
        assert "write_keys" in r.json()["error"]["message"]
        assert counts(seeded_db) == before
        # its Content API key still reads
        r = client.get(POINTS, params={"api_key": OTHER_API_KEY, "store_key": OTHER_STORE_KEY, "customer_id": "OTH-1"})
        assert r.status_code == 200


def test_a_wrong_scope_costs_no_database_work(make_server):
    client, _ = make_server("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    with client:
        assert add(client, headers={"X-API-Key": API_KEY}).status_code == 403
        assert points(client, headers={"X-API-Key": WRITE_KEY, "X-Store-Key": STORE_KEY}).status_code == 403


def test_a_write_key_over_its_rate_gets_429_with_retry_after(make_server, seeded_db):
    client, _ = make_server(seeded_db, write_rate_per_key=2)      # burst: 4 requests
    with client:
        before = counts(seeded_db)
        # bodies refused after auth (no customer_details): the token is spent, nothing is written
        statuses, refused = [], None
        for _ in range(12):
            r = add(client, headers={"X-API-Key": WRITE_KEY}, body={"customers": {}})
            statuses.append(r.status_code)
            if r.status_code == 429:
                refused = r
                break
        assert not {401, 403, 429} & set(statuses[:4]) and refused is not None, statuses
        assert refused.json()["error"]["field"] == "api_key" and "rate limit" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        assert counts(seeded_db) == before
        # read keys have buckets (and a rate) of their own
        assert points(client, headers={"X-API-Key": API_KEY, "X-Store-Key": STORE_KEY}).status_code == 200


def test_a_read_key_over_its_rate_gets_429(rotating, make_server, seeded_db):
    client, _ = make_server(seeded_db, read_rate_per_key=1)       # burst: 2 requests per key
    with client:
        codes = [points(client, headers={"X-API-Key": API_KEY, "X-Store-Key": STORE_KEY}).status_code
                 for _ in range(4)]
        assert codes[:2] == [200, 200] and 429 in codes[2:], codes
        # another read key of the same program: its own bucket
        assert points(client, headers={"X-API-Key": READ_KEY_2, "X-Store-Key": STORE_KEY}).status_code == 200
