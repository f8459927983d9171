"""GET /api/loyalty/points over real HTTP (uvicorn) against a real Postgres."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.loyalty_moengage.api.conftest import (
    API_KEY, OTHER_API_KEY, OTHER_STORE_KEY, STORE_KEY, STORE_KEY_B, today_ist,
)

PATH = "/api/loyalty/points"


def get(api, **params):
    params = {"api_key": API_KEY, "store_key": STORE_KEY, **params}
    return api.get(PATH, params={k: v for k, v in params.items() if v is not None},
                   headers={"Accept": "application/json"})


@pytest.mark.parametrize("phone", ["+91 98765 43210", "09876543210", "9876543210", "+919876543210",
                                   "919876543210", "0091-98765-43210", "(98765) 43210"])
def test_points_by_phone_in_any_format(api, phone):
    r = get(api, customer_phone=phone)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    today = today_ist()
    assert r.json() == {
        "member": True,
        "customer_id": "REL-0001",
        "points_available": 1020,
        "tier": "Gold",
        "status": "active",
        "points_expiring_30d": 100,
        "points_expiring_60d": 250,
        "points_expiring_90d": 550,
        "next_expiry_date": (today + dt.timedelta(days=10)).isoformat(),
        "as_of_date": today.isoformat(),
    }


def test_plus_sent_unencoded_still_matches(api):
    # A '+' left unencoded in a query string arrives as a space.
    r = api.get(f"{PATH}?api_key={API_KEY}&store_key={STORE_KEY}&customer_phone=+91%2098765%2043210")
    assert r.status_code == 200, r.text
    assert r.json()["customer_id"] == "REL-0001"


def test_points_by_customer_id_and_other_store_key(api):
    r = get(api, customer_id="REL-0001", store_key=STORE_KEY_B)
    assert r.status_code == 200
    assert r.json()["points_available"] == 1020


def test_member_without_ledger_has_no_nulls(api):
    r = get(api, customer_phone="9800000002")
    assert r.status_code == 200
    body = r.json()
    assert body["points_available"] == 0 and body["status"] == "inactive" and body["tier"] == "Silver"
    assert body["next_expiry_date"] == ""
    assert None not in body.values()


def test_programs_are_isolated(api):
    r = api.get(PATH, params={"api_key": OTHER_API_KEY, "store_key": OTHER_STORE_KEY, "customer_phone": "9876543210"})
    assert r.status_code == 200
    assert r.json()["customer_id"] == "OTH-1" and r.json()["points_available"] == 0
    # other program's customer id is not visible with demo's keys
    assert get(api, customer_id="OTH-1").status_code == 404


def test_unknown_member_is_404_json(api):
    r = get(api, customer_phone="+91 91234 56789")
    assert r.status_code == 404
    assert r.json() == {"error": {"field": "customer_phone", "message": "no member with this identifier in the program"}}
    r = get(api, customer_id="REL-9999")
    assert r.status_code == 404 and r.json()["error"]["field"] == "customer_id"


@pytest.mark.parametrize("params, field", [
    ({"customer_phone": "12"}, "customer_phone"),
    ({"customer_phone": "abcdefghij"}, "customer_phone"),
    ({"customer_phone": "98765' OR '1'='1"}, "customer_phone"),
    ({"customer_phone": "9876543210; DROP TABLE loyalty.members"}, "customer_phone"),
    ({"customer_id": "x" * 200}, "customer_id"),
    ({"customer_id": "{{7*7}}"}, "customer_id"),
    ({}, "customer_phone"),
    ({"customer_phone": "  "}, "customer_phone"),
    ({"customer_phone": "9876543210", "customer_id": "REL-0001"}, "customer_id"),
])
def test_bad_input_is_422_naming_the_field(api, params, field):
    r = get(api, **params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


@pytest.mark.parametrize("customer_id", ["REL-0001' OR '1'='1", "user #7", "a/b", "ü-ß"])
def test_any_printable_customer_id_is_looked_up_as_it_is(api, customer_id):
    """MoEngage allows any string as customer_id: it is a parameter, never SQL, and matches nothing here."""
    r = get(api, customer_id=customer_id)
    assert r.status_code == 404 and r.json()["error"]["field"] == "customer_id"


@pytest.mark.parametrize("params, field", [
    ({"api_key": None}, "api_key"),
    ({"api_key": ""}, "api_key"),
    ({"api_key": API_KEY[:-1] + "X"}, "api_key"),
    ({"api_key": API_KEY + "' OR '1'='1"}, "api_key"),
    ({"store_key": None}, "store_key"),
    ({"store_key": STORE_KEY[:-1] + "X"}, "store_key"),
    ({"store_key": OTHER_STORE_KEY}, "store_key"),           # a store key of another program
    ({"api_key": OTHER_API_KEY}, "store_key"),               # demo's store key with other's api key
])
def test_wrong_or_missing_keys_are_401(api, params, field):
    r = get(api, customer_phone="9876543210", **params)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["field"] == field
    assert API_KEY not in r.text and STORE_KEY not in r.text


def test_wrong_key_costs_no_database_work(make_server):
    # The database does not even exist: a wrong key must still be a clean 401 (no lookup done),
    # while a right key reaches the database and gets 503.
    client, _ = make_server("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    with client:
        r = client.get(PATH, params={"api_key": "wrong-key-0123456789", "store_key": STORE_KEY,
                                     "customer_phone": "9876543210"})
        assert r.status_code == 401
        r = client.get(PATH, params={"api_key": API_KEY, "store_key": STORE_KEY, "customer_phone": "9876543210"})
        assert r.status_code == 503 and r.json()["error"]["message"].startswith("loyalty database unavailable")
        assert r.headers["retry-after"] == "5"        # a restart or failover: try again shortly


def test_a_trailing_slash_is_served_not_redirected_with_the_keys_in_location(api):
    r = api.get(PATH + "/", params={"api_key": API_KEY, "store_key": STORE_KEY, "customer_phone": "9876543210"},
                follow_redirects=False)
    assert r.status_code == 200 and "location" not in r.headers
    assert API_KEY not in str(r.headers) and STORE_KEY not in str(r.headers)


def test_no_unauthenticated_routes(api):
    for path in ("/docs", "/openapi.json", "/redoc", "/"):
        r = api.get(path)
        assert r.status_code == 404 and "error" in r.json()
    assert api.post(PATH).status_code == 405


def test_server_timing_header(api):
    r = get(api, customer_phone="9876543210")
    assert r.headers["server-timing"].startswith("app;dur=")
    assert r.headers["cache-control"] == "no-store"
