"""
### MoEngage presence refresher

Fills the program's MoEngage presence cache (`moengage_sync.customer_presence`) ahead of the
nights, so the nightly sync (`moengage_sync_<program>`) looks few customers up: every hour from
01:00 to 22:00 in the program's time zone, for up to `presence_refresh_minutes` (default 45;
0 turns it off), it checks customers active in the last `presence_refresh_days` (template
`include/sql/presence/recent_customers.sql`, most recent first), then the cached absences whose
re-check is due. It runs in the workspace Pool, at a load task's share of the Get User API
budget, so it shares MoEngage's 1,000 users/min with the nights instead of adding to it. It
writes presence only: nothing is sent to MoEngage.

Programs with `verify_customers: false` have no refresher.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task
from airflow.timetables.trigger import CronTriggerTimetable

from loyalty_moengage.config.programs import Program, ProgramsFileError, load_programs
from loyalty_moengage.sync import tasks


def build(program: Program):
    @dag(
        dag_id=f"moengage_presence_{program.id}",
        description=f"MoEngage presence cache of {program.name}, refreshed outside the night",
        schedule=CronTriggerTimetable("0 1-22 * * *", timezone=program.time_zone),
        start_date=pendulum.parse(str(program.start_date), tz=program.time_zone),
        catchup=False,
        max_active_runs=1,
        tags=["moengage", "loyalty", f"program:{program.id}", "presence"],
        doc_md=__doc__,
        default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    )
    def presence():
        @task(pool=program.pool, execution_timeout=timedelta(minutes=program.presence_refresh_minutes + 10))
        def refresh(**context):
            return tasks.refresh_presence(program, context)

        refresh()

    return presence()


def _programs() -> list[Program]:
    try:
        return load_programs()
    except ProgramsFileError:
        return []   # moengage_sync.py reports it: one import error for one bad file


for _program in _programs():
    if _program.enabled and _program.verify_customers and _program.presence_refresh_minutes:
        globals()[f"moengage_presence_{_program.id}"] = build(_program)
