"""Exact payloads for a hand-built night covering every event type and earning type."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import orjson
import psycopg
import pytest

from loyalty_moengage.night import Window
from tests.loyalty_moengage.sync.sync_env import transform_chunk

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "tiny_program.sql"
NIGHT = Window.for_interval(datetime(2026, 11, 20, 18, 30, tzinfo=timezone.utc),
                            datetime(2026, 11, 21, 18, 30, tzinfo=timezone.utc), "Asia/Kolkata")


@pytest.fixture
def tiny(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
    return loyalty_db


def run(dsn, run_id="run-1", send_users=True):
    return transform_chunk(program_id="tiny", window=NIGHT, lo=0, hi=2**63 - 1, label="members 1-3",
                           run_id=run_id, send_users=send_users, loyalty_dsn=dsn, state_dsn=dsn)


def elements(dsn, kind):
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT body FROM moengage_sync.batches WHERE kind = %s ORDER BY batch_id", (kind,)).fetchall()
    out = []
    for (body,) in rows:
        payload = orjson.loads(bytes(body))
        assert payload["type"] == "transition"
        out.extend(payload["elements"])
    return out


def ev(cid, action, attrs, t, offset=19800):
    return {"type": "event", "customer_id": cid,
            "actions": [{"action": action, "attributes": attrs, "current_time": t, "user_timezone_offset": offset}]}


EXPECTED_EVENTS = [
    ev("REL-0001", "loyalty_points_earned", {"points": 150, "earning_type": "accrual", "transaction_id": "T-9",
        "amount": 1500.50, "currency": "INR", "store": "A123", "channel": "store"}, "2026-11-21T08:35:09Z"),
    ev("REL-0001", "loyalty_points_earned", {"points": 50, "earning_type": "campaign_bonus"}, "2026-11-21T04:30:00Z"),
    ev("REL-0002", "loyalty_points_earned", {"points": 20, "earning_type": "manual_bonus"}, "2026-11-21T05:00:00Z"),
    ev("REL-0002", "loyalty_points_earned", {"points": 100, "earning_type": "tier_bonus"}, "2026-11-21T09:30:00Z"),
    # late-recorded: happened the night before, recorded inside this night
    ev("REL-0002", "loyalty_points_earned", {"points": 30, "earning_type": "accrual", "transaction_id": "T-10",
        "amount": 300.00, "currency": "INR", "store": "A123", "channel": "website"}, "2026-11-20T18:28:00Z"),
    ev("REL-0001", "loyalty_points_redeemed", {"points": 300, "redemption_id": "RD-1", "item": "Tote bag",
        "item_sku": "SKU-BAG"}, "2026-11-21T06:30:00Z"),
    ev("REL-0002", "loyalty_points_expired", {"points": 80, "expiry_date": "2026-11-21"}, "2026-11-20T18:40:00Z"),
    ev("REL-0001", "loyalty_points_expiring_soon", {"points": 700, "days_out": 30, "expiry_date": "2026-12-21"},
       "2026-11-21T18:29:59Z"),
    ev("REL-0002", "loyalty_points_expiring_soon", {"points": 500, "days_out": 60, "expiry_date": "2027-01-20"},
       "2026-11-21T18:29:59Z"),
    ev("REL-0001", "loyalty_points_expiring_soon", {"points": 200, "days_out": 90, "expiry_date": "2027-02-19"},
       "2026-11-21T18:29:59Z"),
    ev("REL-0002", "loyalty_redemption_reversed", {"points_returned": 100, "redemption_id": "RD-0"}, "2026-11-21T07:30:00Z"),
    ev("REL-0001", "loyalty_tier_upgraded", {"from_tier": "Silver", "to_tier": "Gold"}, "2026-11-21T09:30:00Z"),
    ev("REL-0002", "loyalty_tier_downgraded", {"from_tier": "Gold", "to_tier": "Silver"}, "2026-11-21T10:30:00Z"),
    ev("REL-0001", "loyalty_segment_entered", {"segment": "high_value", "segment_name": "High value"}, "2026-11-21T03:30:00Z"),
    ev("REL-0002", "loyalty_segment_exited", {"segment": "lapsing", "segment_name": "Lapsing"}, "2026-11-21T05:30:00Z"),
    ev("REL-0002", "loyalty_member_activated", {"previous_status": "inactive"}, "2026-11-21T02:30:00Z"),
]


def _key(e):
    return orjson.dumps(e, option=orjson.OPT_SORT_KEYS)


def test_exact_event_payloads(tiny):
    stats = run(tiny)
    got = elements(tiny, "events")
    assert sorted(map(_key, got)) == sorted(map(_key, EXPECTED_EVENTS))
    assert stats["events_enqueued"] == len(EXPECTED_EVENTS)
    assert set(stats["events_by_type"]) == {e["actions"][0]["action"] for e in EXPECTED_EVENTS}
    # every earning type, and integers stay integers
    earned = [e["actions"][0]["attributes"] for e in got if e["actions"][0]["action"] == "loyalty_points_earned"]
    assert {a["earning_type"] for a in earned} == {"accrual", "campaign_bonus", "manual_bonus", "tier_bonus"}
    assert all(isinstance(a["points"], int) for a in earned)


def test_exact_user_payloads_and_nulls(tiny):
    run(tiny)
    users = {u["customer_id"]: u for u in elements(tiny, "users")}
    assert set(users) == {"REL-0001", "REL-0002"}
    assert users["REL-0001"] == {
        "type": "customer", "customer_id": "REL-0001", "update_existing_only": True,
        "attributes": {
            "points_available": 1100, "points_accrued_lifetime": 1400, "points_redeemed_lifetime": 300,
            "points_expired_lifetime": 0, "tier": "Gold", "status": "active", "enrollment_date": "2025-01-10",
            "last_transaction_date": "2026-11-21", "total_transactions": 2, "days_since_last_activity": 0,
            "points_expiring_30d": 700, "points_expiring_60d": 700, "points_expiring_90d": 900,
        },
    }
    # REL-0002 has one transaction (the late-recorded one); the one recorded after the night is ignored
    a2 = users["REL-0002"]["attributes"]
    assert a2["points_available"] == 500 + 80 - 100 + 20 + 100 + 30 + 100 - 80
    assert a2["total_transactions"] == 1 and a2["last_transaction_date"] == "2026-11-20"
    assert a2["days_since_last_activity"] == 1
    assert a2["points_expired_lifetime"] == 80 and a2["points_redeemed_lifetime"] == 0
    assert None not in a2.values()


def test_bad_rows_are_quarantined_with_reasons(tiny):
    stats = run(tiny)
    with psycopg.connect(tiny) as conn:
        rows = conn.execute("SELECT template, reason, row_key, row_data FROM moengage_sync.quarantine").fetchall()
    reasons = {(r[0], r[1]) for r in rows}
    assert ("events/points_earned.sql", "customer_id is a value MoEngage refuses") in reasons
    assert ("events/status_changes.sql", "customer_id is a value MoEngage refuses") in reasons
    assert ("members/attributes.sql", "customer_id is a value MoEngage refuses") in reasons
    assert all(r[3]["customer_id"] == "guest" for r in rows)
    assert stats["quarantined"] == {"customer_id is a value MoEngage refuses": 3}


def test_second_run_of_the_same_night_enqueues_no_event(tiny):
    run(tiny, "run-1")
    stats = run(tiny, "run-2")
    assert stats["events_enqueued"] == 0
    assert stats["events_already_sent"] == len(EXPECTED_EVENTS)
    with psycopg.connect(tiny) as conn:
        n = conn.execute("SELECT count(*) FROM moengage_sync.event_keys").fetchone()[0]
    assert n == len(EXPECTED_EVENTS)
