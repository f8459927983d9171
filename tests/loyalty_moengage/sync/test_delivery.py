"""Exactly-once delivery: killed workers, unknown outcomes, backfills, old nights, retention, resend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import orjson
import psycopg
import pytest

from loyalty_moengage_devtools.generator import generate
from tests.loyalty_moengage.sync.sync_env import WORKSPACE, member_updates, reports, run, sync_env

TZ = "Asia/Kolkata"
PROGRAM = "gen"


def _today() -> date:
    return datetime.now(timezone.utc).astimezone(ZoneInfo(TZ)).date()


@pytest.fixture
def program(loyalty_db):
    generate(loyalty_db, program_id=PROGRAM, members=300, days=4, seed=7, end_date=_today(), time_zone=TZ)
    return loyalty_db


def _event_counts(sandbox) -> Counter:
    return Counter((e["customer_id"], e["action"], e["current_time"],
                    orjson.dumps(e["attributes"], option=orjson.OPT_SORT_KEYS)) for e in sandbox.state.events(WORKSPACE))


def _batches(dsn, **where):
    clause = " AND ".join(f"{k} = %({k})s" for k in where) or "true"
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT state, count(*), coalesce(sum(events), 0) FROM moengage_sync.batches "
                            f"WHERE {clause} GROUP BY state", where).fetchall()


def test_three_missed_nights_backfilled_in_order(program, tmp_path):
    nights = [_today() - timedelta(days=d) for d in (3, 2, 1)]
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        for night in nights:
            assert str(run(PROGRAM, night, TZ).state) == "success"
        counts = _event_counts(sandbox)
        assert counts and max(counts.values()) == 1
        user_updates = member_updates(sandbox)
    rows = reports(program, PROGRAM)
    assert [r["night"] for r in rows] == nights
    assert [r["attributes_skipped"] for r in rows] == [True, True, False]
    assert sum(r["events_sent"] for r in rows) == sum(counts.values())
    assert user_updates == rows[-1]["members_updated"] == 300


def test_an_old_night_after_a_newer_one_leaves_attributes_alone(program, tmp_path):
    newest, older = _today() - timedelta(days=1), _today() - timedelta(days=2)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        assert str(run(PROGRAM, newest, TZ).state) == "success"
        before = member_updates(sandbox)
        assert str(run(PROGRAM, older, TZ).state) == "success"
        after = member_updates(sandbox)
    assert before == after == 300
    new_report, old_report = reports(program, PROGRAM)
    assert old_report["attributes_skipped"] and old_report["events_sent"] > 0
    assert any("newer night" in n or "newest complete night" in n for n in old_report["notes"])


def test_lost_answers_settle_themselves_and_nothing_is_sent_twice(program, tmp_path):
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        # Answers lost after MoEngage applied the request, and connections dropped before it read it.
        sandbox.set_faults(drop_after_body_rate=0.25, drop_rate=0.1, seed=3)
        first = run(PROGRAM, night, TZ)
        sandbox.set_faults()
        counts = _event_counts(sandbox)
        updates = member_updates(sandbox)
    assert str(first.state) == "success"
    with psycopg.connect(program) as conn:
        keys = conn.execute("SELECT count(*) FROM moengage_sync.event_keys WHERE program_id = %s",
                            (PROGRAM,)).fetchone()[0]
        settled = dict(conn.execute("SELECT coalesce(settled_by, 'answer'), count(*) FROM moengage_sync.batches "
                                    "WHERE program_id = %s GROUP BY 1", (PROGRAM,)).fetchall())
    assert {s for s, _, _ in _batches(program, program_id=PROGRAM)} == {"sent"}
    assert len(counts) == sum(counts.values()) == keys and max(counts.values()) == 1   # nothing lost, nothing twice
    assert updates >= 300
    assert set(settled) - {"answer"}, settled    # the faults did hit: something was settled or resent
    (row,) = reports(program, PROGRAM)
    assert row["outcome"] == "success" and row["events_sent"] == keys and row["uncertain_batches"] == 0


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from datetime import date
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.send.load import load_slot
    hook = MoEngageHook(moengage_conn_id="moengage_default")
    load_slot(program_id=sys.argv[1], slot=0, night=date.fromisoformat(sys.argv[2]), run_id="run-k",
              state_dsn=sys.argv[3], hook=hook)
""")


def test_worker_killed_mid_load_then_rerun(program, tmp_path):
    from loyalty_moengage.sync.send.guard import release_night
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.send.load import load_slot
    from loyalty_moengage.night import Window
    from tests.loyalty_moengage.sync.sync_env import transform_chunk

    night = _today() - timedelta(days=1)
    window = Window.of_night(night, TZ)
    transform_chunk(program_id=PROGRAM, window=window, lo=0, hi=2**63 - 1, label="all", run_id="run-k",
                    send_users=True, loyalty_dsn=program, state_dsn=program)
    with psycopg.connect(program) as conn:
        release_night(conn, PROGRAM, night)  # what a passing anomaly guard does
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        sandbox.fail_next(None, "latency:30")  # the 2nd data request hangs
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, PROGRAM, night.isoformat(), program],
                                env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=open(tmp_path / "slot.log", "w"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if dict((s, n) for s, n, _ in _batches(program, program_id=PROGRAM)).get("sent", 0) >= 1:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)  # kill -9 while a batch is 'sending'
        proc.wait(10)
        sandbox.set_faults()
        # What Airflow does after a worker died: the next try of the same load slot.
        stats = load_slot(program_id=PROGRAM, slot=0, night=night, run_id="run-k", state_dsn=program,
                          hook=MoEngageHook(moengage_conn_id="moengage_default"), attempt=2)
        counts = _event_counts(sandbox)
    # The batch mid-POST was the users batch (claim order: events first): sent again, as
    # attribute updates are last-write-wins; an events batch would be uncertain (test_settle.py).
    assert stats["orphans_uncertain"] == 0
    assert {s for s, _, _ in _batches(program, program_id=PROGRAM)} == {"sent"}
    with psycopg.connect(program) as conn:
        assert ("resend", 1) in conn.execute("SELECT settled_by, lost_answers FROM moengage_sync.batches "
                                             "WHERE kind = 'users'").fetchall()
    assert max(counts.values()) == 1
    sent_events = sum(e for s, _, e in _batches(program, program_id=PROGRAM) if s == "sent")
    assert sum(counts.values()) == sent_events


def test_retention_drops_bodies_and_old_audit(program, tmp_path):
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all",
                  extra_program="    audit_retention_days: 30\n"):
        with psycopg.connect(program) as conn:
            conn.execute("INSERT INTO moengage_sync.event_keys VALUES (%s, 'old-1', %s, 'loyalty_points_earned', 1)",
                         (PROGRAM, night - timedelta(days=45)))
            conn.execute("INSERT INTO moengage_sync.quarantine (program_id, night, run_id, template, reason, row_data) "
                         "VALUES (%s, %s, 'old', 't', 'r', '{}')", (PROGRAM, night - timedelta(days=45)))
        assert str(run(PROGRAM, night, TZ).state) == "success"
    with psycopg.connect(program) as conn:
        assert conn.execute("SELECT count(*) FROM moengage_sync.batches WHERE body IS NOT NULL AND state = 'sent'"
                            ).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM moengage_sync.event_keys WHERE event_id = 'old-1'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM moengage_sync.quarantine WHERE run_id = 'old'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM moengage_sync.event_keys").fetchone()[0] > 0


def test_operator_resend_sends_the_night_once_more_and_is_recorded(program, tmp_path):
    from loyalty_moengage.sync.ops.resend import resend

    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        assert str(run(PROGRAM, night, TZ).state) == "success"
        first = sum(_event_counts(sandbox).values())
        result = resend(program, program_id=PROGRAM, night=night, all_events=True, requested_by="ops@example.com",
                        reason="MoEngage support ticket 123: events lost")
        assert result["event_keys_forgotten"] == first
        assert str(run(PROGRAM, night, TZ).state) == "success"
        counts = _event_counts(sandbox)
    assert sum(counts.values()) == 2 * first and set(counts.values()) == {2}
    with psycopg.connect(program) as conn:
        who, events = conn.execute("SELECT requested_by, events FROM moengage_sync.resend_requests").fetchone()
    assert who == "ops@example.com" and events == first


def test_batches_wait_for_their_nights_guard(program, tmp_path):
    """A night whose guard never ran (a chunk failed) is not sent by a later load."""
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.send.load import load_slot
    from loyalty_moengage.night import Window
    from tests.loyalty_moengage.sync.sync_env import transform_chunk

    night = _today() - timedelta(days=2)
    window = Window.of_night(night, TZ)
    transform_chunk(program_id=PROGRAM, window=window, lo=0, hi=2**63 - 1, label="all", run_id="run-s",
                    send_users=False, loyalty_dsn=program, state_dsn=program)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        stats = load_slot(program_id=PROGRAM, slot=0, night=night + timedelta(days=1), run_id="later",
                          state_dsn=program, hook=MoEngageHook(moengage_conn_id="moengage_default"))
        assert sandbox.state.events(WORKSPACE) == []
    assert stats["batches_sent"] == 0
    assert {s for s, _, _ in _batches(program, program_id=PROGRAM)} == {"staged"}


def test_a_rerun_of_the_newest_night_sends_no_attributes_again_unless_forced(program, tmp_path):
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        assert str(run(PROGRAM, night, TZ).state) == "success"
        after_first = member_updates(sandbox)
        assert str(run(PROGRAM, night, TZ).state) == "success"
        after_rerun = member_updates(sandbox)
        assert str(run(PROGRAM, night, TZ, conf={"force_attributes": True}).state) == "success"
        after_forced = member_updates(sandbox)
    assert after_first == after_rerun == 300
    assert after_forced == 600
    first, rerun, forced = reports(program, PROGRAM)
    # Each report counts the night (whichever run sent it); what each run enqueued is its own.
    assert (first["members_updated"], rerun["members_updated"], forced["members_updated"]) == (300, 300, 600)
    assert (first["members_enqueued"], rerun["members_enqueued"], forced["members_enqueued"]) == (300, 0, 300)


def test_reruns_record_each_quarantined_row_once(program, tmp_path):
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        with psycopg.connect(program) as conn:
            conn.execute("UPDATE loyalty.members m SET relation_reference = (ARRAY['unknown', 'null', 'guest'])[t.k] "
                         "FROM (SELECT member_id, row_number() OVER (ORDER BY member_id) AS k FROM loyalty.members "
                         "ORDER BY member_id LIMIT 3) t WHERE m.member_id = t.member_id")
        for _ in range(3):
            run(PROGRAM, night, TZ)
    with psycopg.connect(program) as conn:
        rows = conn.execute("SELECT template, reason, row_key, count(*) FROM moengage_sync.quarantine "
                            "GROUP BY 1, 2, 3 HAVING count(*) > 1").fetchall()
        total = conn.execute("SELECT count(*) FROM moengage_sync.quarantine").fetchone()[0]
    assert total >= 3 and rows == []
    assert {r["quarantined_by_reason"].get("customer_id is a value MoEngage refuses") for r in reports(program, PROGRAM)} == {
        reports(program, PROGRAM)[0]["quarantined_by_reason"]["customer_id is a value MoEngage refuses"]}


def test_a_night_that_has_not_ended_is_refused_before_anything_is_enqueued(program, tmp_path):
    from loyalty_moengage.cli import main

    today = _today()
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        assert main(["run", "--program", PROGRAM, "--night", today.isoformat()]) == 2
        dag_run = run(PROGRAM, today, TZ)  # `airflow dags test` / dag.test with a night not over
        assert sandbox.state.events(WORKSPACE) == []
    assert str(dag_run.state) == "failed"
    with psycopg.connect(program) as conn:
        assert conn.execute("SELECT count(*) FROM moengage_sync.event_keys").fetchone()[0] == 0


def test_resend_requeues_only_the_uncertain_batches(program, tmp_path):
    from loyalty_moengage.sync.ops.resend import resend, resolve

    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all",
                  extra_program="    keep_sent_bodies: true\n    verify_customers: false\n") as sandbox:
        # After the preflight's Get User check, the first events batch: accepted, but the answer is
        # lost; without customer checks no customer can carry a receipt, so it waits for a person.
        sandbox.fail_next(None, "drop_after_body")
        run(PROGRAM, night, TZ)
        uncertain = dict((s, e) for s, _, e in _batches(program, program_id=PROGRAM, kind="events"))["uncertain"]
        before = _event_counts(sandbox)
        result = resend(program, program_id=PROGRAM, night=night, requested_by="ops@example.com",
                        reason="checked MoEngage: not there")
        assert result["events_requeued"] == uncertain and result["event_keys_forgotten"] == 0
        assert str(run(PROGRAM, night, TZ).state) == "success"
        after = _event_counts(sandbox)
        assert resolve(program, program_id=PROGRAM, requested_by="ops", reason="nothing left")["batches_confirmed"] == 0
    accepted = sum(before.values())
    # Every event is there; only events of the uncertain batches can be there twice.
    assert set(after) >= set(before)
    assert sum(after.values()) - accepted == uncertain
    assert sum(n - 1 for n in after.values()) <= uncertain
    with psycopg.connect(program) as conn:
        scope, batches = conn.execute("SELECT scope, batches FROM moengage_sync.resend_requests "
                                      "ORDER BY request_id LIMIT 1").fetchone()
    assert scope == "uncertain" and batches >= 1


def test_uncertain_batches_need_attention_in_later_reports_until_resolved(program, tmp_path):
    from loyalty_moengage.sync.ops.resend import resolve

    older, newer = _today() - timedelta(days=2), _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all",
                  extra_program="    verify_customers: false\n") as sandbox:
        sandbox.fail_next(None, "drop_after_body")  # after the preflight's Get User check
        assert str(run(PROGRAM, older, TZ).state) == "failed"
        assert str(run(PROGRAM, newer, TZ).state) == "success"
        resolve(program, program_id=PROGRAM, night=older, requested_by="ops", reason="seen in MoEngage")
        assert str(run(PROGRAM, newer, TZ).state) == "success"
    first, second, third = reports(program, PROGRAM)
    assert first["outcome"] == "uncertain" and first["uncertain_batches"] >= 1
    assert [a["night"] for a in second["needs_attention"]] == [older.isoformat()]
    assert any("needs a person" in n and older.isoformat() in n for n in second["notes"])
    assert third["needs_attention"] == []


def test_two_runs_of_one_night_transforming_at_once_enqueue_each_event_once(program, tmp_path):
    from loyalty_moengage.night import Window
    from tests.loyalty_moengage.sync.sync_env import transform_chunk

    night = _today() - timedelta(days=1)
    window = Window.of_night(night, TZ)
    results: dict[str, dict] = {}

    def chunk(run_id: str) -> None:
        results[run_id] = transform_chunk(program_id=PROGRAM, window=window, lo=0, hi=2**63 - 1, label="all",
                                          run_id=run_id, send_users=True, loyalty_dsn=program, state_dsn=program)

    import threading

    threads = [threading.Thread(target=chunk, args=(f"run-{k}",)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    enqueued = [r["events_enqueued"] for r in results.values()]
    members = [r["members_enqueued"] for r in results.values()]
    with psycopg.connect(program) as conn:
        keys = conn.execute("SELECT count(*) FROM moengage_sync.event_keys").fetchone()[0]
        in_batches = conn.execute("SELECT sum(events), sum(users) FROM moengage_sync.batches").fetchone()
    assert len(results) == 3 and sum(enqueued) == keys == in_batches[0] > 0
    assert sorted(members) == [0, 0, 300] and in_batches[1] == 300


def test_resend_and_resolve_can_name_batches(loyalty_db):
    from loyalty_moengage.sync.outbox import delivery, enqueue
    from loyalty_moengage.sync.ops.resend import resend, resolve

    night = _today() - timedelta(days=1)
    with psycopg.connect(loyalty_db) as conn:
        ids = enqueue.allocate_batch_ids(conn, 3)
        enqueue.insert_batches(conn, program_id=PROGRAM, night=night, run_id="r", chunk_label="all", batch_ids=ids,
                              batches=[enqueue.NewBatch("events", b"{}", 1, 0, 1)] * 3)
        conn.execute("UPDATE moengage_sync.batches SET state = 'uncertain'")
    assert resend(loyalty_db, program_id=PROGRAM, batch_ids=[ids[0]], requested_by="ops", reason="missing")[
        "batches_requeued"] == 1
    assert resolve(loyalty_db, program_id=PROGRAM, batch_ids=[ids[1]], requested_by="ops", reason="arrived")[
        "batches_confirmed"] == 1
    with psycopg.connect(loyalty_db) as conn:
        states = dict(conn.execute("SELECT batch_id, state FROM moengage_sync.batches").fetchall())
    assert states == {ids[0]: "pending", ids[1]: "sent", ids[2]: "uncertain"}


def _enqueue_night(dsn: str, night: date, run_id: str) -> None:
    from loyalty_moengage.sync.send.guard import release_night
    from loyalty_moengage.night import Window
    from tests.loyalty_moengage.sync.sync_env import transform_chunk

    window = Window.of_night(night, TZ)
    transform_chunk(program_id=PROGRAM, window=window, lo=0, hi=2**63 - 1, label="all", run_id=run_id,
                    send_users=True, loyalty_dsn=dsn, state_dsn=dsn)
    with psycopg.connect(dsn) as conn:
        release_night(conn, PROGRAM, night)


def test_a_transient_failure_leaves_no_batch_sending(program, tmp_path):
    """A 503 on a users batch is an answer that does not name the request: the batch is sent again
    (attributes are last-write-wins), not left 'sending', and no event arrives twice."""
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.send.load import load_slot

    night = _today() - timedelta(days=1)
    _enqueue_night(program, night, "run-t")
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        sandbox.fail_next(None, 503)  # the second batch of the first claim (a users batch)
        first = load_slot(program_id=PROGRAM, slot=0, night=night, run_id="run-t", state_dsn=program,
                          hook=MoEngageHook(moengage_conn_id="moengage_default", max_retries=0))
        stats = load_slot(program_id=PROGRAM, slot=0, night=night, run_id="run-t", state_dsn=program,
                          hook=MoEngageHook(moengage_conn_id="moengage_default"), attempt=2)
        counts = _event_counts(sandbox)
    assert first["users_resent"] == 1 and stats["orphans_uncertain"] == 0
    assert {s for s, _, _ in _batches(program, program_id=PROGRAM)} == {"sent"}
    assert max(counts.values()) == 1


def test_policy_resend_resends_a_lost_answer_where_the_report_counts_it(program, tmp_path):
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.send.load import load_slot

    night = _today() - timedelta(days=1)
    _enqueue_night(program, night, "run-p")
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        sandbox.fail_next("drop_after_body")   # the events batch: MoEngage accepted it, the answer was lost
        stats = load_slot(program_id=PROGRAM, slot=0, night=night, run_id="run-p", state_dsn=program,
                          hook=MoEngageHook(moengage_conn_id="moengage_default"), uncertain_policy="resend")
        counts = _event_counts(sandbox)
    assert stats["batches_uncertain"] == stats["requeued_uncertain"] == 1
    assert {s for s, _, _ in _batches(program, program_id=PROGRAM)} == {"sent"}
    assert set(counts.values()) <= {1, 2}


def test_a_report_after_its_owner_died_mid_post_says_uncertain(program, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.outbox import delivery
    from loyalty_moengage.sync import tasks
    from loyalty_moengage.sync.send.lookups import check_awaiting
    from loyalty_moengage.night import Window

    night = _today() - timedelta(days=1)
    context = {"data_interval_start": Window.of_night(night - timedelta(days=1), TZ).end,
               "data_interval_end": Window.of_night(night, TZ).end, "run_id": "run-d", "params": {}, "ti": None}
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all"):
        p = get_program(PROGRAM)
        tasks.preflight(p, context)
        for chunk in tasks.plan(p, context):
            tasks.transform(p, chunk, context)
        tasks.guard(p, context)
        # Another slot's lookups enqueue the checked customers' events (lookups.py), so the
        # dead owner's claim is an events batch (claim order: events first).
        check_awaiting(program, program_id=PROGRAM, up_to_night=night, run_id="run-d", key="presence-test",
                       lookup=MoEngageHook(moengage_conn_id="moengage_default").existing_customers)
        dead = delivery.Owner(program_id=PROGRAM, run_id="run-d", slot=0)
        with psycopg.connect(program) as conn:
            [batch] = delivery.claim(conn, dead, 1, up_to_night=night)
            delivery.start_sending(conn, batch.batch_id, dead)
        tasks.load(p, 0, context)  # another slot sends the rest; the dead one's claim is still live
        with psycopg.connect(program) as conn:
            conn.execute("UPDATE moengage_sync.batches SET lease_expires_at = now() - interval '1 second' "
                         "WHERE batch_id = %s", (batch.batch_id,))
        with pytest.raises(AirflowFailException, match="uncertain"):
            tasks.report(p, context)
    (row,) = reports(program, PROGRAM)
    assert row["outcome"] == "uncertain" and row["uncertain_batches"] == 1
