"""The live lane: events within minutes, exactly once with the night (sync/live/, docs/live.md).

A live run reads the events recorded since the last one through the night's own path and sends
them; a transaction still open holds its watermark so a row it commits later is read by the next
run; the night then sends only what the live runs did not."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import time

import psycopg
import pytest

from loyalty_moengage.night import Window, local_midnight
from loyalty_moengage.sync.live.window import MAX_CATCHUP, plan_window
from tests.loyalty_moengage.sync.sync_env import WORKSPACE, reports, run, sync_env
from tests.loyalty_moengage.sync.test_transform import FIXTURE

UTC = timezone.utc
MIN = timedelta(minutes=1)


# ---- the window --------------------------------------------------------------------------------

def _plan(now, *, oldest=None, previous=None, tz="Asia/Kolkata", lookback=10, hold=30):
    return plan_window(now=now, oldest_writer=oldest, previous=previous, time_zone=tz,
                       lookback=timedelta(minutes=lookback), max_hold=timedelta(minutes=hold))


def test_the_first_run_reads_the_program_day_so_far_at_most_the_catch_up():
    early = datetime(2026, 12, 6, 19, 0, 30, 250_000, tzinfo=UTC)     # 00:30:30.25 in Kolkata
    w = _plan(early)
    assert w.start == datetime(2026, 12, 6, 18, 30, tzinfo=UTC) and w.end == w.read_to == early.replace(microsecond=0)
    assert [p.night for p in w.nights("Asia/Kolkata")] == [date(2026, 12, 7)]
    late = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)                    # 09:30 in Kolkata
    assert _plan(late).start == late - MAX_CATCHUP


def test_the_next_run_reads_from_the_watermark_less_the_lookback():
    now = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
    w = _plan(now, previous=now - 2 * MIN, lookback=10)
    assert w.start == now - 12 * MIN and w.read_to == now and w.held_by is None


def test_an_open_writing_transaction_holds_the_watermark_not_the_read():
    now = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
    w = _plan(now, oldest=now - 5 * MIN, previous=now - 6 * MIN)
    assert w.end == now                                  # rows after it are read (and sent) now
    assert w.read_to == w.held_by == now - 5 * MIN       # the next run reads from its start again
    stuck = _plan(now, oldest=now - 45 * MIN, previous=now - 6 * MIN, hold=30)
    assert stuck.held_by is None and stuck.read_to == now    # older than max_hold: no longer held


def test_a_watermark_never_goes_back_and_a_long_pause_is_the_nights():
    now = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
    assert _plan(now, oldest=now - 5 * MIN, previous=now - 2 * MIN).read_to == now - 2 * MIN
    assert _plan(now, previous=now - timedelta(days=3)).start == now - MAX_CATCHUP


def test_a_window_across_midnight_is_cut_into_its_nights_on_a_daylight_saving_day():
    tz = "America/New_York"          # 2026-11-01: clocks go back at 02:00, the day has 25 hours
    midnight = local_midnight(date(2026, 11, 2), tz)
    w = _plan(midnight + 30 * MIN, previous=midnight - 20 * MIN, tz=tz, lookback=10)
    pieces = w.nights(tz)
    assert [(p.night, p.start, p.end) for p in pieces] == [
        (date(2026, 11, 1), midnight - 30 * MIN, midnight), (date(2026, 11, 2), midnight, midnight + 30 * MIN)]
    assert Window.of_night(date(2026, 11, 1), tz).end == midnight
    assert Window.of_night(date(2026, 11, 1), tz).end - Window.of_night(date(2026, 11, 1), tz).start == timedelta(hours=25)


# ---- end to end against the sandbox ---------------------------------------------------------------

def _zone_after_midnight() -> str:
    """A fixed-offset zone where it is between 00:00 and 01:00 now: yesterday's night is over and
    its last minutes are within a live run's reach (MAX_CATCHUP), whenever the test runs."""
    hours = (0 - datetime.now(UTC).hour) % 24
    hours = hours - 24 if hours > 14 else hours
    return f"Etc/GMT{-hours:+d}" if hours else "UTC"


LIVE = "    live:\n      enabled: true\n      lookback_minutes: 5\n"
KEEP = "    audit_retention_days: 3650\n    max_event_drop_pct: 100\n"
EARN = ("INSERT INTO loyalty.points_ledger (entry_id, program_id, member_id, entry_type, points, earning_type, "
        "expires_on, occurred_at, recorded_at) VALUES (%s, 'tiny', %s, 'earn', %s, 'campaign_bonus', "
        "'2099-01-01', {at}, {at})")


@pytest.fixture
def tiny(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
    return loyalty_db


def _earn(conn, entry_id: int, points: int, at: str = "now()") -> None:
    conn.execute(EARN.format(at=at), (entry_id, 1, points))


def _across_midnight() -> tuple[str, date, str]:
    """A zone just past its midnight, its today, and 3 minutes before that midnight (an SQL literal)."""
    tz = _zone_after_midnight()
    today = datetime.now(ZoneInfo(tz)).date()
    return tz, today, f"'{(local_midnight(today, tz) - 3 * MIN).isoformat()}'"


def _watermark_before(conn, at: str) -> None:
    """A live watermark a minute before ``at`` (an SQL timestamp literal): the next window starts there."""
    conn.execute("INSERT INTO moengage_sync.live_watermark (program_id, read_to, run_id) "
                 f"VALUES ('tiny', {at}::timestamptz - interval '1 minute', 'seed')")


def _live(dsn: str, airflow_run_id: str) -> dict:
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.live.run import LiveRun, run_live

    program = get_program("tiny")
    hook = MoEngageHook(moengage_conn_id=program.moengage_conn_id, share=1.0)
    return run_live(LiveRun.of(program, airflow_run_id, 1, dsn, dsn), hook=hook, lookup=hook.existing_customers)


def _earned(sandbox) -> Counter:
    """Points of each loyalty_points_earned event MoEngage received, by points (unique per test row)."""
    return Counter(e["attributes"]["points"] for e in sandbox.state.events(WORKSPACE)
                   if e["action"] == "loyalty_points_earned" and e["attributes"].get("points", 0) >= 9000)


def test_live_runs_send_within_the_run_catch_a_late_commit_and_the_night_sends_none_again(tiny, tmp_path):
    tz, today, yesterday_late = _across_midnight()
    with sync_env(tmp_path, tiny, time_zone=tz, extra_program=LIVE + KEEP) as sandbox:
        with psycopg.connect(tiny) as conn:
            # a watermark just before yesterday's end, so this run's window spans two nights
            _watermark_before(conn, yesterday_late)
            _earn(conn, 9001, 9001, at=yesterday_late)
            _earn(conn, 9002, 9002, at="now() - interval '2 seconds'")   # before this run's last (whole) second
        first = _live(tiny, "run-1")
        assert first["events_enqueued"] == 2 and first["events_sent"] == 2, first
        assert first["customers_confirmed"] == 1 and first["events_left_for_later_customers"] == 0  # REL-0001
        assert _earned(sandbox) == Counter({9001: 1, 9002: 1})

        late = psycopg.connect(tiny)                     # recorded_at = its start; committed after run 2
        _earn(late, 9003, 9003)
        second = _live(tiny, "run-2")
        assert second["held_by_open_transaction"] is not None and second["events_enqueued"] == 0
        late.commit()
        late.close()
        time.sleep(1.1)           # a window ends on a whole second: this one's must pass the late row's
        third = _live(tiny, "run-3")
        assert third["events_enqueued"] == 1 and third["events_already_sent"] >= 1   # 9002 read again, dropped
        assert _earned(sandbox) == Counter({9001: 1, 9002: 1, 9003: 1})
        # 9002 reached MoEngage seconds after its time; 9001 (3 minutes before last midnight) minutes after
        assert first["latency_buckets"]["15"] == 1 and sum(first["latency_buckets"].values()) == 2
        assert first["latency_max"] >= 180 and third["latency_buckets"]["15"] == 1

        from loyalty_moengage.config.programs import get_program
        from loyalty_moengage.ui import data, pages

        live = data.live_today(get_program("tiny"))
        assert live["runs"] == 3 and live["events_sent"] == 2 + 1 and live["lag_seconds"] < 60
        page = pages.history_page({**data.history(get_program("tiny")), "live": live})
        assert 'data-k="live_events">3<' in page and "Live lane" in page

        night = today - timedelta(days=1)
        assert str(run("tiny", night, time_zone=tz).state) == "success"
        assert _earned(sandbox) == Counter({9001: 1, 9002: 1, 9003: 1})      # the night sent none again
    [report] = [r for r in reports(tiny, "tiny") if r["night"] == night]
    assert report["events_already_sent"] >= 1 and report["outcome"] == "success"
    assert report["events_sent_live"] == 1          # 9001 is the night's; 9002 and 9003 are today's


def test_two_live_runs_never_overlap(tiny, tmp_path):
    from loyalty_moengage.sync.live.run import LiveRun

    with sync_env(tmp_path, tiny, extra_program=LIVE + KEEP):
        from loyalty_moengage.config.programs import get_program

        key = LiveRun.of(get_program("tiny"), "x", 1, tiny, tiny).lock_key
        with psycopg.connect(tiny, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
            skipped = _live(tiny, "run-1")
            assert skipped["skipped"] == "another live run of this program was running" and "lag_seconds" in skipped
        assert "skipped" not in _live(tiny, "run-2")


def test_an_event_of_a_customer_moengage_does_not_have_is_left_to_the_night_not_quarantined(tiny, tmp_path):
    """A member who enrolled minutes ago may get a MoEngage profile later: the live lane neither
    sends the event, nor quarantines it, nor caches the absence; the night asks again."""
    with sync_env(tmp_path, tiny, customers=("REL-0001",), extra_program=LIVE + KEEP) as sandbox:
        with psycopg.connect(tiny) as conn:
            conn.execute(EARN.format(at="now() - interval '2 seconds'"), (9101, 2, 9101))     # member 2: REL-0002
        stats = _live(tiny, "run-1")
        assert stats["events_left_for_later_customers"] == 1 and stats["events_enqueued"] == 0, stats
        assert _earned(sandbox) == Counter()
        with psycopg.connect(tiny) as conn:
            counts = [conn.execute(sql).fetchone()[0] for sql in (
                "SELECT count(*) FROM moengage_sync.event_keys WHERE event_id = 'earn-9101'",
                "SELECT count(*) FROM moengage_sync.quarantine WHERE program_id = 'tiny'",
                "SELECT count(*) FROM moengage_sync.awaiting_presence WHERE event_id = 'earn-9101'",
                "SELECT count(*) FROM moengage_sync.customer_presence WHERE customer_id = 'REL-0002'")]
        assert counts == [0, 0, 0, 0], counts      # no key, no quarantine row, no awaiting row, no cached absence


def test_a_live_run_never_releases_a_nights_staged_batch_and_paces_down_while_a_night_sends(tiny, tmp_path):
    from loyalty_moengage.sync.live.run import live_share
    from loyalty_moengage.sync.send.guard import release_run

    with sync_env(tmp_path, tiny, extra_program=LIVE + KEEP):
        _live(tiny, "warm")                                          # the state schema
        with psycopg.connect(tiny) as conn:
            assert live_share(tiny, ["tiny"], 0.05) == 1.0           # no night sending: the whole budget
            night_batch, live_batch, dead_batch = (conn.execute(
                "INSERT INTO moengage_sync.batches (program_id, night, run_id, chunk_label, kind, body, body_bytes, "
                "element_count, events) VALUES ('tiny', '2026-11-21', %s, 'c', 'events', '{}'::bytea, 2, 1, 1) "
                "RETURNING batch_id",
                (run_id,)).fetchone()[0] for run_id in ("scheduled__night", "live:other", "live:died-before-release"))
            for batch in (night_batch, live_batch):
                conn.execute("INSERT INTO moengage_sync.batch_reliance (program_id, batch_id, run_id, night) "
                             "VALUES ('tiny', %s, 'live:me', '2026-11-21')", (batch,))
            # the live batches (one relied on, one of a live run that died before its release), never the night's
            assert release_run(conn, "tiny", "live:me") == 2
            states = dict(conn.execute("SELECT batch_id, state FROM moengage_sync.batches WHERE batch_id = ANY(%s)",
                                       ([night_batch, live_batch, dead_batch],)).fetchall())
            assert states == {night_batch: "staged", live_batch: "pending", dead_batch: "pending"}
            conn.commit()
            assert live_share(tiny, ["tiny"], 0.05) == 0.05          # a night's batch waits: the live share


def test_a_live_post_answered_502_after_it_was_applied_is_settled_by_the_night_not_sent_again(tiny, tmp_path):
    """A rude MoEngage: the live run's request is applied, then its answer lost. The batch is in
    doubt (not counted in the lag); the night's settle reads its receipt, and nothing is sent twice."""
    tz, today, yesterday_late = _across_midnight()
    with sync_env(tmp_path, tiny, time_zone=tz, extra_program=LIVE + KEEP) as sandbox:
        with psycopg.connect(tiny) as conn:
            _watermark_before(conn, yesterday_late)
            _earn(conn, 9201, 9201, at=yesterday_late)
        sandbox.set_faults(drop_after_body_rate=1.0, endpoints=("transition",), limit=1)
        first = _live(tiny, "run-1")
        sandbox.set_faults()
        assert first["batches_uncertain"] == 1 and first["lag_seconds"] < 60, first
        assert _earned(sandbox) == Counter({9201: 1})               # applied, though its answer was lost
        assert _live(tiny, "run-2")["events_enqueued"] == 0         # read again, dropped: it is keyed
        night = today - timedelta(days=1)
        assert str(run("tiny", night, time_zone=tz).state) == "success"
        assert _earned(sandbox) == Counter({9201: 1})               # settled by its receipt, not resent
        with psycopg.connect(tiny) as conn:
            assert conn.execute("SELECT count(*) FROM moengage_sync.batches WHERE program_id = 'tiny' "
                                "AND state = 'uncertain'").fetchone()[0] == 0
