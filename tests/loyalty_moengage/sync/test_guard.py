"""The anomaly guard: what makes it hold a night, and what releasing or withdrawing does."""

from __future__ import annotations

from datetime import date, timedelta
from types import SimpleNamespace

import psycopg
import pytest

from loyalty_moengage.sync.outbox import delivery, enqueue
from loyalty_moengage.sync.send import guard
from loyalty_moengage.sync.report.stats import record_stats

NIGHT = date(2026, 11, 21)
PROGRAM = SimpleNamespace(id="p", min_members=10, reject_threshold=0.1, max_event_drop_pct=50.0,
                          anomaly_lookback_nights=7)


def _chunk(conn, run_id: str, *, members: int, events: int, quarantined: int, rows: int) -> None:
    record_stats(conn, program_id="p", night=NIGHT, run_id=run_id, stage="transform", key=f"c-{members}", stats={
        "rows_extracted": rows, "members_extracted": members, "events_enqueued": events,
        "events_already_sent": 0, "events_extracted": events, "quarantined": {"bad": quarantined}})


def _success_report(conn, night: date, events: int) -> None:
    conn.execute("INSERT INTO moengage_sync.run_reports (program_id, night, run_id, outcome, window_start, "
                 "window_end, events_extracted) VALUES ('p', %s, %s, 'success', now(), now(), %s)",
                 (night, f"r-{night}", events))


def test_a_normal_night_passes(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        _chunk(conn, "r", members=100, events=50, quarantined=1, rows=150)
        _success_report(conn, NIGHT - timedelta(days=1), 60)
        totals = guard.check(conn, program=PROGRAM, night=NIGHT, run_id="r")
    assert totals["problems"] == []
    assert (totals["members_extracted"], totals["events_extracted"], totals["quarantined"]) == (100, 50, 1)


def test_too_few_members_too_many_rejects_and_an_event_drop_are_each_named(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        _chunk(conn, "r", members=5, events=10, quarantined=5, rows=20)
        for d in (1, 2, 3):
            _success_report(conn, NIGHT - timedelta(days=d), 100)
        _success_report(conn, NIGHT - timedelta(days=20), 100_000)  # outside the lookback
        problems = guard.check(conn, program=PROGRAM, night=NIGHT, run_id="r")["problems"]
    assert len(problems) == 3
    assert "5 members extracted (min_members is 10)" in problems[0]
    assert "5 of 20 rows (25.0%) were quarantined" in problems[1] and "run_id = 'r'" in problems[1]
    assert "10 events tonight vs an average of 100" in problems[2]


def _batch(conn, state: str, kind: str = "events", run_id: str = "r") -> int:
    [bid] = enqueue.allocate_batch_ids(conn, 1)
    enqueue.insert_batches(conn, program_id="p", night=NIGHT, run_id=run_id, chunk_label="all", batch_ids=[bid],
                          batches=[enqueue.NewBatch(kind, b"{}", 1, int(kind == "users"), int(kind == "events"))])
    conn.execute("UPDATE moengage_sync.batches SET state = %s WHERE batch_id = %s", (state, bid))
    return bid


def test_release_makes_staged_batches_sendable(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        staged, sent = _batch(conn, "staged"), _batch(conn, "sent")
        assert guard.release_night(conn, "p", NIGHT) == 1
        states = dict(conn.execute("SELECT batch_id, state FROM moengage_sync.batches").fetchall())
    assert states == {staged: "pending", sent: "sent"}


def test_withdraw_removes_the_runs_staged_batches_their_keys_and_attribute_claims(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        events, sent = _batch(conn, "staged"), _batch(conn, "sent")
        _batch(conn, "staged", "users")
        enqueue.insert_event_keys(conn, f"p,e-1,{NIGHT},loyalty_points_earned,{events}\n"
                                       f"p,e-2,{NIGHT},loyalty_points_earned,{sent}\n".encode())
        assert enqueue.claim_attribute_chunk(conn, program_id="p", night=NIGHT, lo=0, hi=9, run_id="r",
                                            chunk_label="all") is None
        other = _batch(conn, "staged", run_id="another-run")
        assert guard.withdraw_night(conn, "p", NIGHT, "r") == 2
        left = conn.execute("SELECT batch_id FROM moengage_sync.batches").fetchall()
        keys = conn.execute("SELECT event_id FROM moengage_sync.event_keys").fetchall()
        markers = conn.execute("SELECT count(*) FROM moengage_sync.attribute_chunks").fetchone()[0]
    assert sorted(left) == sorted([(sent,), (other,)]) and keys == [("e-2",)] and markers == 0


# -- judged once ---------------------------------------------------------------------------------
def _verdicts(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT run_id, verdict FROM moengage_sync.night_verdicts WHERE night = %s",
                                 (NIGHT,)).fetchall())


def _guard_stats(dsn: str, run_id: str) -> dict:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT stats FROM moengage_sync.task_stats WHERE run_id = %s AND stage = 'guard'",
                            (run_id,)).fetchone()[0]


def test_a_night_released_once_is_not_held_by_a_rerun_after_a_backfill_filled_its_history(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        _chunk(conn, "scheduled", members=100, events=50, quarantined=0, rows=150)
        _chunk(conn, "manual", members=100, events=50, quarantined=0, rows=150)
    # The scheduled run: no history yet (no average to compare with), released.
    assert guard.guard_night(loyalty_db, program=PROGRAM, night=NIGHT, run_id="scheduled",
                             override=False)["released_batches"] == 0
    with psycopg.connect(loyalty_db) as conn:
        for d in (1, 2, 3):   # a backfill of the nights before
            _success_report(conn, NIGHT - timedelta(days=d), 1_000)
        staged = _batch(conn, "staged", run_id="manual")
    # A manual rerun of the same night, nothing new to say about it: not held, its totals recorded.
    totals = guard.guard_night(loyalty_db, program=PROGRAM, night=NIGHT, run_id="manual", override=False)
    stats = _guard_stats(loyalty_db, "manual")
    assert stats["problems"] == [] and stats["released_before"]["run_id"] == "scheduled"
    assert "50 events tonight vs an average of 1000" in stats["problems_after_release"][0]
    assert totals["released_batches"] == 1 and totals["events_extracted"] == 50
    assert _verdicts(loyalty_db) == {"scheduled": "released", "manual": "released"}
    with psycopg.connect(loyalty_db) as conn:
        assert conn.execute("SELECT state FROM moengage_sync.batches WHERE batch_id = %s", (staged,)).fetchone() == (
            "pending",)


def test_a_held_night_is_judged_afresh_by_the_next_run(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        _chunk(conn, "broken", members=5, events=50, quarantined=0, rows=150)
        _chunk(conn, "fixed", members=100, events=50, quarantined=0, rows=150)
        _chunk(conn, "later", members=5, events=50, quarantined=0, rows=150)
    with pytest.raises(guard.AnomalyError, match="5 members extracted"):
        guard.guard_night(loyalty_db, program=PROGRAM, night=NIGHT, run_id="broken", override=False)
    guard.guard_night(loyalty_db, program=PROGRAM, night=NIGHT, run_id="fixed", override=False)
    guard.guard_night(loyalty_db, program=PROGRAM, night=NIGHT, run_id="later", override=False)
    assert _verdicts(loyalty_db) == {"broken": "held", "fixed": "released", "later": "released"}
    assert _guard_stats(loyalty_db, "later")["released_before"]["run_id"] == "fixed"


def test_two_guards_of_a_night_decide_one_after_the_other(loyalty_db, monkeypatch):
    import threading

    from loyalty_moengage.sync.report import stats

    with psycopg.connect(loyalty_db) as conn:
        _chunk(conn, "scheduled", members=100, events=1_000, quarantined=0, rows=1_100)
        _chunk(conn, "manual", members=100, events=50, quarantined=0, rows=150)
        _success_report(conn, NIGHT - timedelta(days=1), 1_000)
    record_stats, deciding, go = stats.record_stats, threading.Event(), threading.Event()

    def pausing(conn, **kwargs):
        if kwargs["stage"] == "guard" and kwargs["run_id"] == "scheduled":
            deciding.set()             # the scheduled run's guard has decided, not committed yet
            assert go.wait(30)
        record_stats(conn, **kwargs)

    monkeypatch.setattr(stats, "record_stats", pausing)
    outcome: dict[str, object] = {}

    def run(run_id: str) -> None:
        try:
            outcome[run_id] = guard.guard_night(loyalty_db, program=PROGRAM, night=NIGHT, run_id=run_id,
                                                override=False)
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcome[run_id] = exc

    first = threading.Thread(target=run, args=("scheduled",))
    first.start()
    assert deciding.wait(30)
    second = threading.Thread(target=run, args=("manual",))
    second.start()
    second.join(1.5)
    waited = second.is_alive()
    go.set()
    first.join(30)
    second.join(30)
    assert isinstance(outcome["scheduled"], dict)
    assert isinstance(outcome["manual"], dict), outcome["manual"]    # judged once: not held
    assert _guard_stats(loyalty_db, "manual")["released_before"]["run_id"] == "scheduled"
    assert waited


# -- retried after a blip, never after an anomaly -------------------------------------------------
def test_a_guard_that_fails_midway_decides_nothing_and_its_retry_decides(loyalty_db, monkeypatch):
    from loyalty_moengage.sync.report import stats

    record_stats, blips = stats.record_stats, []

    def blip_once(conn, **kwargs):
        if kwargs["stage"] == "guard" and not blips:
            blips.append(kwargs["run_id"])
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        record_stats(conn, **kwargs)

    monkeypatch.setattr(stats, "record_stats", blip_once)
    with psycopg.connect(loyalty_db) as conn:
        _chunk(conn, "r", members=100, events=50, quarantined=0, rows=150)
        staged = _batch(conn, "staged")
    with pytest.raises(psycopg.OperationalError):
        guard.guard_night(loyalty_db, program=PROGRAM, night=NIGHT, run_id="r", override=False)
    with psycopg.connect(loyalty_db) as conn:   # nothing decided: released, but no verdict, is not a state
        assert conn.execute("SELECT state FROM moengage_sync.batches").fetchall() == [("staged",)]
    assert _verdicts(loyalty_db) == {}
    assert guard.guard_night(loyalty_db, program=PROGRAM, night=NIGHT, run_id="r", override=False)[
        "released_batches"] == 1
    assert _verdicts(loyalty_db) == {"r": "released"} and _guard_stats(loyalty_db, "r")["released_batches"] == 1

    blips.clear()   # the same for a withdrawal: all of it, or none of it
    with psycopg.connect(loyalty_db) as conn:
        _chunk(conn, "r2", members=5, events=50, quarantined=0, rows=150)
        conn.execute("DELETE FROM moengage_sync.night_verdicts")
        mine = _batch(conn, "staged", run_id="r2")
    with pytest.raises(psycopg.OperationalError):
        guard.guard_night(loyalty_db, program=PROGRAM, night=NIGHT, run_id="r2", override=False)
    with psycopg.connect(loyalty_db) as conn:
        assert conn.execute("SELECT state FROM moengage_sync.batches WHERE batch_id = %s", (mine,)).fetchone() == (
            "staged",)
    with pytest.raises(guard.AnomalyError, match="1 batch"):
        guard.guard_night(loyalty_db, program=PROGRAM, night=NIGHT, run_id="r2", override=False)
    assert staged != mine


def test_the_guard_task_retries_a_blip_but_fails_at_once_on_an_anomaly(loyalty_db, monkeypatch):
    from datetime import timezone

    from airflow.sdk.exceptions import AirflowFailException

    from loyalty_moengage.night import Window
    from loyalty_moengage.sync import tasks

    raised: list[BaseException] = []

    class Sink:
        def release(self, **kwargs):
            raise raised[-1]

    monkeypatch.setattr(tasks, "sink_for", lambda program, context: Sink())
    monkeypatch.setattr(tasks, "dsns", lambda program: (loyalty_db, loyalty_db))
    program = SimpleNamespace(id="p", time_zone="Asia/Kolkata")
    context = {"data_interval_start": Window.of_night(NIGHT - timedelta(days=1), "Asia/Kolkata").end.astimezone(
        timezone.utc), "data_interval_end": Window.of_night(NIGHT, "Asia/Kolkata").end.astimezone(timezone.utc),
        "run_id": "r", "params": {}, "ti": None}
    raised.append(guard.AnomalyError("Night held before sending anything: 5 members extracted"))
    with pytest.raises(AirflowFailException, match="5 members extracted"):
        tasks.guard(program, context)
    raised.append(psycopg.OperationalError("server closed the connection unexpectedly"))
    with pytest.raises(psycopg.OperationalError):   # not AirflowFailException: Airflow retries it
        tasks.guard(program, context)


def test_the_guard_task_has_the_dags_retries():
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    from loyalty_moengage.config.programs import load_programs

    dagbag = DagBag(dag_folder=str(Path(__file__).resolve().parents[3] / "dags"))
    programs = [p for p in load_programs() if p.enabled]
    assert programs
    for program in programs:
        task = dagbag.dags[program.dag_id].get_task("guard")
        assert task.retries == program.retries >= 1, (program.dag_id, task.retries)


def test_retention_forgets_old_verdicts_and_reliance(loyalty_db):
    from loyalty_moengage.sync.report.retention import enforce_retention

    old, recent = NIGHT - timedelta(days=40), NIGHT - timedelta(days=1)
    with psycopg.connect(loyalty_db) as conn:
        for night in (old, recent):
            conn.execute("INSERT INTO moengage_sync.night_verdicts (program_id, night, run_id, verdict) "
                         "VALUES ('p', %s, %s, 'released')", (night, f"r-{night}"))
            conn.execute("INSERT INTO moengage_sync.batch_reliance (batch_id, run_id, program_id, night) "
                         "VALUES (%s, 'r', 'p', %s)", (night.toordinal(), night))
            conn.execute("INSERT INTO moengage_sync.awaiting_reliance (program_id, event_id, run_id, night) "
                         "VALUES ('p', %s, 'r', %s)", (f"e-{night}", night))
        counts = enforce_retention(conn, program_id="p", night=NIGHT, retention_days=30, keep_sent_bodies=True)
        left = [conn.execute(f"SELECT night FROM moengage_sync.{t}").fetchall()
                for t in ("night_verdicts", "batch_reliance", "awaiting_reliance")]
    assert left == [[(recent,)]] * 3
    assert counts["night_verdicts_deleted"] == counts["batch_reliance_deleted"] == counts[
        "awaiting_reliance_deleted"] == 1
