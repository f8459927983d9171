"""The workspace Pool exists before any load task of a sync run is scheduled.

Load tasks run in one Airflow Pool per MoEngage workspace (``Program.pool``), and Airflow 3.3
never schedules a task whose Pool does not exist: a deployment that forgot `airflow pools set`
would see its nightly syncs hang with their loads `scheduled`. So the plugin's listener, called
by the scheduler when a sync run starts, creates a missing Pool with ``Program.pool_slots``
slots (a Pool someone made or resized is left alone). It uses a connection of its own, never
the scheduler's transaction, and a second scheduler creating the same Pool at the same moment
only loses the race.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

#: The nightly and the live DAGs: both send in the workspace Pool.
DAG_PREFIXES = ("moengage_sync_", "moengage_live_")


def ensure_pool(dag_id: str) -> str | None:
    """Create the Pool of the program behind ``dag_id`` if it is missing; returns its name when
    it was created."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.exc import IntegrityError

    from airflow import settings
    from airflow.models.pool import Pool

    from loyalty_moengage.config.programs import load_programs

    program = next((p for p in load_programs() if dag_id in (p.dag_id, p.live_dag_id)), None)
    if program is None or program.pool == "default_pool":
        return None
    # An engine of our own: the scheduler forbids commits in its session ("UNEXPECTED COMMIT").
    engine = create_engine(settings.SQL_ALCHEMY_CONN)
    table = Pool.__table__
    try:
        with engine.begin() as conn:
            if conn.execute(select(table.c.id).where(table.c.pool == program.pool)).first() is not None:
                return None
            conn.execute(table.insert().values(
                pool=program.pool, slots=program.pool_slots, include_deferred=False,
                description=f"MoEngage workspace budget ({program.moengage_conn_id}); created by loyalty-moengage"))
    except IntegrityError:
        return None
    finally:
        engine.dispose()
    log.warning("created the Airflow Pool %r with %d slots for the load tasks of %s (resize it with "
                "`airflow pools set`; docs/scale-out.md)", program.pool, program.pool_slots, dag_id)
    return program.pool


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    dag_id = str(getattr(dag_run, "dag_id", ""))
    if not dag_id.startswith(DAG_PREFIXES):
        return
    try:
        ensure_pool(dag_id)
    except Exception:  # the run goes on; a missing Pool shows as a DAG warning in the UI
        log.exception("could not make sure the workspace Pool of %s exists", dag_id)
