"""The run report: outcomes, what needs attention, and counts that add up across runs."""

from __future__ import annotations

from datetime import date, datetime, timezone

import psycopg

from loyalty_moengage.night import Window
from loyalty_moengage.sync.outbox import delivery, enqueue
from loyalty_moengage.sync.report import outcome, render, report
from loyalty_moengage.sync.report.stats import StageSummary

NIGHT = date(2026, 11, 21)
PLAN = {"chunks": 2, "seconds": 0.1, "skip_reason": None}


def _assess(**kw):
    args = {"program_id": "p", "night": NIGHT, "plan_info": PLAN, "chunks_done": 2, "guard_info": {},
            "night_batches": {"sent": 3}, "attention": []}
    return outcome.assess(**{**args, **kw})


def test_success_only_when_every_batch_of_the_night_is_settled():
    assert _assess() == ("success", [])
    assert _assess(night_batches={"sent": 3, "rejected": 1})[0] == "success"
    outcome, notes = _assess(night_batches={"sent": 3, "pending": 2})
    assert outcome == "incomplete" and "2 batch(es) of night 2026-11-21 not sent yet" in notes[0]
    assert _assess(night_batches={"sent": 3, "uncertain": 1})[0] == "uncertain"
    assert _assess(night_batches={"pending": 1, "uncertain": 1})[0] == "incomplete"


def test_failed_and_held_runs_say_why():
    assert _assess(plan_info={}) == ("failed", ["the plan task did not finish"])
    outcome, notes = _assess(chunks_done=1)
    assert outcome == "failed" and notes == ["1 chunk(s) did not finish transforming"]
    outcome, notes = _assess(guard_info={"problems": ["too few members"]})
    assert outcome == "held" and notes == ["anomaly guard: too few members"]
    assert _assess(guard_info={"problems": ["x"], "overridden": True})[0] == "success"


def test_needs_attention_names_the_command_that_resolves_it():
    attention = [{"night": "2026-11-19", "state": "uncertain", "batches": 2, "events": 150, "users": 0},
                 {"night": "2026-11-20", "state": "pending", "batches": 1, "events": 9, "users": 0}]
    outcome, notes = _assess(attention=attention)
    assert outcome == "success"  # tonight is complete; the older nights are listed, not hidden
    assert notes[0].startswith("needs a person: 2 events batch(es) of night 2026-11-19")
    assert "`loyalty-moengage resend --program p --night 2026-11-19" in notes[0]
    assert "`loyalty-moengage resolve --program p --night 2026-11-19" in notes[0]
    assert "night 2026-11-20 are still pending" in notes[1]


def _batch(conn, night: date, state: str, *, events: int = 0, users: int = 0, sent_by: str | None = None) -> None:
    [bid] = enqueue.allocate_batch_ids(conn, 1)
    enqueue.insert_batches(conn, program_id="p", night=night, run_id="enqueuer", chunk_label="all", batch_ids=[bid],
                          batches=[enqueue.NewBatch("users" if users else "events", b"{}", 1, users, events)])
    conn.execute("UPDATE moengage_sync.batches SET state = %s, sent_by_run = %s WHERE batch_id = %s",
                 (state, sent_by, bid))


def test_each_report_counts_its_night_whichever_run_sent_it(loyalty_db):
    window = Window.of_night(NIGHT, "UTC")
    with psycopg.connect(loyalty_db) as conn:
        _batch(conn, NIGHT, "sent", events=10, sent_by="run-a")
        _batch(conn, date(2026, 11, 20), "sent", events=7, sent_by="run-a")   # an earlier night, sent by A
        _batch(conn, NIGHT, "sent", events=5, sent_by="run-b")
        _batch(conn, NIGHT, "sent", users=100, sent_by="run-b")
        _batch(conn, date(2026, 11, 19), "uncertain", events=3)
        built = {run: report.build(conn, program_id="p", window=window, run_id=run, outcome="success",
                                   stages=StageSummary(), notes=[]) for run in ("run-a", "run-b")}
    a, b = built["run-a"], built["run-b"]
    # The night's 15 events and 100 members, in both runs' reports; A also sent 7 of another night.
    assert (a["events_sent"], a["events_sent_other_nights"], a["members_updated"]) == (15, 7, 100)
    assert (b["events_sent"], b["events_sent_other_nights"], b["members_updated"]) == (15, 0, 100)
    assert a["batches_by_state"] == b["batches_by_state"] == {"sent": 3}
    assert a["needs_attention"] == [{"night": "2026-11-19", "state": "uncertain", "batches": 1, "events": 3,
                                     "users": 0}]
    assert "this run also sent 7 events of 1 other night(s)" in a["notes"]
    assert not b["notes"]
    text = render.render(a)
    assert "this run's load also sent 7 events of other nights" in text


def test_the_report_waits_for_batches_another_run_is_sending(loyalty_db):
    clock = iter(range(100))
    slept: list[float] = []
    with psycopg.connect(loyalty_db) as conn:
        _batch(conn, NIGHT, "pending", events=1)
        owner = delivery.Owner(program_id="p", run_id="other", slot=0)
        [held] = delivery.claim(conn, owner, 1, up_to_night=NIGHT)

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            if len(slept) == 2:  # the other run finishes its POST meanwhile
                delivery.start_sending(conn, held.batch_id, owner)
                delivery.finish(conn, held.batch_id, owner, "sent")
                conn.commit()

        left = delivery.wait_for_in_flight(conn, "p", NIGHT, timeout=50, sleep=sleep, clock=lambda: next(clock))
        assert left == 0 and len(slept) == 2
        slept.clear()
        _batch(conn, NIGHT, "pending", events=1)
        delivery.claim(conn, owner, 1, up_to_night=NIGHT)
        assert delivery.wait_for_in_flight(conn, "p", NIGHT, timeout=3, sleep=slept.append,
                                         clock=lambda: next(clock)) == 1
