"""Exactly-once delivery under the real Airflow scheduler, not one night at a time in dag.test().

A real stack (scheduler with LocalExecutor, dag-processor, api-server) runs the program's DAG:
the scheduled run of the newest night, then the README's backfill of three nights with
Airflow's default backfill concurrency (its own max_active_runs, 10, not the DAG's), overlapped
by a manual ``airflow dags trigger`` rerunning the newest night. The sandbox must have received
every enqueued event exactly once, and the run reports must add up to what it received.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from loyalty_moengage_devtools.airflow_stack import airflow_stack
from loyalty_moengage_devtools.drills import concurrent_backfill, program_env, scheduled_run, today_in

pytestmark = pytest.mark.scheduler

PROGRAM = "sched"
TZ = "Asia/Kolkata"


def test_backfill_overlapping_a_rerun_sends_each_event_once(loyalty_db, pg_server, tmp_path):
    started = time.monotonic()
    # The busy night is the oldest of the backfill (the data ends two nights ago): its batches are
    # what the backfill's runs, the cleared scheduled run and the manual rerun all may claim.
    today = today_in(TZ)
    with program_env(loyalty_db, tmp_path, program_id=PROGRAM, time_zone=TZ, members=1_000, days=5, seed=7,
                     last_night_activity=20.0, history_end=today - timedelta(days=2)) as env, \
            airflow_stack(pg_server, root=tmp_path / "airflow", keep_root=True, dag_ids=[env.dag_id]) as stack:
        first = scheduled_run(stack, env)
        after_first = len(env.events())
        # Network time per request (MoEngage's is real) keeps the runs' loads in flight together.
        env.sandbox.set_faults(latency=1.0)
        observed = concurrent_backfill(stack, env)
        result = env.audit()
        reports = env.reports()
        notes = {r["run_id"]: r["content"] for r in stack.query(
            "SELECT d.run_id, n.content FROM dag_run d JOIN dag_run_note n ON n.dag_run_id = d.id "
            "WHERE d.dag_id = %s", (env.dag_id,))}
    seconds = round(time.monotonic() - started, 1)
    story = json.dumps({"seconds": seconds, "scheduled_run": first["run_id"], "events_after_scheduled_run": after_first,
                        **observed, "audit": result.as_dict(),
                        "reports": [{k: str(v) for k, v in r.items()} for r in reports]}, indent=1, default=str)
    print(story)

    nights = {r["logical_date"] for r in observed["runs"] if r["backfill_id"] is not None}
    assert len(nights) == 3, f"the backfill should cover three nights: {story}"
    assert result.expected > 0, story
    assert result.duplicated == 0, (
        f"{result.duplicated} duplicate event(s) reached MoEngage ({result.duplicated_outside_uncertain} outside "
        f"batches reported uncertain), e.g. {result.duplicate_samples}; runs with tasks at once: "
        f"{observed['concurrency']['those_runs']}, overlapping loads: "
        f"{observed['concurrency']['run_pairs_with_overlapping_load_tries']}\n{story}")
    assert result.lost == 0 and result.unexpected == 0, f"events lost or unexplained: {result.summary()}\n{story}"
    assert result.received == result.expected, result.summary()
    assert result.received_by_event_name == result.keys_by_event_name, (
        "per event name, the sandbox and moengage_sync.event_keys disagree: "
        f"{result.received_by_event_name} != {result.keys_by_event_name}")
    # The run notes say the same per night: the note of each night's latest report's run.
    latest = {r["night"]: r for r in reports}
    for night, r in latest.items():
        assert notes.get(r["run_id"], "").startswith(f"night {night} ({TZ}): {r['events_sent']:,} events, "), (
            night, notes.get(r["run_id"]), r["events_sent"])
    # Each night's latest report counts that night's events, whichever run's slots delivered them.
    assert result.nights_miscounted == {}, (
        f"night: [events_sent in its latest report, events of that night the sandbox received] "
        f"{result.nights_miscounted}\n{story}")
    assert result.events_sent_in_run_reports == result.received, (
        f"the run reports say {result.events_sent_in_run_reports} events were sent; the sandbox received "
        f"{result.received}\n{story}")
    assert first["state"] == "success", f"the scheduled run failed; logs in {tmp_path / 'airflow' / 'logs'}\n{story}"
    assert all(r["state"] == "success" for r in observed["runs"]), f"not every run succeeded:\n{story}"
