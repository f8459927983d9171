"""The property test of delivery: a seeded handful of schedules keeps every event exactly once, and
the same harness fails a delivery broken on purpose (so a quiet run means something)."""

from __future__ import annotations

from collections import Counter

from loyalty_moengage_devtools.delivery_property import generate, run


def _kinds(summary) -> Counter:
    return Counter(v["kind"] for v in summary.violations)


def test_a_schedule_is_drawn_again_from_its_seed_and_index():
    assert generate(7, 3) == generate(7, 3)
    assert generate(7, 3) != generate(7, 4) != generate(8, 4)
    schedule = generate(7, 3)
    assert schedule.steps[0]["do"] == "load" and 3 <= len(schedule.steps) <= 10


def test_seeded_schedules_apply_every_enqueued_event_exactly_once(loyalty_db):
    summary = run(30, 1, dsn=loyalty_db)
    assert (summary.schedules, summary.failures) == (30, []), summary.failures[:3]
    assert summary.steps > 100
    # The schedules went where the bugs were: lost answers settled both ways, kills, overlaps, rude answers.
    outcomes = summary.outcomes
    assert outcomes["batches settled by receipt"] and outcomes["batches settled by absence"], outcomes
    assert outcomes["answered applied_error"] and outcomes["answered unapplied_lost"], outcomes
    assert summary.faults["kill_after_answer"] and summary.faults["kill_before_request"], summary.faults
    assert summary.faults["overlapping_load"] and summary.faults["later_try_takes_over"], summary.faults


def test_the_checker_catches_a_hook_that_resends_the_same_bytes_after_a_5xx(loyalty_db):
    """The old hook: a 5xx after MoEngage applied the body was retried with the same bytes."""
    summary = run(10, 1, dsn=loyalty_db, hook_kwargs={"retry_uncertain": True})
    assert _kinds(summary)["duplicate"] >= 1, summary.failures[:3]
    failure = next(f for f in summary.failures if any(v["kind"] == "duplicate" for v in f["violations"]))
    assert failure["replay"] == f"--replay 1:{failure['index']}"
    assert failure["schedule"] == generate(1, failure["index"]).describe()   # replayable from its seed


def test_the_checker_catches_a_settle_that_takes_any_answer_for_a_receipt(loyalty_db, monkeypatch):
    """A settle that marks every doubt sent: the requests MoEngage never read are lost."""
    from loyalty_moengage.sync.send import settle

    monkeypatch.setattr(settle, "_judge", lambda d, user, **kw: "receipt" if user is not None else None)
    summary = run(10, 1, dsn=loyalty_db)
    assert _kinds(summary)["lost"] >= 1, summary.failures[:3]
