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


def _event_customers(dsn: str, night) -> dict[str, set[str]]:
    """The night's events as every template returns them, by customer: the event ids of each."""
    from loyalty_moengage.night import Window
    from loyalty_moengage.paths import sql_dir

    params = Window.of_night(night, TZ).params(PROGRAM, 0, 2**63 - 1)
    out: dict[str, set[str]] = {}
    with psycopg.connect(dsn, cursor_factory=psycopg.ClientCursor) as conn:   # as extract.py binds them
        for template in sorted((sql_dir() / "events").glob("*.sql")):
            cur = conn.execute(template.read_text(), params)
            names = [d.name for d in cur.description]
            for row in cur.fetchall():
                out.setdefault(row[names.index("customer_id")], set()).add(row[names.index("event_id")])
    return out


@pytest.fixture
def busy_program(loyalty_db):
    """Like ``program``, its last night (``_night()``) busier, so the two nights share customers."""
    generate(loyalty_db, program_id=PROGRAM, members=400, days=3, seed=5, end_date=_night() + timedelta(days=1),
             time_zone=TZ, last_night_activity=10.0)
    return loyalty_db


def test_customers_erased_in_moengage_get_no_event_once_their_presence_expired(busy_program, tmp_path):
    """The reproduced defect: a night confirms customers, MoEngage erases three of them (an erasure
    request), the presence lifetime passes; the next night's events for them must not be sent (each
    would recreate the erased profile) but held as not in MoEngage, and no profile is created."""
    import requests

    program = busy_program
    second = _night()
    first = second - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, time_zone=TZ, customers="all") as sandbox:
        assert str(run(PROGRAM, first, TZ).state) == "success"
        with psycopg.connect(program) as conn:
            confirmed = {c for c, in conn.execute("SELECT customer_id FROM moengage_sync.customer_presence "
                                                  "WHERE program_id = %s AND present", (PROGRAM,))}
        tomorrow = _event_customers(program, second)
        erased = sorted(confirmed & set(tomorrow))[:3]
        assert len(erased) == 3
        answer = requests.post(f"{sandbox.url}/sandbox/erase", json={"customer_ids": erased, "workspace_id": WORKSPACE},
                               timeout=10).json()
        assert answer == {"erased": {WORKSPACE: erased}, "not_found": []}
        # The lifetime passes (the default is 168 h): the whole cache is 8 days older.
        with psycopg.connect(program) as conn:
            conn.execute("UPDATE moengage_sync.customer_presence SET checked_at = checked_at - interval '8 days' "
                         "WHERE program_id = %s", (PROGRAM,))
        events_before = len(sandbox.state.events(WORKSPACE))
        assert str(run(PROGRAM, second, TZ).state) == "success"
        profiles = requests.get(f"{sandbox.url}/sandbox/workspaces/{WORKSPACE}/profiles", timeout=10).json()
        sent_after = sandbox.state.events(WORKSPACE)[events_before:]
    assert profiles["deleted_recreated"] == 0 and profiles["profiles_created"] == 0, profiles["recreated"]
    assert profiles["erased_ids"] == erased
    assert not {e["customer_id"] for e in sent_after} & set(erased)
    assert sent_after                                      # the others' events still went out
    held = set(_quarantined(program, second, erased))
    assert held >= set().union(*(tomorrow[c] for c in erased))   # quarantined as not in MoEngage
    with psycopg.connect(program) as conn:
        assert not conn.execute("SELECT count(*) FROM moengage_sync.event_keys WHERE program_id = %s AND event_id = "
                                "ANY(%s)", (PROGRAM, sorted(held))).fetchone()[0]
        assert conn.execute("SELECT count(*) FROM moengage_sync.customer_presence WHERE program_id = %s AND "
                            "customer_id = ANY(%s) AND NOT present", (PROGRAM, erased)).fetchone()[0] == 3
    (_, report) = reports(program, PROGRAM)
    assert report["outcome"] == "success"


def _quarantined(dsn: str, night, customers: list[str]) -> list[str]:
    """Event ids quarantined on ``night`` as not in MoEngage, for ``customers``."""
    from loyalty_moengage.sync.chunk.check import NOT_IN_MOENGAGE

    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT row_key FROM moengage_sync.quarantine WHERE program_id = %s AND night = %s AND template = "
            "'(presence)' AND reason = %s AND row_data->>'customer_id' = ANY(%s)",
            (PROGRAM, night, NOT_IN_MOENGAGE, customers))]
