"""The connector as money: a purchase counts once by its id, every purchase counts, caps hold,
MoEngage's Test button writes nothing, the platform's profile wins, and PH- members get linked."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.loyalty_moengage.api import conftest
from tests.loyalty_moengage.api.conftest import PHONE_1, STORE_KEY, counts

PATH = "/api/customers/add"


def write_key() -> str:
    return conftest.WRITE_KEY


def customer(**over):
    base = {"number": "+91 99887 76655", "email_id": "ravi@example.com", "name": "Ravi Kumar",
            "gender": "Male", "amount": "499", "channel": "Website", "store_id": "A123", "admin_id": "123"}
    base.update(over)
    return base


def post(client, body, *, headers=None, params=None):
    return client.post(PATH, params=params, content=json.dumps(body).encode(),
                       headers={"Content-Type": "application/json", "X-API-Key": write_key(), **(headers or {})})


@pytest.fixture
def policy_file(tmp_path, monkeypatch):
    """Write a programs file whose demo program has the given ``api:`` block."""

    def write(**api):
        path = tmp_path / "programs.yaml"
        path.write_text(json.dumps({"programs": [
            {"id": "demo", "name": "Demo", "time_zone": "Asia/Kolkata", "api": api},
            {"id": "other", "name": "Other", "time_zone": "Asia/Kolkata"}]}))
        monkeypatch.setenv("LOYALTY_PROGRAMS_FILE", str(path))
        return path

    return write


def test_two_identical_purchases_without_an_id_both_count_outside_the_retry_window(make_server, seeded_db):
    client, _ = make_server(seeded_db, retry_window_s=0)
    with client:
        first = post(client, {"customer_details": customer()})
        second = post(client, {"customer_details": customer()})
    assert first.status_code == second.status_code == 200, second.text
    assert second.headers["idempotent-replayed"] == "false"
    assert [r.json()["results"][0]["points_credited"] for r in (first, second)] == [49, 49]
    assert second.json()["results"][0]["points_available"] == 98
    assert first.json()["results"][0]["transaction_id"] != second.json()["results"][0]["transaction_id"]


def test_an_identical_request_inside_the_retry_window_is_a_retry_and_the_answer_says_so(api, seeded_db):
    first = post(api, {"customer_details": customer()})
    before = counts(seeded_db)
    again = post(api, {"customer_details": customer()})
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    assert first.json()["deduplication"]["request"] == "retry_window"
    assert first.json()["deduplication"]["window_seconds"] == 300
    assert counts(seeded_db) == before


def test_a_purchase_id_counts_once_whatever_else_the_retry_changes(api, seeded_db):
    first = post(api, {"customer_details": customer(purchase_id="ORD-1001", amount="499")})
    assert first.json()["results"][0]["purchase"] == "counted"
    before = counts(seeded_db)
    # a retry rendered differently: other amount, channel and an order_id spelling of the same id
    retry = post(api, {"customer_details": customer(order_id="ORD-1001", amount="499.00", channel="App")})
    res = retry.json()["results"][0]
    assert retry.status_code == 200 and res["purchase"] == "already_counted"
    assert res["points_credited"] == 49 and res["points_available"] == 49
    assert res["transaction_id"] == first.json()["results"][0]["transaction_id"] == "MOE-demo-ORD-1001"
    assert counts(seeded_db)["loyalty.transactions"] == before["loyalty.transactions"]
    assert counts(seeded_db)["loyalty.points_ledger"] == before["loyalty.points_ledger"]


def test_two_purchases_with_their_ids_both_count(api, seeded_db):
    post(api, {"customer_details": customer(purchase_id="ORD-1")})
    r = post(api, {"customer_details": customer(purchase_id="ORD-2")})
    assert r.json()["results"][0]["points_available"] == 98


def test_an_unusual_purchase_id_still_counts_once(api, seeded_db):
    odd = "order #42 / 2026 – ₹"
    a = post(api, {"customer_details": customer(purchase_id=odd)})
    b = post(api, {"customer_details": customer(purchase_id=odd, amount="1")})
    assert a.json()["results"][0]["transaction_id"] == b.json()["results"][0]["transaction_id"]
    assert b.json()["results"][0]["purchase"] == "already_counted"


def test_caps_per_purchase_and_per_member_per_day(make_server, seeded_db, policy_file):
    policy_file(max_points_per_purchase=300, max_points_per_member_per_day=500)
    client, _ = make_server(seeded_db)
    with client:
        big = post(client, {"customer_details": customer(purchase_id="P1", amount="100000")})
        res = big.json()["results"][0]
        assert (res["points_credited"], res["points_capped"]) == (300, 9700)
        second = post(client, {"customer_details": customer(purchase_id="P2", amount="5000")})
        res = second.json()["results"][0]
        assert (res["points_credited"], res["points_capped"]) == (200, 300)
        third = post(client, {"customer_details": customer(purchase_id="P3", amount="5000")})
        res = third.json()["results"][0]
        assert (res["points_credited"], res["points_capped"], res["points_available"]) == (0, 500, 500)
        assert res["transaction_id"] == "MOE-demo-P3"  # the purchase is recorded, without points


def test_the_default_caps_stop_minting(api, seeded_db):
    r = post(api, {"customer_details": [customer(purchase_id=f"X{i}", amount="1000000") for i in range(10)]})
    assert r.status_code == 200, r.text
    assert r.json()["results"][-1]["points_available"] == 50_000
    assert r.json()["results"][0]["points_capped"] == 90_000


def test_test_mode_answers_like_the_real_call_and_writes_nothing(api, seeded_db):
    before = counts(seeded_db)
    r = post(api, {"customer_details": customer(purchase_id="T-1")}, headers={"X-Loyalty-Test": "true"})
    assert r.status_code == 200, r.text
    assert r.headers["loyalty-test"] == "true" and r.json()["test"] is True
    res = r.json()["results"][0]
    assert res["member"] == "created" and res["points_credited"] == 49 and res["purchase"] == "counted"
    assert counts(seeded_db) == before
    real = post(api, {"customer_details": customer(purchase_id="T-1")}, params={"test": "false"})
    assert real.json()["test"] is False and real.json()["results"][0]["purchase"] == "counted"


def test_campaign_values_fill_blanks_but_never_overwrite_by_default(api, seeded_db):
    r = post(api, {"customer_details": customer(number=PHONE_1, name="Mallory", email_id="m@evil.example",
                                                gender="female", amount="")})
    assert r.status_code == 200, r.text
    with psycopg.connect(seeded_db) as conn:
        row = conn.execute("SELECT name, email, gender FROM loyalty.members WHERE relation_reference = 'REL-0001'"
                           ).fetchone()
    assert row == ("Asha", "m@evil.example", "female")  # name kept; empty email and gender filled


def test_a_program_may_let_campaign_values_overwrite(make_server, seeded_db, policy_file):
    policy_file(profile_updates="overwrite")
    client, _ = make_server(seeded_db)
    with client:
        post(client, {"customer_details": customer(number=PHONE_1, name="Asha Rao", amount="")})
    with psycopg.connect(seeded_db) as conn:
        assert conn.execute("SELECT name FROM loyalty.members WHERE relation_reference = 'REL-0001'"
                            ).fetchone() == ("Asha Rao",)


def test_a_member_enrolled_without_customer_id_is_linked_by_a_later_payload(api, seeded_db):
    first = post(api, {"customer_details": customer(amount="")})
    assert first.json()["results"][0]["customer_id"] == "PH-919988776655"
    later = post(api, {"customer_details": customer(customer_id="moe-user-77", amount="")})
    res = later.json()["results"][0]
    assert res["customer_id"] == "moe-user-77" and res["linked"] is True and res["member"] == "updated"
    # a member whose reference came from the platform is never relinked
    kept = post(api, {"customer_details": customer(number=PHONE_1, customer_id="moe-user-88", amount="")})
    assert kept.json()["results"][0]["customer_id"] == "REL-0001" and kept.json()["results"][0]["linked"] is False


def test_a_phone_rendered_as_a_float_credits_the_real_member(api, seeded_db):
    before = counts(seeded_db)
    r = post(api, {"customer_details": customer(number="9876543210.0", amount="100")})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["customer_id"] == "REL-0001"
    assert counts(seeded_db)["loyalty.members"] == before["loyalty.members"]


def test_a_foreign_number_without_its_plus_finds_its_member(api, seeded_db):
    with psycopg.connect(seeded_db) as conn:
        conn.execute("INSERT INTO loyalty.members (program_id, relation_reference, phone, tier, status, enrolled_at) "
                     "VALUES ('demo', 'US-1', '+14155550123', 'Silver', 'active', now())")
    for raw in ("14155550123", " 1 415 555 0123", "+1 (415) 555-0123"):
        got = api.get("/api/loyalty/points", params={"customer_phone": raw},
                      headers={"X-API-Key": conftest.API_KEY, "X-Store-Key": STORE_KEY})
        assert got.status_code == 200 and got.json()["customer_id"] == "US-1", (raw, got.text)
    before = counts(seeded_db)
    r = post(api, {"customer_details": customer(number="14155550123", amount="10")})
    assert r.json()["results"][0]["customer_id"] == "US-1"
    assert counts(seeded_db)["loyalty.members"] == before["loyalty.members"]


def test_odd_fields_are_left_out_and_reported_while_the_purchase_counts(api, seeded_db):
    r = post(api, {"customer_details": customer(amount="₹1,299.00", gender="Not Disclosed", email_id="N/A",
                                                customer_id="user #7/ü")})
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["points_credited"] == 129 and res["customer_id"] == "user #7/ü"
    r = post(api, {"customer_details": customer(number="9123456780", gender="zebra", amount="1499.6999999999998")})
    res = r.json()["results"][0]
    assert res["points_credited"] == 149
    assert [p["field"] for p in res["ignored_fields"]] == ["customer_details.gender"]


def test_non_member_answer_default_lets_the_campaign_send(make_server, seeded_db, policy_file):
    policy_file(non_member_answer="default")
    client, _ = make_server(seeded_db)
    keys = {"X-API-Key": conftest.API_KEY, "X-Store-Key": STORE_KEY}
    with client:
        for params in ({"customer_phone": "+919000000001"}, {"customer_phone": ""}, {"customer_id": "nobody"}):
            r = client.get("/api/loyalty/points", params=params, headers=keys)
            assert r.status_code == 200, (params, r.text)
            assert r.json()["member"] is False and r.json()["points_available"] == 0
        found = client.get("/api/loyalty/points", params={"customer_phone": PHONE_1}, headers=keys)
        assert found.json()["member"] is True


@pytest.mark.parametrize("placeholder", ["null", "0", "undefined", "NA", "None"])
def test_a_placeholder_purchase_id_is_not_an_id(api, seeded_db, placeholder):
    """A campaign renders "null" when the event lacks the attribute: taken as an id, it would make
    every later purchase of every member 'already counted'."""
    first = post(api, {"customer_details": customer(purchase_id=placeholder)})
    res = first.json()["results"][0]
    assert res["purchase"] == "counted" and res["transaction_id"] != f"MOE-demo-{placeholder}"
    assert [p["field"] for p in res["ignored_fields"]] == ["customer_details.purchase_id"]
    other = post(api, {"customer_details": customer(number="9123456780", purchase_id=placeholder)})
    assert other.json()["results"][0]["points_credited"] == 49


def test_another_members_purchase_id_is_not_counted_and_not_revealed(api, seeded_db):
    post(api, {"customer_details": customer(purchase_id="ORD-77", amount="5000")})
    r = post(api, {"customer_details": customer(number="9123456780", purchase_id="ORD-77", amount="10")})
    res = r.json()["results"][0]
    assert r.status_code == 200 and res["purchase"] == "not_counted"
    assert res["points_credited"] == 0 and res["transaction_id"] == ""
    assert [p["field"] for p in res["ignored_fields"]] == ["customer_details.purchase_id"]


def test_a_long_purchase_id_still_counts_once(api, seeded_db):
    long_id = "ORD-" + "x" * 600
    a = post(api, {"customer_details": customer(purchase_id=long_id)})
    b = post(api, {"customer_details": customer(purchase_id=long_id, amount="1")})
    assert a.json()["results"][0]["transaction_id"].startswith("MOE-demo-#")
    assert b.json()["results"][0]["purchase"] == "already_counted"


def test_a_broken_programs_file_keeps_the_last_caps(make_server, seeded_db, policy_file):
    path = policy_file(max_points_per_purchase=300)
    client, app = make_server(seeded_db)
    with client:
        assert post(client, {"customer_details": customer(purchase_id="B1", amount="100000")}
                    ).json()["results"][0]["points_credited"] == 300
        path.write_bytes(b"programs: [\xff\xfe broken")
        app.state.policies.ttl = 0  # read the file again at the next request
        r = post(client, {"customer_details": customer(purchase_id="B2", amount="100000")})
        assert r.status_code == 200 and r.json()["results"][0]["points_credited"] == 300


def test_a_valid_local_reading_wins_over_a_member_under_a_foreign_reading(api, seeded_db):
    """6499962283 in an Indian program is an Indian mobile, even when +64 9996 2283 (New Zealand) is a member."""
    with psycopg.connect(seeded_db) as conn:
        conn.execute("INSERT INTO loyalty.members (program_id, relation_reference, phone, tier, status, enrolled_at) "
                     "VALUES ('demo', 'NZ-1', '+6499962283', 'Silver', 'active', now())")
    keys = {"X-API-Key": conftest.API_KEY, "X-Store-Key": STORE_KEY}
    before = api.get("/api/loyalty/points", params={"customer_phone": "6499962283"}, headers=keys)
    assert before.status_code == 404  # not the New Zealand member's balance
    r = post(api, {"customer_details": customer(number="6499962283", amount="500")})
    res = r.json()["results"][0]
    assert res["customer_id"] == "PH-916499962283" and res["member"] == "created"
    got = api.get("/api/loyalty/points", params={"customer_phone": "6499962283"},
                  headers={"X-API-Key": conftest.API_KEY, "X-Store-Key": STORE_KEY})
    assert got.json()["customer_id"] == "PH-916499962283"
