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
                            **{"lookup": MoEngageHook(moengage_conn_id="moengage_default").existing_customers,
                               "seconds": 60, "since_days": 30, **kwargs})


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


def _age(dsn: str, ages: dict[str, str]) -> None:
    with psycopg.connect(dsn) as conn:
        for cid, interval in ages.items():
            conn.execute("UPDATE moengage_sync.customer_presence SET checked_at = now() - %s::interval "
                         "WHERE program_id = %s AND customer_id = %s", (interval, PROGRAM, cid))


class Recording:
    """The hook's Get User lookups, each request's customers recorded (and, optionally, slowed)."""

    def __init__(self, lookup, delay: float = 0.0) -> None:
        self.lookup, self.delay, self.calls = lookup, delay, []

    def __call__(self, customer_ids: list[str]) -> set[str]:
        import time

        self.calls.append(list(customer_ids))
        time.sleep(self.delay)
        return self.lookup(customer_ids)


def test_confirmations_near_expiry_are_renewed_first_and_an_erased_customer_is_found_gone(program, tmp_path):
    """Lifetime 168 h: a recently active customer confirmed 126 h ago or more (3/4 of it) is looked
    up again before the others, oldest first; one erased in MoEngage since is cached absent."""
    import requests

    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage_devtools.seed import seed_from_loyalty_db

    with sync_env(tmp_path, program, program_id=PROGRAM, time_zone=TZ, customers=()) as sandbox:
        seed_from_loyalty_db(sandbox, WORKSPACE, program, PROGRAM, missing_share=0.0)
        first = _refresh(program)
        recent = sorted(c for c, present in _presence(program).items() if present)
        oldest, older, young, unknown = recent[:4]
        _age(program, {oldest: "200 hours", older: "130 hours", young: "125 hours"})
        with psycopg.connect(program) as conn:
            conn.execute("DELETE FROM moengage_sync.customer_presence WHERE customer_id = %s", (unknown,))
        answer = requests.post(f"{sandbox.url}/sandbox/erase", json={"customer_ids": [oldest]}, timeout=10).json()
        assert answer["erased"] == {WORKSPACE: [oldest]}
        lookup = Recording(MoEngageHook(moengage_conn_id="moengage_default").existing_customers)
        second = _refresh(program, lookup=lookup)
        profiles = requests.get(f"{sandbox.url}/sandbox/workspaces/{WORKSPACE}/profiles", timeout=10).json()
    assert first["recent_customers"] == len(recent) and first["renewals_due"] == 0
    assert lookup.calls == [[oldest, older], [unknown]]          # renewals first, oldest first; not the young one
    assert (second["renewals_due"], second["renewals_checked"], second["renewals_gone"]) == (2, 2, 1)
    assert second["looked_up"] == 3 and second["already_known"] == len(recent) - 3 and second["not_reached"] == 0
    cache = _presence(program)
    assert cache[oldest] is False and cache[older] is True and cache[young] is True and cache[unknown] is True
    assert profiles["deleted_recreated"] == 0 and profiles["erased_ids"] == [oldest]   # lookups create nobody


def test_renewals_within_the_time_box_take_the_oldest_confirmations_and_count_the_rest(program, tmp_path):
    from loyalty_moengage.moengage.hook import MoEngageHook

    with sync_env(tmp_path, program, program_id=PROGRAM, time_zone=TZ, customers="all"):
        _refresh(program)
        recent = sorted(_presence(program))
        assert len(recent) > 30
        # 30 due, each an hour older than the next: the 20 oldest fit the box (one request).
        _age(program, {cid: f"{200 - i} hours" for i, cid in enumerate(recent[:30])})
        boxed = _refresh(program, seconds=0)
        lookup = Recording(MoEngageHook(moengage_conn_id="moengage_default").existing_customers, delay=2.5)
        partial = _refresh(program, seconds=2.0, lookup=lookup)
        lifetime_48 = _refresh(program, lifetime_hours=48, seconds=60)
    assert boxed["looked_up"] == 0 and boxed["renewals_due"] == 30
    assert boxed["not_reached"] == boxed["recent_customers"]      # 30 renewals + every other recent customer
    assert lookup.calls == [recent[:20]]
    assert partial["renewals_checked"] == 20 and partial["not_reached"] == 10 + partial["recent_customers"] - 30
    # The 10 left are due at the next run; a 48 h lifetime (renewed from 36 h) would renew them too.
    assert lifetime_48["renewals_due"] == 10 and lifetime_48["renewals_checked"] == 10


def test_an_import_is_confirmed_first_by_the_refresher(program, tmp_path):
    """Imported presence is not MoEngage's confirmation: its recently active customers are renewal
    candidates at once, whatever their age, and one MoEngage does not have is found absent."""
    from datetime import timedelta as td

    from loyalty_moengage.moengage.presence_import import import_presence

    with sync_env(tmp_path, program, program_id=PROGRAM, time_zone=TZ, customers="all") as sandbox:
        _refresh(program)
        recent = sorted(_presence(program))
        with psycopg.connect(program) as conn:
            conn.execute("DELETE FROM moengage_sync.customer_presence WHERE customer_id = ANY(%s)", (recent[:5],))
            conn.commit()
            import_presence(conn, program_id=PROGRAM, ids=iter(recent[:5]), lifetime=td(hours=168))
        sandbox.erase(WORKSPACE, [recent[0]])
        renewed = _refresh(program)
    assert (renewed["renewals_due"], renewed["renewals_checked"], renewed["renewals_gone"]) == (5, 5, 1)
    assert renewed["looked_up"] == 5
    cache = _presence(program)
    assert cache[recent[0]] is False and all(cache[c] for c in recent[1:5])
    with psycopg.connect(program) as conn:
        assert conn.execute("SELECT count(*) FROM moengage_sync.customer_presence WHERE imported").fetchone() == (0,)
