"""The synthetic loyalty generator, checked against a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import psycopg
import pytest

from loyalty_moengage_devtools.generator import GenerationSummary, generate, main

END = dt.date(2025, 3, 1)
TZ = "Asia/Kolkata"
MEMBERS, DAYS, SEED = 300, 5, 7


def _new_db(pg_server: str, template_db: str) -> tuple[str, str]:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"lm_g_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    params = conninfo_to_dict(pg_server)
    params["dbname"] = name
    return name, make_conninfo(**params)


def _drop_db(pg_server: str, name: str) -> None:
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def generated(pg_server, template_db):
    """One generated program shared by the read-only checks of this module."""
    name, dsn = _new_db(pg_server, template_db)
    summary = generate(dsn, members=MEMBERS, days=DAYS, seed=SEED, end_date=END, time_zone=TZ)
    yield dsn, summary
    _drop_db(pg_server, name)


def _rows(dsn: str, sql: str, params=None) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params or {}).fetchall()


def _one(dsn: str, sql: str, params=None):
    return _rows(dsn, sql, params)[0][0]


DIGEST_SQL = {
    "programs": "SELECT md5(string_agg((program_id, name, time_zone, earn_rate, currency, default_country, "
                "points_validity_days)::text, '|' ORDER BY program_id)) FROM loyalty.programs",
    "tiers": "SELECT md5(string_agg(t::text, '|' ORDER BY program_id, rank)) FROM loyalty.tiers t",
    "stores": "SELECT md5(string_agg(t::text, '|' ORDER BY store_id)) FROM loyalty.stores t",
    "segments": "SELECT md5(string_agg(t::text, '|' ORDER BY segment_id)) FROM loyalty.segments t",
    "members": "SELECT md5(string_agg(t::text, '|' ORDER BY member_id)) FROM loyalty.members t",
    "transactions": "SELECT md5(string_agg(t::text, '|' ORDER BY transaction_id)) FROM loyalty.transactions t",
    "redemptions": "SELECT md5(string_agg(t::text, '|' ORDER BY redemption_id)) FROM loyalty.redemptions t",
    "points_ledger": "SELECT md5(string_agg(t::text, '|' ORDER BY entry_id)) FROM loyalty.points_ledger t",
    "member_tier_changes": "SELECT md5(string_agg(t::text, '|' ORDER BY change_id)) FROM loyalty.member_tier_changes t",
    "member_status_changes": "SELECT md5(string_agg(t::text, '|' ORDER BY change_id)) FROM loyalty.member_status_changes t",
    "segment_memberships": "SELECT md5(string_agg(t::text, '|' ORDER BY membership_id)) FROM loyalty.segment_memberships t",
}


def _digest(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return {t: conn.execute(sql).fetchone()[0] for t, sql in DIGEST_SQL.items()}


def _counts(dsn: str) -> dict[str, int]:
    return {t: _one(dsn, f"SELECT count(*) FROM loyalty.{t}") for t in DIGEST_SQL}


# ---------------------------------------------------------------------------------------------


def test_summary_matches_database(generated):
    dsn, s = generated
    assert isinstance(s, GenerationSummary)
    assert s.nights == [(END - dt.timedelta(days=DAYS - i)).isoformat() for i in range(DAYS)]
    assert s.first_night == "2025-02-24" and s.last_night == "2025-02-28"
    assert _counts(dsn) == s.tables
    assert s.tables["members"] == MEMBERS and s.tables["stores"] >= 20 and s.tables["segments"] == 6
    assert sum(s.ledger_entry_types.values()) == s.tables["points_ledger"]
    assert sum(s.earning_types.values()) == s.ledger_entry_types["earn"]
    assert dict(_rows(dsn, "SELECT entry_type, count(*) FROM loyalty.points_ledger GROUP BY 1")) == {
        k: v for k, v in s.ledger_entry_types.items() if v}


def test_program_reference_rows(generated):
    dsn, _ = generated
    prog = _rows(dsn, "SELECT name, time_zone, earn_rate, currency, default_country, points_validity_days "
                      "FROM loyalty.programs WHERE program_id = 'demo'")
    assert prog == [("Demo Loyalty", TZ, Decimal("0.1000"), "INR", "IN", 365)]
    assert _rows(dsn, "SELECT tier, rank FROM loyalty.tiers ORDER BY rank") == [("Silver", 1), ("Gold", 2), ("Platinum", 3)]
    assert _one(dsn, "SELECT count(*) FROM loyalty.stores WHERE store_id = 'A123'") == 1
    assert _one(dsn, "SELECT count(*) FROM loyalty.members WHERE relation_reference !~ '^REL-[0-9]{8}$'") == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.members WHERE phone !~ '^\\+91[6-9][0-9]{9}$'") == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.members WHERE email IS NULL AND name IS NULL") >= 1
    statuses = {r[0] for r in _rows(dsn, "SELECT DISTINCT status FROM loyalty.members")}
    assert {"active", "inactive", "suspended"} <= statuses
    assert _one(dsn, "SELECT count(*) FROM loyalty.members WHERE enrolled_at >= %s::date", (END - dt.timedelta(days=DAYS),)) >= 0
    assert _one(dsn, "SELECT min(enrolled_at) FROM loyalty.members") < dt.datetime(2023, 1, 1, tzinfo=dt.UTC)


def test_balances_never_negative(generated):
    dsn, _ = generated
    # running member balance in recorded order
    assert _one(dsn, """
        SELECT count(*) FROM (
            SELECT sum(points) OVER (PARTITION BY member_id ORDER BY recorded_at, entry_id) AS bal
            FROM loyalty.points_ledger) x WHERE bal < 0""") == 0
    # running remaining of every lot in recorded order, and its final remaining
    assert _one(dsn, """
        SELECT count(*) FROM (
            SELECT sum(points) OVER (PARTITION BY coalesce(lot_entry_id, entry_id) ORDER BY recorded_at, entry_id) AS r
            FROM loyalty.points_ledger) x WHERE r < 0""") == 0
    # every debit/credit names a lot of the same member, recorded after the lot
    assert _one(dsn, """
        SELECT count(*) FROM loyalty.points_ledger d JOIN loyalty.points_ledger lot ON lot.entry_id = d.lot_entry_id
        WHERE lot.entry_type <> 'earn' OR lot.member_id <> d.member_id OR d.recorded_at <= lot.recorded_at""") == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.points_ledger WHERE entry_type <> 'earn' AND lot_entry_id IS NULL") == 0
    # balance per member = sum of lot remainings
    assert _one(dsn, """
        WITH lots AS (SELECT coalesce(lot_entry_id, entry_id) AS lot, member_id, sum(points) AS rem
                      FROM loyalty.points_ledger GROUP BY 1, 2)
        SELECT count(*) FROM (SELECT member_id, sum(rem) FROM lots GROUP BY 1
                              EXCEPT SELECT member_id, sum(points) FROM loyalty.points_ledger GROUP BY 1) x""") == 0


def test_earn_lots(generated):
    dsn, _ = generated
    bad = _one(dsn, """
        SELECT count(*) FROM loyalty.points_ledger l
        LEFT JOIN loyalty.transactions t ON t.transaction_id = l.transaction_id
        WHERE l.entry_type = 'earn' AND (
              l.expires_on <> (l.occurred_at AT TIME ZONE %(tz)s)::date + 365
           OR (l.earning_type = 'accrual') <> (t.transaction_id IS NOT NULL)
           OR (t.transaction_id IS NOT NULL AND (l.points <> floor(t.amount * 0.1) OR t.member_id <> l.member_id
                                                 OR t.occurred_at <> l.occurred_at OR t.currency <> 'INR'
                                                 OR t.channel NOT IN ('store', 'website', 'app', 'call_centre'))))""",
               {"tz": TZ})
    assert bad == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.transactions WHERE channel = 'store' AND store_id IS NULL") == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.transactions t WHERE NOT EXISTS "
                     "(SELECT 1 FROM loyalty.points_ledger l WHERE l.transaction_id = t.transaction_id)") == 0


def test_redemptions_and_reversals(generated):
    dsn, _ = generated
    # redemption points = sum of its redeem entries; reversal entries mirror them lot by lot
    assert _one(dsn, """
        SELECT count(*) FROM loyalty.redemptions r
        WHERE r.points <> -(SELECT sum(points) FROM loyalty.points_ledger l
                            WHERE l.redemption_id = r.redemption_id AND l.entry_type = 'redeem')
           OR (r.status = 'reversed') <> EXISTS (SELECT 1 FROM loyalty.points_ledger l
                            WHERE l.redemption_id = r.redemption_id AND l.entry_type = 'reversal')""") == 0
    assert _one(dsn, """
        SELECT count(*) FROM loyalty.points_ledger v
        WHERE v.entry_type = 'reversal' AND NOT EXISTS (
            SELECT 1 FROM loyalty.points_ledger d WHERE d.entry_type = 'redeem' AND d.redemption_id = v.redemption_id
              AND d.lot_entry_id = v.lot_entry_id AND d.points = -v.points AND d.recorded_at < v.recorded_at)""") == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.redemptions r JOIN loyalty.points_ledger v "
                     "ON v.redemption_id = r.redemption_id AND v.entry_type = 'reversal' "
                     "WHERE v.occurred_at <> r.reversed_at") == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.redemptions WHERE redemption_id !~ '^RD-[0-9]{6,}$'") == 0
    # FIFO: no redeem entry leaves an earlier-expiring, still-available lot of the member untouched
    assert _one(dsn, """
        WITH red AS (SELECT r.redemption_id, r.member_id, r.recorded_at, r.redeemed_at,
                            max(lot.expires_on) AS last_exp
                     FROM loyalty.redemptions r
                     JOIN loyalty.points_ledger d ON d.redemption_id = r.redemption_id AND d.entry_type = 'redeem'
                     JOIN loyalty.points_ledger lot ON lot.entry_id = d.lot_entry_id
                     GROUP BY 1, 2, 3, 4)
        SELECT count(*) FROM red JOIN loyalty.points_ledger lot
          ON lot.member_id = red.member_id AND lot.entry_type = 'earn'
         AND lot.recorded_at < red.recorded_at AND lot.occurred_at < red.redeemed_at
         AND lot.expires_on < red.last_exp
         AND lot.expires_on >= (red.redeemed_at AT TIME ZONE %(tz)s)::date + 2
        WHERE lot.points + coalesce((SELECT sum(x.points) FROM loyalty.points_ledger x
                                     WHERE x.lot_entry_id = lot.entry_id AND x.recorded_at <= red.recorded_at
                                       AND x.entry_type <> 'reversal'), 0) > 0""", {"tz": TZ}) == 0


def test_expiries(generated):
    dsn, s = generated
    # expire entries: at 00:00-00:30 local on the lot's expires_on, taking everything left
    assert _one(dsn, """
        SELECT count(*) FROM loyalty.points_ledger x JOIN loyalty.points_ledger lot ON lot.entry_id = x.lot_entry_id
        WHERE x.entry_type = 'expire' AND (
              (x.occurred_at AT TIME ZONE %(tz)s)::date <> lot.expires_on
           OR (x.recorded_at AT TIME ZONE %(tz)s)::time >= '00:31'
           OR lot.points + (SELECT sum(y.points) FROM loyalty.points_ledger y WHERE y.lot_entry_id = lot.entry_id) <> 0
           OR EXISTS (SELECT 1 FROM loyalty.points_ledger y WHERE y.lot_entry_id = lot.entry_id
                      AND y.recorded_at > x.recorded_at))""", {"tz": TZ}) == 0
    # every lot that expires inside the nights is fully used up, and none expires more than once
    assert _one(dsn, """
        SELECT count(*) FROM loyalty.points_ledger lot
        WHERE lot.entry_type = 'earn' AND lot.expires_on BETWEEN %(a)s AND %(b)s
          AND lot.points + coalesce((SELECT sum(y.points) FROM loyalty.points_ledger y
                                     WHERE y.lot_entry_id = lot.entry_id), 0) <> 0""",
                {"a": s.first_night, "b": s.last_night}) == 0
    assert _one(dsn, "SELECT count(*) FROM (SELECT lot_entry_id FROM loyalty.points_ledger WHERE entry_type = 'expire' "
                     "GROUP BY 1 HAVING count(*) > 1) x") == 0


NIGHTLY_SQL = """
WITH ev AS (
    SELECT 'earn:' || earning_type AS kind, recorded_at FROM loyalty.points_ledger WHERE entry_type = 'earn'
    UNION ALL SELECT entry_type, recorded_at FROM loyalty.points_ledger WHERE entry_type <> 'earn'
    UNION ALL SELECT 'redemption', recorded_at FROM loyalty.redemptions
    UNION ALL SELECT CASE WHEN tn.rank > tf.rank THEN 'tier_up' ELSE 'tier_down' END, c.recorded_at
              FROM loyalty.member_tier_changes c JOIN loyalty.members m USING (member_id)
              JOIN loyalty.tiers tf ON tf.program_id = m.program_id AND tf.tier = c.from_tier
              JOIN loyalty.tiers tn ON tn.program_id = m.program_id AND tn.tier = c.to_tier
    UNION ALL SELECT 'status:' || to_status, recorded_at FROM loyalty.member_status_changes
    UNION ALL SELECT 'segment_entered', entered_recorded_at FROM loyalty.segment_memberships
    UNION ALL SELECT 'segment_exited', exited_recorded_at FROM loyalty.segment_memberships
              WHERE exited_recorded_at IS NOT NULL
)
SELECT (recorded_at AT TIME ZONE %(tz)s)::date AS night, kind, count(*) FROM ev GROUP BY 1, 2
"""
REQUIRED_KINDS = {"earn:accrual", "earn:campaign_bonus", "earn:manual_bonus", "earn:tier_bonus", "redeem",
                  "redemption", "expire", "reversal", "tier_up", "tier_down", "status:active", "status:suspended",
                  "segment_entered", "segment_exited"}


def _assert_every_night(dsn: str, nights: list[str]) -> None:
    seen: dict[str, set[str]] = {}
    for night, kind, _n in _rows(dsn, NIGHTLY_SQL, {"tz": TZ}):
        seen.setdefault(night.isoformat(), set()).add(kind)
    for night in nights:
        missing = REQUIRED_KINDS - seen.get(night, set())
        assert not missing, f"night {night} lacks {sorted(missing)}"
    # nothing is recorded after the last night
    assert max(seen) <= nights[-1]


def test_every_event_type_every_night(generated):
    dsn, s = generated
    _assert_every_night(dsn, s.nights)


def test_tiny_program_still_covers_every_night(loyalty_db):
    s = generate(loyalty_db, members=50, days=4, seed=3, end_date=END, time_zone=TZ)
    _assert_every_night(loyalty_db, s.nights)


def test_expiring_soon_lots_every_night(generated):
    dsn, s = generated
    for night in s.nights:
        rows = _rows(dsn, """
            WITH w AS (SELECT ((%(night)s::date + 1)::timestamp AT TIME ZONE %(tz)s) AS window_end)
            SELECT lot.expires_on - %(night)s::date AS days_out, count(*)
            FROM loyalty.points_ledger lot, w
            WHERE lot.entry_type = 'earn' AND lot.recorded_at < w.window_end
              AND lot.expires_on IN (%(night)s::date + 30, %(night)s::date + 60, %(night)s::date + 90)
              AND lot.points + coalesce((SELECT sum(d.points) FROM loyalty.points_ledger d
                                         WHERE d.lot_entry_id = lot.entry_id AND d.recorded_at < w.window_end), 0) > 0
            GROUP BY 1""", {"night": night, "tz": TZ})
        assert {r[0] for r in rows} == {30, 60, 90}, night


def test_late_rows_every_night(generated):
    dsn, s = generated
    late = _rows(dsn, """
        SELECT (recorded_at AT TIME ZONE %(tz)s)::date, count(*) FROM (
            SELECT occurred_at, recorded_at FROM loyalty.points_ledger
            UNION ALL SELECT changed_at, recorded_at FROM loyalty.member_tier_changes
            UNION ALL SELECT changed_at, recorded_at FROM loyalty.member_status_changes
            UNION ALL SELECT redeemed_at, recorded_at FROM loyalty.redemptions) x
        WHERE (occurred_at AT TIME ZONE %(tz)s)::date + 1 = (recorded_at AT TIME ZONE %(tz)s)::date
          AND (occurred_at AT TIME ZONE %(tz)s)::time >= '23:50'
          AND (recorded_at AT TIME ZONE %(tz)s)::time BETWEEN '00:01' AND '00:20'
        GROUP BY 1""", {"tz": TZ})
    per_night = {d.isoformat(): n for d, n in late}
    for night in s.nights:
        assert per_night.get(night, 0) >= 3, night
    # no other row crosses local midnight between occurring and being recorded
    assert _one(dsn, """
        SELECT count(*) FROM loyalty.points_ledger
        WHERE (occurred_at AT TIME ZONE %(tz)s)::date <> (recorded_at AT TIME ZONE %(tz)s)::date
          AND NOT ((occurred_at AT TIME ZONE %(tz)s)::time >= '23:50'
                   AND (recorded_at AT TIME ZONE %(tz)s)::time BETWEEN '00:01' AND '00:20')""", {"tz": TZ}) == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.points_ledger WHERE recorded_at < occurred_at") == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.transactions WHERE recorded_at < occurred_at") == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.redemptions WHERE recorded_at < redeemed_at "
                     "OR reversed_at <= recorded_at") == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.segment_memberships WHERE entered_recorded_at < entered_at "
                     "OR exited_recorded_at < exited_at") == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.members WHERE recorded_at < enrolled_at") == 0


def test_status_and_tier_consistency(generated):
    dsn, _ = generated
    for table, frm, to, col in (("member_tier_changes", "from_tier", "to_tier", "tier"),
                                ("member_status_changes", "from_status", "to_status", "status")):
        assert _one(dsn, f"""
            SELECT count(*) FROM loyalty.members m
            JOIN LATERAL (SELECT {to} FROM loyalty.{table} c WHERE c.member_id = m.member_id
                          ORDER BY changed_at DESC, change_id DESC LIMIT 1) last ON true
            WHERE last.{to} <> m.{col}""") == 0
        # each change starts where the previous one ended
        assert _one(dsn, f"""
            SELECT count(*) FROM (
                SELECT {frm}, lag({to}) OVER (PARTITION BY member_id ORDER BY changed_at, change_id) AS prev
                FROM loyalty.{table}) x WHERE prev IS NOT NULL AND prev <> {frm}""") == 0
        assert _one(dsn, f"SELECT count(*) FROM loyalty.{table} c JOIN loyalty.members m USING (member_id) "
                         f"WHERE c.changed_at < m.enrolled_at OR c.recorded_at < c.changed_at") == 0
    assert _one(dsn, "SELECT count(*) FROM loyalty.members WHERE updated_at < recorded_at") == 0
    # tier_bonus earns go with upgrades
    assert _one(dsn, """
        SELECT count(*) FROM loyalty.points_ledger l WHERE l.earning_type = 'tier_bonus' AND NOT EXISTS (
            SELECT 1 FROM loyalty.member_tier_changes c WHERE c.member_id = l.member_id
              AND c.changed_at BETWEEN l.occurred_at - interval '1 minute' AND l.occurred_at)""") == 0


def test_segments(generated):
    dsn, _ = generated
    assert _one(dsn, "SELECT count(*) FROM loyalty.segment_memberships WHERE exited_recorded_at < entered_recorded_at") == 0
    # never two open memberships of one member in one segment
    assert _one(dsn, "SELECT count(*) FROM (SELECT member_id, segment_id FROM loyalty.segment_memberships "
                     "WHERE exited_at IS NULL GROUP BY 1, 2 HAVING count(*) > 1) x") == 0


def test_deterministic_and_rerun_safe(generated, pg_server, template_db):
    dsn, s = generated
    name, dsn2 = _new_db(pg_server, template_db)
    try:
        again = generate(dsn2, members=MEMBERS, days=DAYS, seed=SEED, end_date=END, time_zone=TZ)
        assert again.tables == s.tables
        assert _digest(dsn2) == _digest(dsn)
        # a re-run with replace=True replaces, it does not duplicate
        generate(dsn2, members=MEMBERS, days=DAYS, seed=SEED, end_date=END, time_zone=TZ)
        assert _digest(dsn2) == _digest(dsn)
        with pytest.raises(ValueError):
            generate(dsn2, members=MEMBERS, days=DAYS, seed=SEED, end_date=END, time_zone=TZ, replace=False)
        # another seed gives other data
        generate(dsn2, members=MEMBERS, days=DAYS, seed=SEED + 1, end_date=END, time_zone=TZ)
        assert _digest(dsn2)["points_ledger"] != _digest(dsn)["points_ledger"]
        # identity columns keep working for later inserts
        with psycopg.connect(dsn2) as conn:
            new_id = conn.execute(
                "INSERT INTO loyalty.members (program_id, relation_reference, tier, enrolled_at) "
                "VALUES ('demo', 'REL-NEW', 'Silver', now()) RETURNING member_id").fetchone()[0]
            assert new_id == MEMBERS + 1
            conn.execute("INSERT INTO loyalty.points_ledger (program_id, member_id, entry_type, points, earning_type, "
                         "expires_on, occurred_at, recorded_at) VALUES ('demo', %s, 'earn', 5, 'manual_bonus', "
                         "current_date + 365, now(), now())", (new_id,))
    finally:
        _drop_db(pg_server, name)


def test_second_program_coexists(loyalty_db):
    generate(loyalty_db, members=40, days=3, seed=1, end_date=END, time_zone=TZ)
    generate(loyalty_db, program_id="other", members=40, days=3, seed=1, end_date=END, time_zone="Europe/London")
    assert _one(loyalty_db, "SELECT count(DISTINCT program_id) FROM loyalty.members") == 2
    generate(loyalty_db, members=40, days=3, seed=1, end_date=END, time_zone=TZ)  # replace one, keep the other
    assert dict(_rows(loyalty_db, "SELECT program_id, count(*) FROM loyalty.members GROUP BY 1")) == {"demo": 40, "other": 40}


def test_cli_prints_summary(loyalty_db, capsys):
    assert main(["--dsn", loyalty_db, "--members", "30", "--days", "2", "--seed", "5", "--program", "cli_demo",
                 "--end-date", "2025-01-10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["program_id"] == "cli_demo" and out["tables"]["members"] == 30
    assert out["first_night"] == "2025-01-08" and out["last_night"] == "2025-01-09"


def test_applies_schema_when_missing(empty_db):
    s = generate(empty_db, members=20, days=1, seed=2, end_date=END, time_zone=TZ)
    assert _one(empty_db, "SELECT count(*) FROM loyalty.members") == s.tables["members"] == 20


def _indexes_and_constraints(dsn: str) -> set[tuple]:
    return set(_rows(dsn, "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class c "
                          "ON c.oid = i.indrelid WHERE c.relnamespace = 'loyalty'::regnamespace")
               + _rows(dsn, "SELECT conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid) || "
                            "CASE WHEN convalidated THEN '' ELSE ' (not validated)' END FROM pg_constraint "
                            "WHERE connamespace = 'loyalty'::regnamespace"))


def test_alone_in_its_database_the_load_rebuilds_every_index_and_key_it_dropped(generated, pg_server, template_db,
                                                                                 capsys):
    """The program alone in its database is loaded without its secondary indexes and foreign keys,
    which come back as they were, validated; next to another program nothing is dropped."""
    dsn, _ = generated
    name, schema_only = _new_db(pg_server, template_db)
    try:
        assert _indexes_and_constraints(dsn) == _indexes_and_constraints(schema_only)
        assert len(_indexes_and_constraints(dsn)) > 40
        generate(schema_only, program_id="beside", members=20, days=2, seed=1, end_date=END, time_zone=TZ)
        generate(schema_only, members=MEMBERS, days=DAYS, seed=SEED, end_date=END, time_zone=TZ)
        assert _indexes_and_constraints(dsn) == _indexes_and_constraints(schema_only)
    finally:
        _drop_db(pg_server, name)
    err = capsys.readouterr().err
    assert "generator beside: building indexes and foreign keys" in err       # alone: dropped and rebuilt
    assert "generator demo: building indexes and foreign keys" not in err     # beside another: left alone


def test_every_phase_says_when_it_ends_off_a_terminal(pg_server, template_db, capsys):
    name, dsn = _new_db(pg_server, template_db)
    try:
        generate(dsn, members=20, days=2, seed=1, end_date=END, time_zone=TZ)
    finally:
        _drop_db(pg_server, name)
    lines = capsys.readouterr().err.splitlines()
    for phase in ("simulating 20 members over 2 nights", "building tables", "COPY loyalty.members",
                  "COPY loyalty.points_ledger", "building indexes and foreign keys", "VACUUM ANALYZE"):
        assert any(line.startswith(f"generator demo: {phase}: ") and "done in" in line for line in lines), (phase, lines)
    assert not any("\r" in line for line in lines)
