"""The bad-row corpus: rows a real loyalty platform can hold, each quarantined with a reason that
names the template, the column and the value, or sent exactly; the rest of the night is intact.

The reference schema refuses most of these rows, so the corpus drops its CHECK and foreign-key
constraints (and a few NOT NULLs) first, as a platform without them would have the rows.
"""

from __future__ import annotations

from datetime import date
from types import SimpleNamespace

import orjson
import psycopg
import pytest

from loyalty_moengage.sync.send import guard
from tests.loyalty_moengage.sync.test_contract import _run, templates  # noqa: F401 (fixture)
from tests.loyalty_moengage.sync.test_transform import EXPECTED_EVENTS, FIXTURE, _key, elements, ev

NIGHT_DATE = date(2026, 11, 21)
BIG = 1_000_000
TWO_60 = 2**60
OUT = "out of range (sendable: years 1900-2199)"
LEFT = " (attribute left out)"

RELAX = """
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT conrelid::regclass AS t, conname FROM pg_constraint
           WHERE contype IN ('c', 'f') AND connamespace = 'loyalty'::regnamespace LOOP
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', r.t, r.conname);
  END LOOP;
END $$;
ALTER TABLE loyalty.members ALTER relation_reference DROP NOT NULL, ALTER tier DROP NOT NULL,
  ALTER enrolled_at DROP NOT NULL, DROP CONSTRAINT members_program_id_relation_reference_key;
ALTER TABLE loyalty.transactions ALTER amount TYPE numeric;
"""

CORPUS = f"""
INSERT INTO loyalty.members (member_id, program_id, relation_reference, status, tier, enrolled_at) VALUES
  (20, 'tiny', NULL, 'active', 'Silver', '2025-06-01 04:30+00'),
  (21, 'tiny', '', 'active', 'Silver', '2025-06-01 04:30+00'),
  (22, 'tiny', E' \\t ', 'active', 'Silver', '2025-06-01 04:30+00'),
  (23, 'tiny', 'unknown', 'active', 'Silver', '2025-06-01 04:30+00'),
  (24, 'tiny', 'NULL', 'active', 'Silver', '2025-06-01 04:30+00'),
  (25, 'tiny', '0', 'active', 'Silver', '2025-06-01 04:30+00'),
  (26, 'tiny', repeat('R', {BIG}), 'active', 'Silver', '2025-06-01 04:30+00'),
  (30, 'tiny', 'REL-0030', 'active', 'Silver', '2025-06-01 04:30+00'),
  (31, 'tiny', 'REL-0031', 'active', 'Silver', '2025-06-01 04:30+00'),
  (32, 'tiny', 'REL-0032', 'active', 'Silver', '2025-06-01 04:30+00'),
  (33, 'tiny', 'REL-0033', 'inactive', 'Silver', '2025-06-01 04:30+00'),
  (35, 'tiny', 'REL-0035', 'active', NULL, NULL),
  (36, 'tiny', 'REL-0036', 'active', 'Silver', 'infinity'),
  (37, 'tiny', 'REL-0037', 'active', 'Silver', '0001-01-01 00:00+00'),
  (38, 'tiny', 'REL-0038', 'active', 'Silver', '9999-12-31 00:00+00'),
  (39, 'tiny', 'REL-0039', 'active', 'Silver', '2025-06-01 04:30+00'),
  (40, 'tiny', 'REL-0040', 'active', 'Silver', '2025-06-01 04:30+00'),
  (41, 'tiny', 'REL-0041', 'active', repeat('T', {BIG}), '2025-06-01 04:30+00');
INSERT INTO loyalty.transactions VALUES
  ('T-32', 'tiny', 32, 'NaN', 'INR', 'A123', 'store', '2026-11-21 07:00+00', '2026-11-21 07:00+00'),
  ('T-33', 'tiny', 32, 'Infinity', 'INR', 'A123', 'store', '2026-11-21 07:00+00', '2026-11-21 07:00+00'),
  ('T-34', 'tiny', 33, 120, 'INR', 'A123', 'store', 'infinity', '2026-11-01 00:00+00'),
  ('T-38', 'tiny', 38, 120, 'INR', 'A123', 'store', '0001-06-01 00:00+00', '2025-06-01 00:00+00'),
  ('T-39', 'tiny', 39, 120, 'INR', 'A123', 'store', '9999-12-31 00:00+00', '2025-06-01 00:00+00');
INSERT INTO loyalty.points_ledger (entry_id, program_id, member_id, entry_type, points, earning_type, transaction_id,
  lot_entry_id, expires_on, occurred_at, recorded_at) VALUES
  (320, 'tiny', 20, 'earn', 10, 'manual_bonus', NULL, NULL, '2027-11-21', '2026-11-21 06:00+00', '2026-11-21 06:00+00'),
  (321, 'tiny', 21, 'earn', 10, 'manual_bonus', NULL, NULL, '2027-11-21', '2026-11-21 06:00+00', '2026-11-21 06:00+00'),
  (322, 'tiny', 22, 'earn', 10, 'manual_bonus', NULL, NULL, '2027-11-21', '2026-11-21 06:00+00', '2026-11-21 06:00+00'),
  (323, 'tiny', 23, 'earn', 10, 'manual_bonus', NULL, NULL, '2027-11-21', '2026-11-21 06:00+00', '2026-11-21 06:00+00'),
  (324, 'tiny', 24, 'earn', 10, 'manual_bonus', NULL, NULL, '2027-11-21', '2026-11-21 06:00+00', '2026-11-21 06:00+00'),
  (325, 'tiny', 25, 'earn', 10, 'manual_bonus', NULL, NULL, '2027-11-21', '2026-11-21 06:00+00', '2026-11-21 06:00+00'),
  (326, 'tiny', 26, 'earn', 10, 'manual_bonus', NULL, NULL, '2027-11-21', '2026-11-21 06:00+00', '2026-11-21 06:00+00'),
  (330, 'tiny', 30, 'earn', -5, 'manual_bonus', NULL, NULL, '2027-11-21', '2026-11-21 06:00+00', '2026-11-21 06:00+00'),
  (331, 'tiny', 30, 'earn', 1, 'birthday_bonus', NULL, NULL, '2027-11-21', '2026-11-21 06:00+00', '2026-11-21 06:00+00'),
  (332, 'tiny', 31, 'earn', {TWO_60}, 'manual_bonus', NULL, NULL, '2027-11-21', '2026-11-21 06:00+00', '2026-11-21 06:00+00'),
  (333, 'tiny', 32, 'earn', 10, 'accrual', 'T-32', NULL, '2027-11-21', '2026-11-21 07:00+00', '2026-11-21 07:00+00'),
  (334, 'tiny', 32, 'earn', 20, 'accrual', 'T-33', NULL, '2027-11-21', '2026-11-21 07:00+00', '2026-11-21 07:00+00'),
  (335, 'tiny', 33, 'earn', 1, 'manual_bonus', NULL, NULL, '2027-11-21', 'infinity', '2026-11-21 06:00+00'),
  (336, 'tiny', 33, 'earn', 2, 'manual_bonus', NULL, NULL, '2027-11-21', '0001-01-01 00:00+00', '2026-11-21 06:00+00'),
  (337, 'tiny', 33, 'earn', 3, 'manual_bonus', NULL, NULL, '2027-11-21', '9999-12-31 00:00+00', '2026-11-21 06:00+00'),
  (338, 'tiny', 33, 'earn', 40, 'manual_bonus', NULL, NULL, 'infinity', '2025-06-01 00:00+00', '2025-06-01 00:00+00'),
  (339, 'tiny', 33, 'expire', -40, NULL, NULL, 338, NULL, '2026-11-21 07:00+00', '2026-11-21 07:00+00'),
  (340, 'tiny', 40, 'earn', 100, 'manual_bonus', NULL, NULL, '2026-11-21', '2025-11-01 00:00+00', '2025-11-01 00:00+00'),
  (341, 'tiny', 40, 'expire', -100, NULL, NULL, 340, NULL, '2026-11-20 18:45+00', '2026-11-20 18:45+00');
INSERT INTO loyalty.redemptions (redemption_id, program_id, member_id, points, item_sku, item_name, redeemed_at,
  recorded_at) VALUES
  ('RD-30', 'tiny', 30, -7, 'SKU-MUG', 'Coffee mug', '2026-11-21 08:00+00', '2026-11-21 08:00+00'),
  ('RD-33', 'tiny', 33, 5, 'SKU-MUG', 'Coffee mug', '-infinity', '2026-11-21 08:00+00'),
  ('RD-41', 'tiny', 41, 10, E'SKU-\\U0001F600', E'Mug\\t"x"\\n\\u0001\\\\ \\u2615\\U0001F389', '2026-11-21 08:00+00',
   '2026-11-21 08:00+00'),
  ('RD-42', 'tiny', 41, 20, 'SKU-BIG', repeat('I', {BIG}), '2026-11-21 08:00+00', '2026-11-21 08:00+00'),
  ('RD-43', 'tiny', 41, 30, 'NaN', 'Infinity', '2026-11-21 08:00+00', '2026-11-21 08:00+00');
INSERT INTO loyalty.member_tier_changes (change_id, member_id, from_tier, to_tier, changed_at, recorded_at) VALUES
  (30, 33, 'Silver', 'Gold', 'infinity', '2026-11-21 09:00+00');
INSERT INTO loyalty.member_status_changes (change_id, member_id, from_status, to_status, changed_at, recorded_at) VALUES
  (30, 33, 'inactive', 'active', '0001-01-01 00:00+00', '2026-11-21 09:00+00');
INSERT INTO loyalty.segment_memberships (membership_id, program_id, member_id, segment_id, entered_at,
  entered_recorded_at, exited_at, exited_recorded_at) VALUES
  (30, 'tiny', 33, 'high_value', '9999-12-31 00:00+00', '2026-11-21 09:00+00', NULL, NULL),
  (31, 'tiny', 33, 'lapsing', '2026-10-01 00:00+00', '2026-10-01 00:00+00', 'infinity', '2026-11-21 09:00+00');
"""

# Sent, exactly (besides the fixture's own EXPECTED_EVENTS).
SENT_EVENTS = [
    ev("REL-0033", "loyalty_points_expired", {"points": 40}, "2026-11-21T07:00:00Z"),  # expiry_date left out
    ev("REL-0040", "loyalty_points_expired", {"points": 100, "expiry_date": "2026-11-21"}, "2026-11-20T18:45:00Z"),
    ev("REL-0041", "loyalty_points_redeemed", {"points": 10, "redemption_id": "RD-41",
        "item": 'Mug\t"x"\n\x01\\ \u2615\U0001F389', "item_sku": "SKU-\U0001F600"}, "2026-11-21T08:00:00Z"),
    ev("REL-0041", "loyalty_points_redeemed", {"points": 20, "redemption_id": "RD-42", "item_sku": "SKU-BIG"},
       "2026-11-21T08:00:00Z"),  # item (1 MB) left out
    ev("REL-0041", "loyalty_points_redeemed", {"points": 30, "redemption_id": "RD-43", "item": "Infinity",
        "item_sku": "NaN"}, "2026-11-21T08:00:00Z"),  # text columns: NaN and Infinity are just words
]


def _attrs(**kw):
    base = {"points_available": 0, "points_accrued_lifetime": 0, "points_redeemed_lifetime": 0,
            "points_expired_lifetime": 0, "tier": "Silver", "status": "active", "enrollment_date": "2025-06-01",
            "total_transactions": 0, "points_expiring_30d": 0, "points_expiring_60d": 0, "points_expiring_90d": 0}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


SENT_USERS = {
    "REL-0030": _attrs(points_available=-4, points_accrued_lifetime=None),
    "REL-0031": _attrs(points_available=None, points_accrued_lifetime=None),
    "REL-0032": _attrs(points_available=30, points_accrued_lifetime=30, last_transaction_date="2026-11-21",
                       total_transactions=2, days_since_last_activity=0),
    "REL-0033": _attrs(points_available=6, points_accrued_lifetime=46, points_expired_lifetime=40, tier="Gold",
                       total_transactions=1),  # last_transaction_date (infinity) left out
    "REL-0035": _attrs(tier=None, enrollment_date=None),  # no tier, no enrolment date, no ledger rows
    "REL-0036": _attrs(enrollment_date=None),
    "REL-0037": _attrs(enrollment_date=None),
    "REL-0038": _attrs(enrollment_date=None, total_transactions=1),
    "REL-0039": _attrs(total_transactions=1),
    "REL-0040": _attrs(points_accrued_lifetime=100, points_expired_lifetime=100),  # only lot expired
    "REL-0041": _attrs(tier=None),  # 1 MB tier left out
}

# (template, reason, row_key) -> what the full reason (row_data._reason) quotes
E, R, M = "events/points_earned.sql", "events/points_redeemed.sql", "members/attributes.sql"
QUARANTINED = {
    # the fixture's own refused id
    (E, "customer_id is a value MoEngage refuses", "earn-108"): 'customer_id = "guest"',
    ("events/status_changes.sql", "customer_id is a value MoEngage refuses", "status-2"): 'customer_id = "guest"',
    (M, "customer_id is a value MoEngage refuses", "guest"): 'customer_id = "guest"',
    # customer ids
    (E, "missing customer_id", "earn-320"): "customer_id = NULL",
    (M, "missing customer_id", None): "customer_id = NULL",
    (E, "missing customer_id", "earn-321"): 'customer_id = ""',
    (M, "missing customer_id", ""): 'customer_id = ""',
    (E, "missing customer_id", "earn-322"): 'customer_id = " \\t "',
    (M, "missing customer_id", " \t "): 'customer_id = " \\t "',
    (E, "customer_id is a value MoEngage refuses", "earn-323"): 'customer_id = "unknown"',
    (M, "customer_id is a value MoEngage refuses", "unknown"): 'customer_id = "unknown"',
    (E, "customer_id is a value MoEngage refuses", "earn-324"): 'customer_id = "NULL"',
    (M, "customer_id is a value MoEngage refuses", "NULL"): 'customer_id = "NULL"',
    (E, "customer_id is a value MoEngage refuses", "earn-325"): 'customer_id = "0"',
    (M, "customer_id is a value MoEngage refuses", "0"): 'customer_id = "0"',
    (E, "customer_id is longer than 512 characters", "earn-326"):
        'customer_id = "' + "R" * 80 + '"... (1,000,000 characters)',
    (M, "customer_id is longer than 512 characters", "R" * 1000):
        'customer_id = "' + "R" * 80 + '"... (1,000,000 characters)',
    # points
    (E, "points is negative", "earn-330"): 'points = "-5"',
    (R, "points is negative", "redeem-RD-30"): 'points = "-7"',
    (M, "points_accrued_lifetime is negative" + LEFT, "REL-0030"): 'points_accrued_lifetime = "-4"',
    (E, "unknown earning_type", "earn-331"): 'earning_type = "birthday_bonus"',
    (E, "points is beyond ±2^53 (JSON numbers lose digits)", "earn-332"): f'points = "{TWO_60}"',
    (M, "points_available is beyond ±2^53 (JSON numbers lose digits)" + LEFT, "REL-0031"):
        f'points_available = "{TWO_60}"',
    (M, "points_accrued_lifetime is beyond ±2^53 (JSON numbers lose digits)" + LEFT, "REL-0031"):
        f'points_accrued_lifetime = "{TWO_60}"',
    (E, "amount is NaN or Infinity", "earn-333"): 'amount = "NaN"',
    (E, "amount is NaN or Infinity", "earn-334"): 'amount = "Infinity"',
    # times: infinity, year 0001, year 9999 in every time column the templates read
    (E, "event_time out of range", "earn-335"): 'event_time = "infinity"',
    (E, "event_time out of range", "earn-336"): 'event_time = "0001-01-01 00:00:00+00"',
    (E, "event_time out of range", "earn-337"): 'event_time = "9999-12-31 00:00:00+00"',
    ("events/points_expired.sql", f"expiry_date {OUT}{LEFT}", "expired-339"): 'expiry_date = "infinity"',
    (R, "event_time out of range", "redeem-RD-33"): 'event_time = "-infinity"',
    ("events/tier_changes.sql", "event_time out of range", "tier-30"): 'event_time = "infinity"',
    ("events/status_changes.sql", "event_time out of range", "status-30"): 'event_time = "0001-01-01 00:00:00+00"',
    ("events/segment_changes.sql", "event_time out of range", "segment-in-30"): 'event_time = "9999-12-31 00:00:00+00"',
    ("events/segment_changes.sql", "event_time out of range", "segment-out-31"): 'event_time = "infinity"',
    (M, f"last_transaction_date {OUT}{LEFT}", "REL-0033"): 'last_transaction_date = "infinity"',
    (M, f"enrollment_date {OUT}{LEFT}", "REL-0036"): 'enrollment_date = "infinity"',
    (M, f"enrollment_date {OUT}{LEFT}", "REL-0037"): 'enrollment_date = "0001-01-01"',
    (M, f"enrollment_date {OUT}{LEFT}", "REL-0038"): 'enrollment_date = "9999-12-31"',
    (M, f"last_transaction_date {OUT}{LEFT}", "REL-0038"): 'last_transaction_date = "0001-06-01"',
    (M, "days_since_last_activity left out with last_transaction_date" + LEFT, "REL-0038"):
        "days_since_last_activity = ",
    (M, f"last_transaction_date {OUT}{LEFT}", "REL-0039"): 'last_transaction_date = "9999-12-31"',
    (M, "days_since_last_activity is negative" + LEFT, "REL-0039"): 'days_since_last_activity = "-2912118"',
    # 1 MB strings
    (R, "item is longer than 512 characters" + LEFT, "redeem-RD-42"): 'item = "' + "I" * 80 + '"... (1,000,000 characters)',
    (M, "tier is longer than 512 characters" + LEFT, "REL-0041"): 'tier = "' + "T" * 80 + '"... (1,000,000 characters)',
}


@pytest.fixture
def corpus(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
        conn.execute(RELAX)
        conn.execute(CORPUS)
    return loyalty_db


def _quarantine(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT template, reason, row_key, row_data FROM moengage_sync.quarantine").fetchall()


def test_every_bad_row_is_quarantined_with_its_reason_or_sent_exactly(corpus):
    stats = _run(corpus)
    # nothing else of the night is lost: the fixture's events are exact, the corpus's sendable ones too
    got = elements(corpus, "events")
    assert sorted(map(_key, got)) == sorted(map(_key, EXPECTED_EVENTS + SENT_EVENTS))
    users = {u["customer_id"]: u for u in elements(corpus, "users")}
    assert set(users) == {"REL-0001", "REL-0002"} | set(SENT_USERS)
    assert users["REL-0001"]["attributes"]["points_available"] == 1100 and len(users["REL-0001"]["attributes"]) == 13
    for cid, attrs in SENT_USERS.items():
        assert users[cid] == {"type": "customer", "customer_id": cid, "update_existing_only": True,
                              "attributes": attrs}, cid
    rows = _quarantine(corpus)
    found = {(t, r, k): d for t, r, k, d in rows}
    assert len(found) == len(rows)
    assert set(found) == set(QUARANTINED)
    for key, quoted in QUARANTINED.items():
        why = found[key]["_reason"]
        template, reason, _ = key
        assert why.startswith(f"{template}: {reason}; ") and quoted in why, (key, why)
        assert len(orjson.dumps(found[key])) < 10_000  # a 1 MB value is kept truncated
    assert sum(stats["quarantined"].values()) == len(QUARANTINED)
    assert stats["events_enqueued"] == len(EXPECTED_EVENTS + SENT_EVENTS)


def test_the_night_proceeds_while_the_quarantined_share_is_under_reject_threshold(corpus):
    stats = _run(corpus)
    share = sum(stats["quarantined"].values()) / stats["rows_extracted"]
    program = SimpleNamespace(id="tiny", min_members=1, anomaly_lookback_nights=7, max_event_drop_pct=90,
                              reject_threshold=share + 0.01)
    with psycopg.connect(corpus) as conn:
        assert guard.check(conn, program=program, night=NIGHT_DATE, run_id="r1")["problems"] == []
        program.reject_threshold = share - 0.01
        problems = guard.check(conn, program=program, night=NIGHT_DATE, run_id="r1")["problems"]
    assert len(problems) == 1 and "over reject_threshold" in problems[0]


def test_duplicate_event_ids_keep_the_first_template_and_quarantine_the_rest(corpus, templates):  # noqa: F811
    (templates / "events" / "points_earned_copy.sql").write_text((templates / "events" / "points_earned.sql").read_text())
    _run(corpus)
    got = elements(corpus, "events")
    assert sorted(map(_key, got)) == sorted(map(_key, EXPECTED_EVENTS + SENT_EVENTS))
    dups = [(t, k, d["_reason"]) for t, r, k, d in _quarantine(corpus) if r == "duplicate event_id"]
    earned = sorted(e for e in ("earn-100", "earn-101", "earn-102", "earn-103", "earn-104"))
    assert sorted(k for _, k, _ in dups) == earned
    assert all(t == "events/points_earned_copy.sql" and f'event_id = "{k}"' in why for t, k, why in dups)


def test_an_unknown_event_name_or_earning_type_from_an_analysts_template(corpus, templates):  # noqa: F811
    path = templates / "events" / "points_redeemed.sql"
    path.write_text(path.read_text().replace("'loyalty_points_redeemed'", "'loyalty_points_gifted'"))
    path = templates / "events" / "points_earned.sql"
    path.write_text(path.read_text().replace("l.earning_type                   AS earning_type",
                                             "CASE WHEN l.entry_id = 101 THEN 'promo' ELSE l.earning_type END AS earning_type"))
    _run(corpus)
    rows = {(t, r, k): d["_reason"] for t, r, k, d in _quarantine(corpus)}
    assert rows[(R, "unknown event name", "redeem-RD-1")].endswith('event_name = "loyalty_points_gifted"')
    assert rows[(E, "unknown earning_type", "earn-101")].endswith('earning_type = "promo"')
    got = {_key(e) for e in elements(corpus, "events")}
    assert not any(e["actions"][0]["action"] == "loyalty_points_redeemed" for e in map(orjson.loads, got))
    rest = [e for e in EXPECTED_EVENTS + SENT_EVENTS if e["actions"][0]["action"] != "loyalty_points_redeemed"
            and e["actions"][0]["attributes"].get("earning_type") != "campaign_bonus"]
    assert got == set(map(_key, rest))


def test_nan_and_infinity_in_a_text_points_column(corpus, templates):  # noqa: F811
    path = templates / "events" / "points_expired.sql"
    path.write_text(path.read_text().replace(
        "-l.points                        AS points,",
        "CASE WHEN l.entry_id = 107 THEN 'NaN' WHEN l.entry_id = 339 THEN ' -Infinity' ELSE (-l.points)::text END AS points,"))
    _run(corpus)
    rows = {(t, r, k): d["_reason"] for t, r, k, d in _quarantine(corpus)}
    assert rows[("events/points_expired.sql", "points is NaN or Infinity", "expired-107")].endswith('points = "NaN"')
    assert rows[("events/points_expired.sql", "points is NaN or Infinity", "expired-339")].endswith('points = " -Infinity"')
    expired = [e for e in elements(corpus, "events") if e["actions"][0]["action"] == "loyalty_points_expired"]
    # a text column keeps its text: the one left is sent with points as the string Postgres printed
    assert expired == [ev("REL-0040", "loyalty_points_expired", {"points": "100", "expiry_date": "2026-11-21"},
                          "2026-11-20T18:45:00Z")]


def test_timestamp_without_time_zone_is_the_programs_local_time(loyalty_db, templates):  # noqa: F811
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
        # a platform that keeps local wall times (the program's zone) in timestamp columns
        conn.execute("ALTER TABLE loyalty.redemptions ALTER redeemed_at TYPE timestamp "
                     "USING redeemed_at AT TIME ZONE 'Asia/Kolkata'")
    path = templates / "events" / "points_redeemed.sql"
    path.write_text(path.read_text().replace("r.item_sku                       AS item_sku",
                                             "r.item_sku AS item_sku, r.redeemed_at AS redeemed_local"))
    path = templates / "members" / "attributes.sql"
    path.write_text(path.read_text().replace(
        "AS points_expiring_90d", "AS points_expiring_90d, (mem.enrolled_at AT TIME ZONE %(time_zone)s) AS enrolled_local"))
    _run(loyalty_db)
    redeemed = [e for e in elements(loyalty_db, "events") if e["actions"][0]["action"] == "loyalty_points_redeemed"]
    # 12:00 in Kolkata is 06:30 UTC: the same instant as the timestamptz fixture, not 12:00Z
    assert redeemed == [ev("REL-0001", "loyalty_points_redeemed", {"points": 300, "redemption_id": "RD-1",
                           "item": "Tote bag", "item_sku": "SKU-BAG", "redeemed_local": "2026-11-21T06:30:00Z"},
                           "2026-11-21T06:30:00Z")]
    users = {u["customer_id"]: u["attributes"] for u in elements(loyalty_db, "users")}
    assert users["REL-0001"]["enrolled_local"] == "2025-01-10T04:30:00Z"


def test_an_infinite_occurred_at_does_not_fail_the_member_template(loyalty_db):
    """The issue's drill: one ledger row and one transaction at occurred_at = 'infinity'."""
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
        conn.execute("UPDATE loyalty.points_ledger SET occurred_at = 'infinity' WHERE entry_id = 10")
        conn.execute("UPDATE loyalty.transactions SET occurred_at = 'infinity' WHERE transaction_id = 'T-1'")
    stats = _run(loyalty_db)
    users = {u["customer_id"]: u["attributes"] for u in elements(loyalty_db, "users")}
    assert "last_transaction_date" not in users["REL-0001"] and "days_since_last_activity" not in users["REL-0001"]
    assert users["REL-0001"]["points_available"] == 1100
    assert stats["quarantined"][f"last_transaction_date {OUT}{LEFT}"] == 1

