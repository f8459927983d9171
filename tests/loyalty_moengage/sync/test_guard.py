"""The anomaly guard: what makes it hold a night, and what releasing or withdrawing does."""

from __future__ import annotations

from datetime import date, timedelta
from types import SimpleNamespace

import psycopg

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
