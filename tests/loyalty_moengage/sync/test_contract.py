"""The SQL contract: broken templates fail with names, extra columns flow, DST-correct nights."""

from __future__ import annotations

import shutil
from datetime import date, datetime, timezone

import orjson
import psycopg
import pytest

from loyalty_moengage.sync.chunk.contract import ContractError
from loyalty_moengage.paths import sql_dir
from loyalty_moengage.night import Window
from tests.loyalty_moengage.sync.sync_env import transform_chunk
from tests.loyalty_moengage.sync.test_transform import FIXTURE, NIGHT


@pytest.fixture
def tiny(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
    return loyalty_db


@pytest.fixture
def templates(tmp_path, monkeypatch):
    copy = tmp_path / "sql"
    shutil.copytree(sql_dir(), copy)
    monkeypatch.setenv("LOYALTY_SQL_DIR", str(copy))
    return copy


def _run(dsn, window=NIGHT, program="tiny"):
    return transform_chunk(program_id=program, window=window, lo=0, hi=2**63 - 1, label="all", run_id="r1",
                           send_users=True, loyalty_dsn=dsn, state_dsn=dsn)


def _events(dsn):
    with psycopg.connect(dsn) as conn:
        bodies = conn.execute("SELECT body FROM moengage_sync.batches WHERE kind = 'events'").fetchall()
    return [e for (b,) in bodies for e in orjson.loads(bytes(b))["elements"]]


def test_missing_required_column_names_template_and_column(tiny, templates):
    path = templates / "events" / "points_redeemed.sql"
    path.write_text(path.read_text().replace("r.redeemed_at                    AS event_time,", ""))
    with pytest.raises(ContractError) as err:
        _run(tiny)
    message = str(err.value)
    assert "events/points_redeemed.sql" in message and "'event_time'" in message


def test_missing_member_attribute_names_it(tiny, templates):
    path = templates / "members" / "attributes.sql"
    path.write_text(path.read_text().replace("AS points_expiring_60d", "AS points_expiring_sixty"))
    with pytest.raises(ContractError, match=r"members/attributes.sql.*'points_expiring_60d'"):
        _run(tiny)


def test_reserved_attribute_name_is_refused(tiny, templates):
    path = templates / "events" / "points_expired.sql"
    path.write_text(path.read_text().replace("AS expiry_date", "AS moe_expiry"))
    with pytest.raises(ContractError, match=r"points_expired.sql.*'moe_expiry'.*moe_"):
        _run(tiny)


def test_analyst_extra_column_flows_through(tiny, templates):
    path = templates / "events" / "points_redeemed.sql"
    path.write_text(path.read_text().replace("r.item_sku                       AS item_sku",
                                             "r.item_sku AS item_sku, 'winter' AS campaign_tag, NULL::text AS empty_one"))
    path = templates / "members" / "attributes.sql"
    path.write_text(path.read_text().replace("AS points_expiring_90d", "AS points_expiring_90d, 'IN' AS home_country"))
    _run(tiny)
    redeemed = [e for e in _events(tiny) if e["actions"][0]["action"] == "loyalty_points_redeemed"]
    assert redeemed[0]["actions"][0]["attributes"]["campaign_tag"] == "winter"
    assert "empty_one" not in redeemed[0]["actions"][0]["attributes"]  # NULL is omitted, not sent as null
    with psycopg.connect(tiny) as conn:
        body = conn.execute("SELECT body FROM moengage_sync.batches WHERE kind = 'users'").fetchone()[0]
    users = orjson.loads(bytes(body))["elements"]
    assert all(u["attributes"]["home_country"] == "IN" for u in users)


def test_bad_values_are_quarantined_and_the_rest_proceeds(tiny, templates):
    path = templates / "events" / "points_expired.sql"
    path.write_text(path.read_text().replace("-l.points                        AS points,",
                                             "'lots'::text AS points, repeat('x', 600) AS note,"))
    stats = _run(tiny)
    assert stats["quarantined"]["non-numeric points"] == 1
    assert stats["events_enqueued"] == 15


DST_PROGRAM = """
INSERT INTO loyalty.programs (program_id, name, time_zone, earn_rate) VALUES ('dst', 'DST', 'America/New_York', 1);
INSERT INTO loyalty.tiers VALUES ('dst', 'Base', 1);
INSERT INTO loyalty.members (member_id, program_id, relation_reference, status, tier, enrolled_at)
  VALUES (10, 'dst', 'NY-1', 'active', 'Base', '2025-01-01 00:00+00');
INSERT INTO loyalty.points_ledger (entry_id, program_id, member_id, entry_type, points, earning_type, expires_on,
  occurred_at, recorded_at) VALUES
  (1, 'dst', 10, 'earn', 5, 'manual_bonus', '2027-03-08', '2026-03-08 06:30+00', '2026-03-08 06:30+00'),
  (2, 'dst', 10, 'earn', 7, 'manual_bonus', '2027-03-08', '2026-03-08 08:30+00', '2026-03-08 08:30+00'),
  (3, 'dst', 10, 'earn', 9, 'manual_bonus', '2027-03-09', '2026-03-09 04:30+00', '2026-03-09 04:30+00');
"""


def test_a_night_across_the_spring_daylight_saving_change(loyalty_db):
    # 2026-03-08 in New York has 23 hours: 05:00 UTC to 04:00 UTC the next day.
    start, end = Window.of_night(date(2026, 3, 7), "America/New_York").end, Window.of_night(date(2026, 3, 8), "America/New_York").end
    assert (start, end) == (datetime(2026, 3, 8, 5, tzinfo=timezone.utc), datetime(2026, 3, 9, 4, tzinfo=timezone.utc))
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(DST_PROGRAM)
    _run(loyalty_db, Window.for_interval(start, end, "America/New_York"), program="dst")
    got = {e["actions"][0]["attributes"]["points"]: e["actions"][0]["user_timezone_offset"] for e in _events(loyalty_db)}
    # 01:30 EST is UTC-5; 04:30 EDT is UTC-4; 00:30 on the 9th belongs to the next night
    assert got == {5: -18000, 7: -14400}


def test_the_autumn_night_has_25_hours():
    assert (Window.of_night(date(2026, 11, 1), "America/New_York").end - Window.of_night(date(2026, 10, 31), "America/New_York").end
            ).total_seconds() == 25 * 3600


def test_unsendable_values_are_quarantined_or_left_out(tiny, templates):
    path = templates / "events" / "points_expired.sql"
    path.write_text(path.read_text().replace("l.occurred_at                    AS event_time,",
                                             "'infinity'::timestamptz AS event_time,"))
    path = templates / "events" / "points_redeemed.sql"
    path.write_text(path.read_text().replace("r.item_sku                       AS item_sku",
                                             "r.item_sku AS item_sku, 'Infinity'::numeric AS weight, 'null'::jsonb AS extra"))
    stats = _run(tiny)
    assert stats["quarantined"]["event_time out of range"] == 1
    redeemed = [e for e in _events(tiny) if e["actions"][0]["action"] == "loyalty_points_redeemed"]
    assert "weight" not in redeemed[0]["actions"][0]["attributes"]
    assert "extra" not in redeemed[0]["actions"][0]["attributes"]
