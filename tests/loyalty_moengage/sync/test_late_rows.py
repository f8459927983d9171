"""Late rows: a row recorded inside a night's window but committed after that night's run read it
(``recorded_at DEFAULT now()`` is the transaction's start; a replica's lag) is found by the next
run's lookback (``late_row_lookback_nights``), sent once, and counted as a late row."""

from __future__ import annotations

from collections import Counter
from datetime import date

import orjson
import psycopg
import pytest

from tests.loyalty_moengage.sync.sync_env import WORKSPACE, reports, run, sync_env
from tests.loyalty_moengage.sync.test_dry_run import _agree, _dry_report, _night_batches
from tests.loyalty_moengage.sync.test_sync_dag import NIGHT
from tests.loyalty_moengage.sync.test_transform import EXPECTED_EVENTS, FIXTURE

NEXT = date(2026, 11, 22)
NEXT_OWN_EVENTS = 1          # tiny_program.sql: entry 109, recorded after NIGHT, is NEXT's only event
# The nights stay within the audit retention whatever the date the tests run on; NEXT has 1 event
# against NIGHT's 16, which the anomaly guard would hold.
KEEP = "    audit_retention_days: 3650\n    max_event_drop_pct: 100\n"
LATE = {"points": 25, "earning_type": "campaign_bonus"}
# A lot earned before midnight, its transaction committed after NIGHT's run extracted: recorded_at
# (the transaction's start) is inside NIGHT's window [2026-11-20 18:30, 2026-11-21 18:30) UTC. It
# expires on NIGHT + 30 days, so NIGHT's expiring-soon template would have named it had it been seen.
LATE_ROW = ("INSERT INTO loyalty.points_ledger (entry_id, program_id, member_id, entry_type, points, earning_type, "
            "expires_on, occurred_at, recorded_at) VALUES (%s, 'tiny', %s, 'earn', 25, 'campaign_bonus', "
            "'2026-12-21', '2026-11-21 18:19:00+00', '2026-11-21 18:20:00+00')")


@pytest.fixture
def tiny(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
    return loyalty_db


def _commit_late(dsn: str, entry_id: int = 200, member_id: int = 1) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(LATE_ROW, (entry_id, member_id))


def _late_sent(sandbox) -> list[dict]:
    return [e for e in sandbox.state.events(WORKSPACE)
            if e["action"] == "loyalty_points_earned" and e["attributes"] == LATE]


def _per_event(sandbox) -> Counter:
    return Counter((e["customer_id"], e["action"], orjson.dumps(e["attributes"], option=orjson.OPT_SORT_KEYS),
                    e["current_time"]) for e in sandbox.state.events(WORKSPACE))


def _scalar(dsn: str, sql: str, *args):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchone()[0]


def test_a_row_committed_after_its_nights_run_is_sent_by_the_next_night_once(tiny, tmp_path):
    with sync_env(tmp_path, tiny, extra_program=KEEP) as sandbox:
        assert str(run("tiny", NIGHT).state) == "success"
        assert len(sandbox.state.events(WORKSPACE)) == len(EXPECTED_EVENTS)
        _commit_late(tiny)
        assert str(run("tiny", NEXT).state) == "success"
        late = _late_sent(sandbox)
        assert len(late) == 1, f"the late row was sent {len(late)} times (lost when 0)"
        assert late[0]["customer_id"] == "REL-0001" and late[0]["current_time"] == "2026-11-21T18:19:00Z"
        assert len(sandbox.state.events(WORKSPACE)) == len(EXPECTED_EVENTS) + NEXT_OWN_EVENTS + 1
        assert max(_per_event(sandbox).values()) == 1
        # expiring soon is not re-read: NIGHT's reminder for the late lot is not sent a night late
        assert not [e for e in sandbox.state.events(WORKSPACE) if e["action"] == "loyalty_points_expiring_soon"
                    and e["attributes"].get("points") == 25]
    first, second = reports(tiny, "tiny")
    assert first["late_rows_found"] == 0
    assert second["late_rows_found"] == 1
    # the night's own counts are the night's: the anomaly guard judges NEXT, not NIGHT again
    assert second["events_extracted"] == NEXT_OWN_EVENTS and second["events_already_sent"] == 0
    assert second["events_enqueued"] == second["events_sent"] == NEXT_OWN_EVENTS + 1
    assert any("1 late row(s)" in n and NIGHT.isoformat() in n for n in second["notes"])
    with psycopg.connect(tiny) as conn:
        assert conn.execute("SELECT night FROM moengage_sync.event_keys WHERE event_id = 'earn-200'").fetchone()[0] \
            == NEXT   # enqueued with the run that found it
        assert conn.execute("SELECT count(*) FROM moengage_sync.event_keys WHERE event_id LIKE 'expiring-200-%'"
                            ).fetchone()[0] == 0


def test_a_rerun_of_the_next_night_sends_nothing_twice(tiny, tmp_path):
    with sync_env(tmp_path, tiny, extra_program=KEEP) as sandbox:
        assert str(run("tiny", NIGHT).state) == "success"
        _commit_late(tiny)
        assert str(run("tiny", NEXT).state) == "success"
        sent = len(sandbox.state.events(WORKSPACE))
        assert str(run("tiny", NEXT).state) == "success"
        assert len(sandbox.state.events(WORKSPACE)) == sent
        assert len(_late_sent(sandbox)) == 1 and max(_per_event(sandbox).values()) == 1
    *_, rerun = reports(tiny, "tiny")
    assert rerun["late_rows_found"] == 0 and rerun["events_enqueued"] == 0
    # already sent counts the night's own events only, not the lookback's (every night would repeat them)
    assert rerun["events_already_sent"] == NEXT_OWN_EVENTS


def test_lookback_0_is_todays_behaviour(tiny, tmp_path):
    with sync_env(tmp_path, tiny, extra_program=KEEP + "    late_row_lookback_nights: 0\n") as sandbox:
        assert str(run("tiny", NIGHT).state) == "success"
        _commit_late(tiny)
        assert str(run("tiny", NEXT).state) == "success"
        assert _late_sent(sandbox) == []   # the defect, kept on request: the late row is never sent
        assert len(sandbox.state.events(WORKSPACE)) == len(EXPECTED_EVENTS) + NEXT_OWN_EVENTS
    _, second = reports(tiny, "tiny")
    assert second["late_rows_found"] == 0
    assert second["events_extracted"] == second["events_enqueued"] == second["events_sent"] == NEXT_OWN_EVENTS


def test_the_dry_run_counts_the_late_rows_the_real_run_sends(tiny, tmp_path):
    with sync_env(tmp_path, tiny, extra_program=KEEP):
        assert str(run("tiny", NIGHT).state) == "success"
        _commit_late(tiny)
        dry = _dry_report(tiny, run("tiny", NEXT, conf={"dry_run": True}).run_id)
        assert dry["late_rows_found"] == 1 and dry["lookback_nights"] == [NIGHT.isoformat()]
        assert dry["lookback_rows_read"] > 0
        assert _scalar(tiny, "SELECT count(*) FROM moengage_sync.event_keys WHERE event_id = 'earn-200'") == 0
        assert str(run("tiny", NEXT).state) == "success"
    _, real = reports(tiny, "tiny")
    _agree(dry, real, _night_batches(tiny, "tiny", NEXT))
    assert dry["late_rows_found"] == real["late_rows_found"] == 1


def test_the_lookbacks_bad_rows_are_kept_by_their_own_night_once_and_never_counted_again(tiny, tmp_path):
    """NIGHT quarantined its 3 'guest' rows; NEXT re-reads two of them (events) and a late bad row."""
    with sync_env(tmp_path, tiny, extra_program=KEEP):
        assert str(run("tiny", NIGHT).state) == "success"
        _commit_late(tiny, entry_id=201, member_id=3)   # member 3's customer id is 'guest'
        assert str(run("tiny", NEXT).state) == "success"
    with psycopg.connect(tiny) as conn:
        by_night = dict(conn.execute("SELECT night, count(*) FROM moengage_sync.quarantine GROUP BY night").fetchall())
        keys = {r[0] for r in conn.execute("SELECT row_key FROM moengage_sync.quarantine WHERE night = %s", (NIGHT,))}
        stats = conn.execute("SELECT stats FROM moengage_sync.task_stats WHERE night = %s AND stage = 'transform'",
                             (NEXT,)).fetchone()[0]
    assert by_night[NIGHT] == 3 + 1 and "earn-201" in keys   # the late bad row, under its own night; no duplicate
    assert by_night[NEXT] == 1                                  # NEXT's own: the 'guest' member
    assert stats["quarantined"] == {"customer_id is a value MoEngage refuses": 1}   # the reject share is NEXT's
    assert stats["late_rows_found"] == 0


def test_only_released_nights_within_retention_are_re_read(loyalty_db):
    from loyalty_moengage.sync.chunk.plan import lookback_nights
    from loyalty_moengage.sync.report.stats import record_stats

    guards = {date(2026, 11, 20): {"problems": []},                                  # released
              date(2026, 11, 19): {"problems": ["min_members"]},                      # held
              date(2026, 11, 18): {"problems": ["min_members"], "overridden": True},  # released by hand
              date(2026, 11, 15): {"problems": []}}                                   # past the retention
    with psycopg.connect(loyalty_db) as conn:
        for night, stats in guards.items():
            record_stats(conn, program_id="p", night=night, run_id=f"r-{night}", stage="guard", key="guard",
                         stats=stats)
        conn.commit()
        args = dict(program_id="p", night=date(2026, 11, 21), oldest=date(2026, 11, 16))
        assert lookback_nights(conn, nights=7, **args) == [date(2026, 11, 20), date(2026, 11, 18)]
        assert lookback_nights(conn, nights=1, **args) == [date(2026, 11, 20)]
        assert lookback_nights(conn, nights=0, **args) == []
        assert lookback_nights(conn, nights=7, **{**args, "program_id": "other"}) == []   # never synced


def test_only_templates_of_the_recorded_window_are_re_read():
    from loyalty_moengage.sync.chunk.contract import Template, load_templates
    from loyalty_moengage.sync.chunk.extract import reads_window

    windowed = {t.name for t in load_templates() if reads_window(t)}
    assert "events/points_expiring_soon.sql" not in windowed and "members/attributes.sql" not in windowed
    assert {"events/points_earned.sql", "events/points_redeemed.sql", "events/tier_changes.sql"} <= windowed
    assert not reads_window(Template("events/x.sql", "events", "-- uses %(window_start)s\nSELECT 1"))
