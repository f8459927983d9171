"""The presence refresher: recent customers first, due absences re-checked, within its time box."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import psycopg
import pytest

from loyalty_moengage_devtools.generator import generate
from tests.loyalty_moengage.sync.sync_env import WORKSPACE, sync_env

TZ = "Asia/Kolkata"
PROGRAM = "gen"


@pytest.fixture
def program(loyalty_db):
    today = datetime.now(timezone.utc).astimezone(ZoneInfo(TZ)).date()
    generate(loyalty_db, program_id=PROGRAM, members=300, days=10, seed=3, end_date=today, time_zone=TZ)
    return loyalty_db


def _presence(dsn: str) -> dict[str, bool]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT customer_id, present FROM moengage_sync.customer_presence").fetchall())


def _refresh(dsn: str, **kwargs):
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.ops.presence_refresh import refresh_presence

    return refresh_presence(program_id=PROGRAM, loyalty_dsn=dsn, state_dsn=dsn,
                            lookup=MoEngageHook(moengage_conn_id="moengage_default").existing_customers,
                            **{"seconds": 60, "since_days": 30, **kwargs})


def test_recent_customers_are_cached_and_a_second_run_looks_up_nothing(program, tmp_path):
    from loyalty_moengage_devtools.seed import seed_from_loyalty_db

    with sync_env(tmp_path, program, program_id=PROGRAM, time_zone=TZ, customers=()) as sandbox:
        seed_from_loyalty_db(sandbox, WORKSPACE, program, PROGRAM, missing_share=0.1)
        first = _refresh(program)
        known = set(sandbox.state.users(WORKSPACE))
        second = _refresh(program)
    cache = _presence(program)
    assert first["recent_customers"] > 0 and first["looked_up"] == first["recent_customers"] == len(cache)
    assert {c for c, present in cache.items() if present} == known & set(cache)
    assert first["found_absent"] > 0 and first["not_reached"] == 0
    assert second["looked_up"] == 0 and second["already_known"] == first["recent_customers"]   # absences too
    assert sandbox.state.events(WORKSPACE) == []      # presence only: nothing is sent


def test_a_due_absence_is_rechecked_and_the_time_box_leaves_the_rest_for_later(program, tmp_path):
    with sync_env(tmp_path, program, program_id=PROGRAM, time_zone=TZ, customers=()) as sandbox:
        boxed = _refresh(program, seconds=0)
        assert boxed["looked_up"] == 0 and boxed["not_reached"] == boxed["recent_customers"] > 0
        with psycopg.connect(program) as conn:
            conn.execute("INSERT INTO moengage_sync.customer_presence (program_id, customer_id, present, checked_at, "
                         "absent_checks) VALUES (%s, 'GONE-1', false, now() - interval '2 days', 1), "
                         "(%s, 'GONE-2', false, now() - interval '1 hour', 1)", (PROGRAM, PROGRAM))
        sandbox.seed_users(WORKSPACE, ["GONE-1"])      # added to MoEngage since
        # A window with no activity in it: only the due absence is left to check.
        later = _refresh(program, since_days=1, now=datetime.now(timezone.utc) + timedelta(days=400))
    assert later["recent_customers"] == 0 and later["absences_rechecked"] == 1   # GONE-2 is not due yet
    assert _presence(program)["GONE-1"] is True and _presence(program)["GONE-2"] is False


def test_the_dag_runs_hourly_outside_the_night_in_the_workspace_pool(program, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.test_bad_programs_file import ROOT

    with sync_env(tmp_path, program, program_id=PROGRAM, time_zone=TZ):
        bag = DagBag(dag_folder=str(ROOT / "dags" / "moengage_presence.py"))
        dag = bag.dags[f"moengage_presence_{PROGRAM}"]
        from loyalty_moengage.config.programs import get_program

        pool = get_program(PROGRAM).pool
    assert not bag.import_errors
    assert dag.timetable.summary == "0 1-22 * * *" and str(dag.timetable._timezone.name) == TZ
    assert [t.pool for t in dag.tasks] == [pool] and dag.max_active_runs == 1
