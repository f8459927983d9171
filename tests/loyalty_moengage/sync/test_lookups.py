"""Presence lookups off the critical path (sync/send/lookups.py): attribute refreshes and events of
cached customers go out while the others are checked; no event for an unconfirmed customer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import psycopg
import pytest

from loyalty_moengage_devtools.generator import generate
from tests.loyalty_moengage.sync.sync_env import WORKSPACE, reports, run, sync_env

TZ = "Asia/Kolkata"
PROGRAM = "gen"


def _night():
    return datetime.now(timezone.utc).astimezone(ZoneInfo(TZ)).date() - timedelta(days=1)


@pytest.fixture
def program(loyalty_db):
    generate(loyalty_db, program_id=PROGRAM, members=400, days=3, seed=5, end_date=_night() + timedelta(days=1),
             time_zone=TZ)
    return loyalty_db


def _one(dsn: str, sql: str, *args):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchone()[0]


def test_attributes_go_out_while_unknown_customers_are_checked(program, tmp_path):
    from loyalty_moengage_devtools.seed import seed_from_loyalty_db

    night = _night()
    # Nothing cached: every customer with an event is looked up, in the load slots.
    with sync_env(tmp_path, program, program_id=PROGRAM, time_zone=TZ, customers=()) as sandbox:
        seed = seed_from_loyalty_db(sandbox, WORKSPACE, program, PROGRAM, missing_share=0.1)
        assert str(run(PROGRAM, night, TZ).state) == "success"
        requests = sandbox.state.requests(WORKSPACE)
        known = set(sandbox.state.users(WORKSPACE))
        events = sandbox.state.events(WORKSPACE)
    lookups = [r for r in requests if r["endpoint"] == "export"]
    users_posts = [r for r in requests if r.get("users") and not r.get("events")]
    assert lookups and users_posts and seed["missing"] > 0
    # The attribute refresh did not wait for the lookups.
    assert min(r["time"] for r in users_posts) < max(r["time"] for r in lookups)
    assert events and {e["customer_id"] for e in events} <= known    # no event for an unknown customer
    (report,) = reports(program, PROGRAM)
    assert report["outcome"] == "success" and report["events_sent"] == len(events)
    assert _one(program, "SELECT count(*) FROM moengage_sync.awaiting_presence") == 0
    unknown = _one(program, "SELECT count(*) FROM moengage_sync.quarantine WHERE template = '(presence)'")
    assert unknown > 0
    # Every extracted event is accounted for: sent, or quarantined with its key given back.
    assert _one(program, "SELECT count(*) FROM moengage_sync.event_keys WHERE batch_id IS NULL") == 0
    assert _one(program, "SELECT count(*) FROM moengage_sync.event_keys") == len(events)


def test_events_awaiting_a_check_are_not_looked_up_before_the_guard_releases_the_night(program, tmp_path):
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.night import Window
    from loyalty_moengage.sync.send.guard import release_night, withdraw_night
    from loyalty_moengage.sync.send.lookups import check_awaiting, pending_lookups
    from tests.loyalty_moengage.sync.sync_env import transform_chunk

    night = _night()
    with sync_env(tmp_path, program, program_id=PROGRAM, time_zone=TZ, customers="all") as sandbox:
        hook = MoEngageHook(moengage_conn_id="moengage_default")
        transform_chunk(program_id=PROGRAM, window=Window.of_night(night, TZ), lo=0, hi=2**63 - 1, label="all",
                        run_id="run-a", send_users=False, loyalty_dsn=program, state_dsn=program,
                        lookup=hook.existing_customers)
        waiting = _one(program, "SELECT count(*) FROM moengage_sync.awaiting_presence")
        assert waiting > 0
        stats = check_awaiting(program, program_id=PROGRAM, up_to_night=night, run_id="run-a", key="t",
                               lookup=hook.existing_customers)
        assert stats.get("customer_lookups", 0) == 0 and not [r for r in sandbox.state.requests(WORKSPACE)
                                                       if r["endpoint"] == "export"]
        with psycopg.connect(program) as conn:
            assert pending_lookups(conn, PROGRAM, night) == 0      # not released: not the slots' to wait for
            withdraw_night(conn, PROGRAM, night, "run-a")
        assert _one(program, "SELECT count(*) FROM moengage_sync.awaiting_presence") == 0
        assert _one(program, "SELECT count(*) FROM moengage_sync.event_keys") == 0   # a rerun extracts them again

        transform_chunk(program_id=PROGRAM, window=Window.of_night(night, TZ), lo=0, hi=2**63 - 1, label="all",
                        run_id="run-b", send_users=False, loyalty_dsn=program, state_dsn=program,
                        lookup=hook.existing_customers)
        with psycopg.connect(program) as conn:
            release_night(conn, PROGRAM, night)
            assert pending_lookups(conn, PROGRAM, night) == waiting
        stats = check_awaiting(program, program_id=PROGRAM, up_to_night=night, run_id="run-b", key="t",
                               lookup=hook.existing_customers, customers=3)
    assert stats["events_enqueued"] == waiting and stats.get("not_in_moengage", 0) == 0
    assert _one(program, "SELECT count(*) FROM moengage_sync.event_keys WHERE batch_id IS NULL") == 0
    assert _one(program, "SELECT count(*) FROM moengage_sync.batches WHERE kind = 'events' AND state = 'pending'") > 1
