"""
### Nightly loyalty -> MoEngage sync

One DAG per enabled program in `include/programs.yaml` (`moengage_sync_<program>`), run at
12 AM in the program's time zone for the night that just ended.

Load tasks run in the workspace's Airflow Pool (`moengage_<connection id>` unless the program
sets `workspace_pool`); the plugin creates it when a run starts if it is missing.

`preflight` (MoEngage credentials on the configured data centre, SQL template columns) ->
`plan` (member-id chunks) -> `transform` (mapped: SQL extract, row checks, payload batches
into the Postgres outbox) -> `guard` (anomaly checks before anything is sent) -> `load`
(mapped, paced sends; beside them each slot checks the customers the presence cache did not
know, at its share of the Get User API budget) -> `settle` (lost answers settled by their
receipts in MoEngage, and resent when MoEngage did not apply them) -> `report` (always runs;
writes `moengage_sync.run_reports`).

Reruns, cleared tasks and backfills never send an event twice: see README, "Backfills and reruns".
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task, teardown
from airflow.timetables.interval import CronDataIntervalTimetable

from loyalty_moengage.sync.ops import assets
from loyalty_moengage.sync import tasks
from loyalty_moengage.sync.ops.notify import failure_callbacks
from loyalty_moengage.config.programs import Program, load_programs


def build(program: Program):
    @dag(
        dag_id=program.dag_id,
        description=f"Nightly loyalty events and member attributes of {program.name} to MoEngage",
        schedule=CronDataIntervalTimetable("0 0 * * *", timezone=program.time_zone),
        start_date=pendulum.parse(str(program.start_date), tz=program.time_zone),
        catchup=program.catchup,
        max_active_runs=1,
        tags=["moengage", "loyalty", f"program:{program.id}"],
        doc_md=__doc__,
        default_args={"retries": program.retries, "retry_delay": timedelta(seconds=program.retry_delay_seconds),
                      "retry_exponential_backoff": True},
        params={
            "skip_anomaly_guard": Param(False, type="boolean", description="Send even if the anomaly guard objects"),
            "force_attributes": Param(False, type="boolean",
                                      description="Send every member's attributes again, even those MoEngage "
                                                  "already accepted for this night"),
            "dry_run": Param(False, type="boolean",
                             description="Extract and transform into a throwaway area and report what would be "
                                         "sent; nothing is enqueued or sent (docs/dry-run.md)"),
        },
        on_failure_callback=failure_callbacks(program),
    )
    def sync():
        @task
        def preflight(**context):
            return tasks.preflight(program, context)

        @task
        def plan(**context):
            return tasks.plan(program, context)

        @task(map_index_template="{{ chunk_label }}", max_active_tis_per_dagrun=tasks.TRANSFORM_CONCURRENCY)
        def transform(chunk: dict, **context):
            get_current_context()["chunk_label"] = chunk["label"]
            return tasks.transform(program, chunk, context)

        # The DAG's retries mend a database blip; a held night fails at once (tasks.guard).
        @task
        def guard(**context):
            return tasks.guard(program, context)

        # One Pool per MoEngage workspace, shared by every program sending to it: at most pool_slots
        # load tasks spend the budget at once, each at budget / pool_slots (docs/scale-out.md; a missing Pool would
        # leave them scheduled: sync/ops/workspace_pool.py creates it).
        @task(map_index_template="load slot {{ slot_label }}", pool=program.pool,
              execution_timeout=timedelta(minutes=program.load_timeout_minutes))
        def load(slot: int, **context):
            get_current_context()["slot_label"] = slot
            return tasks.load(program, slot, context)

        # Runs whatever the loads did: earlier nights' doubts are settled too.
        @task(trigger_rule="all_done", pool=program.pool)
        def settle(**context):
            return tasks.settle(program, context)

        # A night that ends success adds an event to the program's Asset (sync/ops/assets.py).
        @teardown(on_failure_fail_dagrun=True)
        @task(outlets=[assets.night_alias(program)])
        def report(**context):
            return tasks.report(program, context)

        chunks = plan()
        preflight() >> chunks
        transformed = transform.expand(chunk=chunks)
        checked = guard()
        loaded = load.expand(slot=list(range(program.load_parallelism)))
        transformed >> checked >> loaded >> settle() >> report()

    return sync()


for _program in load_programs():
    if _program.enabled:
        globals()[_program.dag_id] = build(_program)
