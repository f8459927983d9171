"""DagBag import test (Astro template style): every DAG imports, has tags, retries and docs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert not dagbag.import_errors, dagbag.import_errors


def test_one_dag_per_enabled_program(dagbag):
    from loyalty_moengage.config.programs import load_programs

    expected = {p.dag_id for p in load_programs() if p.enabled}
    assert expected and expected <= set(dagbag.dag_ids)


def test_every_dag_has_tags_retries_and_docs(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        for task in dag.tasks:   # the anomaly guard too: a held night fails at once, a blip is retried
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
        if dag_id.startswith("moengage_sync_"):   # a hung load is stopped and retried; its claims come back
            assert dag.get_task("load").execution_timeout is not None


def test_schedule_is_midnight_with_a_data_interval(dagbag):
    from airflow.timetables.interval import CronDataIntervalTimetable

    dag = dagbag.dags["moengage_sync_demo"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable._expression == "0 0 * * *"
    assert str(dag.timetable._timezone) in ("Asia/Kolkata", "Timezone('Asia/Kolkata')")
    assert dag.max_active_runs == 1


def test_parsing_is_cheap():
    """No database, network or pandas import at parse time."""
    code = (
        "import sys, time; t = time.time(); sys.path.insert(0, 'dags'); import moengage_sync; "
        "heavy = [m for m in ('pandas', 'pyarrow', 'psycopg', 'requests', 'aiohttp') if m in sys.modules]; "
        "print(repr(heavy), time.time() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ}, check=True).stdout.strip().splitlines()[-1]
    heavy, _seconds = out.rsplit(" ", 1)
    assert heavy == "[]", f"DAG parsing imported {heavy}"


def test_a_live_program_gets_a_live_dag_that_never_overlaps(monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.timetables.trigger import CronTriggerTimetable

    path = tmp_path / "programs.yaml"
    path.write_text("programs:\n  - {id: fast, time_zone: Asia/Kolkata, live: {enabled: true, every_minutes: 2}}\n"
                    "  - {id: slow, time_zone: UTC}\n")
    monkeypatch.setenv("LOYALTY_PROGRAMS_FILE", str(path))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    live = {d for d in bag.dag_ids if d.startswith("moengage_live_")}
    assert live == {"moengage_live_fast"}
    dag = bag.dags["moengage_live_fast"]
    assert isinstance(dag.timetable, CronTriggerTimetable) and dag.timetable._expression == "*/2 * * * *"
    assert dag.max_active_runs == 1 and not dag.catchup and dag.doc_md and "live" in dag.tags
    [task] = dag.tasks
    assert task.pool == "moengage_moengage_default" and task.retries >= 1 and task.execution_timeout is not None
    assert task.priority_weight > bag.dags["moengage_sync_fast"].get_task("load").priority_weight
