"""
### Live loyalty -> MoEngage events

One DAG per program whose programs-file entry has `live: {enabled: true}`
(`moengage_live_<program>`), run every `live.every_minutes` minutes: the loyalty events
recorded since the last run go to MoEngage through the nightly sync's own templates, row
checks, presence gate and outbox, within minutes of their commit. The nightly DAG still runs:
it sends what the live runs did not (late rows, expiring-soon reminders, the attribute refresh),
and never an event a live run sent (docs/live.md).

One task, `live`, in the workspace's Pool (the night's load tasks come first: it waits at most
for the night's sends), at the live lane's share of the send budget. Runs never overlap.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task
from airflow.timetables.trigger import CronTriggerTimetable

from loyalty_moengage.config.programs import Program, ProgramsFileError, load_programs
from loyalty_moengage.sync import tasks
from loyalty_moengage.sync.ops.notify import failure_callbacks


def build(program: Program):
    every = program.live.every_minutes

    @dag(
        dag_id=program.live_dag_id,
        description=f"Loyalty events of {program.name} to MoEngage within minutes",
        schedule=CronTriggerTimetable(f"*/{every} * * * *", timezone="UTC"),
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(minutes=max(10, 5 * every)),
        tags=["moengage", "loyalty", "live", f"program:{program.id}"],
        doc_md=__doc__,
        default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
        on_failure_callback=failure_callbacks(program),
    )
    def live():
        @task(pool=program.pool, priority_weight=10, execution_timeout=timedelta(minutes=max(5, 4 * every)))
        def send_live(**context):
            return tasks.live(program, context)

        send_live()

    return live()


def _programs() -> list[Program]:
    try:
        return load_programs()
    except ProgramsFileError:
        return []    # moengage_sync.py reports a broken programs file, once


for _program in _programs():
    if _program.enabled and _program.live.enabled:
        globals()[_program.live_dag_id] = build(_program)
