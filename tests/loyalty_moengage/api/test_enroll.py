"""POST /api/customers/add: enrollment, accrual through the ledger, idempotency, bad input."""

from __future__ import annotations

import datetime as dt
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from tests.loyalty_moengage.api.conftest import (API_KEY, OTHER_API_KEY, OTHER_WRITE_KEY, PHONE_1, PHONE_2, WRITE_KEY,
                                               counts, today_ist)

PATH = "/api/customers/add"


def customer(**over):
    base = {"number": "+91 99887 76655", "email_id": "ravi@example.com", "name": "Ravi Kumar",
            "gender": "Male", "amount": "1234.50", "channel": "Website", "store_id": "A123", "admin_id": "123"}
    base.update(over)
    return base


def post(client, body, *, api_key=WRITE_KEY, headers=None, raw: bytes | None = None):
    content = raw if raw is not None else json.dumps(body).encode()
    return client.post(PATH, params={"api_key": api_key} if api_key is not None else None, content=content,
                       headers={"Content-Type": "application/json", "Accept": "application/json", **(headers or {})})


def test_new_customer_with_amount_enrolls_and_credits(api, seeded_db):
    r = post(api, {"customer_details": customer()})
    assert r.status_code == 200, r.text
    assert r.headers["idempotent-replayed"] == "false"
    body = r.json()
    assert body["status"] == "success"
    [res] = body["results"]
    assert res["customer_id"] == "PH-919988776655"
    assert res["member"] == "created" and res["tier"] == "Silver" and res["status"] == "active"
    assert res["points_credited"] == 123  # floor(1234.50 * 0.1)
    assert res["points_available"] == 123
    assert res["transaction_id"].startswith("MOE-")
    with psycopg.connect(seeded_db) as conn:
        m = conn.execute("SELECT member_id, phone, email, name, gender, tier, status, enrolled_at IS NOT NULL "
                         "FROM loyalty.members WHERE relation_reference = 'PH-919988776655'").fetchone()
        assert m[1:] == ("+919988776655", "ravi@example.com", "Ravi Kumar", "male", "Silver", "active", True)
        t = conn.execute("SELECT amount, currency, store_id, channel, occurred_at = recorded_at "
                         "FROM loyalty.transactions WHERE transaction_id = %s", (res["transaction_id"],)).fetchone()
        assert (str(t[0]), t[1], t[2], t[3], t[4]) == ("1234.50", "INR", "A123", "Website", True)
        lot = conn.execute("SELECT entry_type, points, earning_type, expires_on, lot_entry_id, "
                           "recorded_at > now() - interval '1 minute' FROM loyalty.points_ledger "
                           "WHERE transaction_id = %s", (res["transaction_id"],)).fetchone()
        assert lot == ("earn", 123, "accrual", today_ist() + dt.timedelta(days=365), None, True)
    # the live lookup sees the new member and points at once
    r = api.get("/api/loyalty/points", params={"api_key": API_KEY, "store_key": "demo-store-key-A123-0123456789",
                                               "customer_phone": "09988776655"})
    assert r.json()["points_available"] == 123 and r.json()["points_expiring_90d"] == 0


def test_new_points_are_what_the_nightly_earned_query_reads(api, seeded_db):
    from pathlib import Path

    r = post(api, {"customer_details": customer(amount=500)})
    txn = r.json()["results"][0]["transaction_id"]
    sql = (Path(__file__).resolve().parents[3] / "include/sql/events/points_earned.sql").read_text()
    now = dt.datetime.now(dt.timezone.utc)
    # client-side binding: the file names some parameters only in its comments
    with psycopg.connect(seeded_db, cursor_factory=psycopg.ClientCursor) as conn:
        rows = conn.execute(sql, {"program_id": "demo", "window_start": now - dt.timedelta(hours=1),
                                  "window_end": now + dt.timedelta(hours=1), "member_lo": 0, "member_hi": 10**12,
                                  "night": today_ist(), "time_zone": "Asia/Kolkata"}).fetchall()
    mine = [row for row in rows if row[6] == txn]
    assert len(mine) == 1 and mine[0][2] == "PH-919988776655" and mine[0][4] == 50 and mine[0][5] == "accrual"


def test_existing_member_matched_by_phone_is_updated(api, seeded_db):
    r = post(api, {"customer_details": customer(number="098765 43210", name="Asha Rao", email_id="", gender="",
                                                amount=99.99)})
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    assert res["customer_id"] == "REL-0001" and res["member"] == "updated" and res["tier"] == "Gold"
    assert res["points_credited"] == 9 and res["points_available"] == 1029
    with psycopg.connect(seeded_db) as conn:  # the platform's name wins (api.profile_updates: fill_blanks)
        assert conn.execute("SELECT name, email FROM loyalty.members WHERE relation_reference = 'REL-0001'"
                            ).fetchone() == ("Asha", None)


def test_inactive_member_gets_transaction_but_no_points(api, seeded_db):
    r = post(api, {"customer_details": customer(number="9800000002", amount="1000")})
    [res] = r.json()["results"]
    assert res["status"] == "inactive" and res["points_credited"] == 0 and res["transaction_id"]


def test_without_amount_enrolls_only_and_list_is_accepted(api, seeded_db):
    before = counts(seeded_db)
    r = post(api, {"customer_details": [customer(amount=""), customer(number="9123456780", amount=None, name="B")]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["points_credited"] for x in results] == [0, 0] and [x["transaction_id"] for x in results] == ["", ""]
    after = counts(seeded_db)
    assert after["loyalty.members"] == before["loyalty.members"] + 2
    assert after["loyalty.transactions"] == before["loyalty.transactions"]


def test_duplicate_delivery_enrolls_and_credits_once(api, seeded_db):
    body = {"customer_details": customer()}
    first = post(api, body)
    before = counts(seeded_db)
    # same content, different key order and spacing: still the same request
    second = post(api, None, raw=json.dumps(dict(reversed(list(body.items()))), indent=2).encode())
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert counts(seeded_db) == before


def test_idempotency_key_header(api, seeded_db):
    h = {"Idempotency-Key": "evt-42"}
    first = post(api, {"customer_details": customer()}, headers=h)
    again = post(api, {"customer_details": customer()}, headers=h)
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    # same key, different body: refused, nothing written
    before = counts(seeded_db)
    clash = post(api, {"customer_details": customer(amount="1")}, headers=h)
    assert clash.status_code == 422 and clash.json()["error"]["field"] == "Idempotency-Key"
    # a new key with an identical body is a new purchase
    other = post(api, {"customer_details": customer()}, headers={"Idempotency-Key": "evt-43"})
    assert other.status_code == 200 and other.json()["results"][0]["points_available"] == 246
    assert counts(seeded_db)["loyalty.transactions"] == before["loyalty.transactions"] + 1
    spaced = post(api, {"customer_details": customer()}, headers={"Idempotency-Key": "evt 44"})
    assert spaced.status_code == 200 and spaced.headers["idempotent-replayed"] == "false"
    bad = post(api, {"customer_details": customer()}, headers={"Idempotency-Key": "x" * 256})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "Idempotency-Key"


def test_concurrent_identical_deliveries(api, seeded_db):
    body = json.dumps({"customer_details": [customer(), customer(number="9123456780", amount="10")]}).encode()
    url = str(api.base_url) + PATH
    barrier = threading.Barrier(8)

    def deliver(_):
        with httpx.Client(timeout=20) as c:
            barrier.wait()
            return c.post(url, params={"api_key": WRITE_KEY}, content=body,
                          headers={"Content-Type": "application/json"})

    before = counts(seeded_db)
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(deliver, range(8)))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    assert len({r.text for r in responses}) == 1
    assert sorted(r.headers["idempotent-replayed"] for r in responses) == ["false"] + ["true"] * 7
    after = counts(seeded_db)
    assert after["loyalty.members"] == before["loyalty.members"] + 2
    assert after["loyalty.transactions"] == before["loyalty.transactions"] + 2
    assert after["loyalty.points_ledger"] == before["loyalty.points_ledger"] + 2
    assert after["loyalty_api.idempotency"] == before["loyalty_api.idempotency"] + 1


def test_duplicate_after_the_window_counts_again(make_server, seeded_db):
    client, _ = make_server(seeded_db, retry_window_s=60)
    with client:
        body = {"customer_details": customer()}
        assert post(client, body).json()["results"][0]["points_available"] == 123
        with psycopg.connect(seeded_db) as conn:
            conn.execute("UPDATE loyalty_api.idempotency SET created_at = now() - interval '2 minutes'")
        r = post(client, body)
        assert r.headers["idempotent-replayed"] == "false"
        assert r.json()["results"][0]["points_available"] == 246


def _bad(field, message_part=None, status=422, **over):
    return pytest.param({"customer_details": customer(**over)}, None, status, field,
                        id=f"{field}-{list(over.values())[0]!r}"[:60])


BAD_INPUTS = [
    pytest.param(None, b"{not json", 400, "body", id="malformed-json"),
    pytest.param(None, b"", 400, "body", id="empty-body"),
    pytest.param(None, b"[1, 2]", 422, "body", id="not-an-object"),
    pytest.param({"customers": {}}, None, 422, "customer_details", id="missing-customer_details"),
    pytest.param({"customer_details": "x"}, None, 422, "customer_details", id="customer_details-string"),
    pytest.param({"customer_details": []}, None, 422, "customer_details", id="customer_details-empty"),
    pytest.param({"customer_details": [customer()] * 101}, None, 422, "customer_details", id="too-many"),
    pytest.param({"customer_details": customer(number=None)}, None, 422, "customer_details.number", id="missing-number"),
    pytest.param({"customer_details": {k: v for k, v in customer().items() if k != "store_id"}}, None, 422,
                 "customer_details.store_id", id="missing-store"),
    _bad("customer_details.store_id", store_id="NOPE"),
    _bad("customer_details.store_id", store_id="Z999"),  # another program's store
    _bad("customer_details.store_id", store_id="A123' OR '1'='1"),
    _bad("customer_details.number", number="12345"),
    _bad("customer_details.number", number="call me"),
    _bad("customer_details.number", number="9876543210' OR 1=1 --"),
    _bad("customer_details.number", number={"$ne": 1}),
    pytest.param({"customer_details": [customer(), customer(number="9123456780", store_id="NOPE")]}, None, 422,
                 "customer_details[1].store_id", id="list-second-unknown-store"),
    pytest.param({"customer_details": [customer(), customer(number="12")]}, None, 422,
                 "customer_details[1].number", id="list-second-bad-phone"),
]


def _odd(field, **over):
    return pytest.param(over, field, id=f"{field}-{list(over.values())[0]!r}"[:60])


# An odd optional field is left out and reported; the member is still enrolled (and credited
# when the amount is readable). Issue 31: one such field used to reject the enrolment and its purchase.
ODD_FIELDS = [
    *[_odd("amount", amount=v) for v in ("12abc", "-5", -5, "1000000.01", 1e12, "NaN", "1e5", True,
                                         "1; DROP TABLE loyalty.members")],
    _odd("email_id", email_id="not-an-email"),
    _odd("email_id", email_id="a@b.com'; DROP TABLE x;--"),
    _odd("name", name="Robert'); DROP TABLE loyalty.members;--"),
    _odd("name", name="{{ 7*7 }}"),
    _odd("name", name="<script>alert(1)</script>"),
    _odd("name", name="x" * 201),
    _odd("gender", gender="' OR 1=1"),
    _odd("channel", channel="Web'; --"),
    _odd("admin_id", admin_id="1 OR 1=1"),
    *[_odd("customer_id", customer_id=v) for v in (
        "unknown", "Guest", "NULL", "0", "1", "True", "false", "User_Attribute_Unique_ID", "na", "N/A",
        "dummy_seller_code", "user_id", "ID", "customer_id", "uid", "UserId", "None", "-2", "-1", "2", " null ",
        "x" * 129, "{{UserAttribute['ID']}}", True, ["u-1"])],
]


@pytest.mark.parametrize("over, field", ODD_FIELDS)
def test_an_odd_optional_field_is_left_out_and_reported_and_the_member_enrolled(api, seeded_db, over, field):
    before = counts(seeded_db)
    r = post(api, {"customer_details": [customer(**{**over, "amount": over.get("amount", "")}),
                                        customer(number="9123456780", amount="10")]})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert [p["field"] for p in first["ignored_fields"]] == [f"customer_details[0].{field}"]
    assert first["member"] == "created" and first["customer_id"] == "PH-919988776655"
    assert second["points_credited"] == 1 and second["ignored_fields"] == []
    assert counts(seeded_db)["loyalty.members"] == before["loyalty.members"] + 2
    assert "DROP" not in json.dumps(first["ignored_fields"])  # the value is never echoed


@pytest.mark.parametrize("body, raw, status, field", BAD_INPUTS)
def test_bad_input_is_4xx_naming_the_field_and_writes_nothing(api, seeded_db, body, raw, status, field):
    before = counts(seeded_db)
    r = post(api, body, raw=raw)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field
    assert counts(seeded_db) == before


def test_oversize_body_is_413_and_writes_nothing(api, seeded_db):
    before = counts(seeded_db)
    big = {"customer_details": customer(name="x"), "padding": "y" * 70_000}
    r = post(api, big)
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"
    # chunked upload without Content-Length is cut off as well
    r = api.post(PATH, params={"api_key": WRITE_KEY}, content=iter([b"{" + b" " * 40_000, b" " * 40_000 + b"}"]),
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert counts(seeded_db) == before


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "text/json", "application/jsonl", "application/ld+json", None])
def test_a_body_not_declared_json_is_415_and_writes_nothing(api, seeded_db, content_type):
    before = counts(seeded_db)
    body = json.dumps({"customer_details": customer()}).encode()  # valid JSON: only the declared type is wrong
    headers = {"Accept": "application/json", **({"Content-Type": content_type} if content_type else {})}
    r = api.post(PATH, params={"api_key": WRITE_KEY}, content=body, headers=headers)
    assert r.status_code == 415, r.text
    assert r.headers["content-type"] == "application/json"
    got = repr(content_type) if content_type else "no Content-Type"
    assert r.json() == {"error": {"field": "Content-Type", "message": f"must be application/json (got {got})"}}
    assert counts(seeded_db) == before
    # nothing of the refused request is remembered: the same body sent as JSON enrolls and credits
    r = api.post(PATH, params={"api_key": WRITE_KEY}, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.headers["idempotent-replayed"] == "false"
    assert r.json()["results"][0]["points_credited"] == 123


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_with_parameters_or_another_case_is_accepted(api, seeded_db, content_type):
    r = post(api, {"customer_details": customer()}, headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text


def test_a_wrong_key_is_401_before_the_content_type_is_looked_at(api, seeded_db):
    r = api.post(PATH, params={"api_key": "nope-nope-nope-nope"}, content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 401 and r.json()["error"]["field"] == "api_key"


@pytest.mark.parametrize("key", [None, "", "nope-nope-nope-nope", OTHER_API_KEY + "x"])
def test_wrong_or_missing_api_key_is_401_and_writes_nothing(api, seeded_db, key):
    before = counts(seeded_db)
    r = post(api, {"customer_details": customer()}, api_key=key)
    assert r.status_code == 401 and r.json()["error"]["field"] == "api_key"
    assert counts(seeded_db) == before


def test_other_programs_key_cannot_use_demo_store(api, seeded_db):
    r = post(api, {"customer_details": customer()}, api_key=OTHER_WRITE_KEY)
    assert r.status_code == 422 and r.json()["error"]["field"] == "customer_details.store_id"


def test_new_member_with_customer_id_uses_it_as_relation_reference(api, seeded_db):
    before = counts(seeded_db)
    r = post(api, {"customer_details": [customer(customer_id="  moe-user_42@x.com:+1.a  "),
                                        customer(number="9123456780", customer_id="", amount=None)]})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["customer_id"] == "moe-user_42@x.com:+1.a" and first["member"] == "created"
    assert first["points_credited"] == 123
    assert second["customer_id"] == "PH-919123456780"  # empty customer_id: the prefix rule
    with psycopg.connect(seeded_db) as conn:
        assert conn.execute("SELECT phone, tier FROM loyalty.members WHERE relation_reference = %s",
                            ("moe-user_42@x.com:+1.a",)).fetchone() == ("+919988776655", "Silver")
        assert conn.execute("SELECT count(*) FROM loyalty.members WHERE relation_reference = 'PH-919988776655'"
                            ).fetchone()[0] == 0
    assert counts(seeded_db)["loyalty.members"] == before["loyalty.members"] + 2
    # a number is accepted as an ID too (MoEngage may render it unquoted)
    r = post(api, {"customer_details": customer(number="9123456781", customer_id=12345, amount=None)})
    assert r.status_code == 200 and r.json()["results"][0]["customer_id"] == "12345"


def test_customer_id_is_per_program(api, seeded_db):
    # OTH-1 belongs to the other program: no clash in demo
    r = post(api, {"customer_details": customer(customer_id="OTH-1")})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["customer_id"] == "OTH-1"


def test_existing_member_keeps_its_reference_whatever_customer_id_says(api, seeded_db):
    before = counts(seeded_db)
    r = post(api, {"customer_details": customer(number=PHONE_1, customer_id="moe-999", amount="10")})
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    assert res["customer_id"] == "REL-0001" and res["member"] == "updated" and res["points_credited"] == 1
    with psycopg.connect(seeded_db) as conn:
        assert conn.execute("SELECT relation_reference FROM loyalty.members WHERE program_id = 'demo' "
                            "AND phone = %s", (PHONE_1,)).fetchone() == ("REL-0001",)
        assert conn.execute("SELECT count(*) FROM loyalty.members WHERE relation_reference = 'moe-999'"
                            ).fetchone()[0] == 0
    assert counts(seeded_db)["loyalty.members"] == before["loyalty.members"]
    # its own reference given back is fine as well
    r = post(api, {"customer_details": customer(number=PHONE_1, customer_id="REL-0001", amount=None)})
    assert r.status_code == 200 and r.json()["results"][0]["customer_id"] == "REL-0001"


@pytest.mark.parametrize("details, field, refs", [
    pytest.param(customer(customer_id="REL-0002"), "customer_details.customer_id", ["PH-919988776655"],
                 id="new-phone-taken-id"),
    pytest.param(customer(number=PHONE_1, customer_id="REL-0002"), "customer_details.customer_id", ["REL-0001"],
                 id="existing-phone-other-members-id"),
    pytest.param([customer(number="9123456780", customer_id="moe-7"), customer(customer_id="moe-7")],
                 "customer_details[1].customer_id", ["moe-7", "PH-919988776655"], id="same-id-twice-in-one-request"),
    pytest.param([customer(number="9123456780", amount=None), customer(customer_id="PH-919123456780")],
                 "customer_details[1].customer_id", ["PH-919123456780", "PH-919988776655"],
                 id="id-of-member-created-earlier-in-request"),
])
def test_customer_id_of_another_member_is_left_out_and_the_purchase_counts(api, seeded_db, details, field, refs):
    """Nobody takes over another member's MoEngage profile, and a purchase is never refused for it."""
    r = post(api, {"customer_details": details})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["customer_id"] for x in results] == refs
    assert field in [p["field"] for x in results for p in x["ignored_fields"]]
    assert results[-1]["points_credited"] == 123
    with psycopg.connect(seeded_db) as conn:
        assert conn.execute("SELECT relation_reference FROM loyalty.members WHERE phone = %s AND program_id = 'demo'",
                            (PHONE_2,)).fetchone() == ("REL-0002",)


def test_a_derived_reference_held_by_another_phone_is_409_and_writes_nothing(api, seeded_db):
    assert post(api, {"customer_details": customer(number="9123456780", customer_id="PH-919988776655",
                                                   amount=None)}).status_code == 200
    before = counts(seeded_db)
    r = post(api, {"customer_details": customer()})
    assert r.status_code == 409 and r.json()["error"]["field"] == "customer_details.number"
    assert counts(seeded_db) == before
    # the rolled-back request did not keep its idempotency claim: a fixed retry goes through
    assert post(api, {"customer_details": customer(customer_id="moe-fixed")}).status_code == 200


def test_duplicate_delivery_with_customer_id_replays(api, seeded_db):
    body = {"customer_details": customer(customer_id="moe-dup")}
    first = post(api, body)
    before = counts(seeded_db)
    again = post(api, body)
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    assert counts(seeded_db) == before
    # a different customer_id is a different body, hence a new request (existing member: reference kept)
    other = post(api, {"customer_details": customer(customer_id="moe-dup-2")})
    assert other.headers["idempotent-replayed"] == "false"
    assert other.json()["results"][0]["customer_id"] == "moe-dup"
