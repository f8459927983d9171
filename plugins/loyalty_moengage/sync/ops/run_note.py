"""Each DAG run's note says its night and outcome, where Airflow lists runs (grid, runs list).

The Task SDK gives a task no way to change its own DAG run: the Execution API a task talks to
can trigger a run with a note, not patch one, and tasks have no metadata-database access. The
public REST API can (``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}`` with ``note``), but only
with a user's token, i.e. a credential stored for the task. So the note is set by an Airflow
**listener** (a documented plugin extension point, ``AirflowPlugin.listeners``): the scheduler
calls ``on_dag_run_running/success/failed`` with the DagRun it is updating, inside its own
session, and the listener sets ``dag_run.note`` there (what the REST API itself does). The text
(``render.note``) comes from the ``report`` task, which pushes it as the XCom ``moengage_run_note`` (before it
fails the task for an outcome other than success); the listener reads that XCom from the
metadata database with one plain SELECT in the scheduler's transaction (no savepoint: the
scheduler forbids any commit inside its loop).

Notes written by people are kept: only an empty note or one this module wrote is replaced.
Airflow 3.3 has no display name for a DAG run; the note is the place runs are labelled.

Kept cheap at import: every Airflow process loads plugins.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

XCOM_KEY = "moengage_run_note"
DAG_PREFIX = "moengage_sync_"
OURS = ("night ", "DRY RUN night ")
MAX_NOTE = 1000   # the REST API's limit on a note


def push(context: dict[str, Any], note: str) -> None:
    """Hand the note to the listener (an XCom of the report task)."""
    ti = context.get("ti")
    if ti is None or not hasattr(ti, "xcom_push"):
        return
    try:
        ti.xcom_push(key=XCOM_KEY, value=note[:MAX_NOTE])
    except Exception as exc:  # the report is what matters; the note is its echo
        log.warning("could not hand the run note over: %s", exc)


def _night_label(dag_run: Any) -> str:
    from loyalty_moengage.config.programs import load_programs
    from loyalty_moengage.night import from_context

    program = next((p for p in load_programs() if p.dag_id == dag_run.dag_id), None)
    if program is None:
        return "night ?"
    w = from_context(program.time_zone, {"data_interval_start": dag_run.data_interval_start,
                                         "data_interval_end": dag_run.data_interval_end,
                                         "logical_date": dag_run.logical_date, "dag_run": dag_run})
    dry = "DRY RUN " if (dag_run.conf or {}).get("dry_run") else ""
    return f"{dry}night {w.night} ({program.time_zone})"


def _from_xcom(session: Any, dag_run: Any) -> str | None:
    from sqlalchemy import select

    from airflow.models.xcom import XComModel

    value = session.scalar(select(XComModel.value).where(
        XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id,
        XComModel.task_id == "report", XComModel.key == XCOM_KEY, XComModel.map_index == -1))
    if value is None:
        return None
    if isinstance(value, str) and value.startswith('"'):
        import json

        value = json.loads(value)
    return str(value)


def _set(dag_run: Any, final: str | None) -> None:
    if not str(getattr(dag_run, "dag_id", "")).startswith(DAG_PREFIX):
        return
    try:
        from sqlalchemy.orm import object_session

        session = object_session(dag_run)
        if session is None:
            # dag.test() hands over a run no longer in a session (the scheduler's is in one):
            # set the note on the stored run in a short session of our own.
            from sqlalchemy import select

            from airflow.models.dagrun import DagRun
            from airflow.utils.session import create_session

            with create_session() as own:
                stored = own.scalar(select(DagRun).where(DagRun.dag_id == dag_run.dag_id,
                                                         DagRun.run_id == dag_run.run_id))
                if stored is not None:
                    _set_in(own, stored, final)
            return
        _set_in(session, dag_run, final)
    except Exception:
        log.exception("could not set the note of %s", getattr(dag_run, "run_id", "?"))


def _set_in(session: Any, dag_run: Any, final: str | None) -> None:
    current = dag_run.note
    if current and not current.startswith(OURS):
        return   # a person's note
    note = None
    if final is not None:
        # A plain read in the caller's transaction: the scheduler forbids commits, savepoints
        # included, inside its loop ("UNEXPECTED COMMIT - THIS WILL BREAK HA LOCKS").
        with session.no_autoflush:
            note = _from_xcom(session, dag_run)
    if note is None:
        note = f"{_night_label(dag_run)}: " + ("running" if final is None else f"{final} (no run report)")
    if note != current:
        if dag_run.dag_run_note is not None:   # the proxy's creator only runs for a new note
            dag_run.dag_run_note.content = note[:MAX_NOTE]
            dag_run.dag_run_note.user_id = None
        else:
            dag_run.note = (note[:MAX_NOTE], None)


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    _set(dag_run, None)


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    _set(dag_run, "success")


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _set(dag_run, "failed")
