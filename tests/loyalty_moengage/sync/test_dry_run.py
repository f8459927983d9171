"""The dry run (params {"dry_run": true} and `cli plan`): real extract and transform, nothing sendable,
no event key consumed; and the run note the report hands to the listener."""

from __future__ import annotations

import psycopg
import pytest

from tests.loyalty_moengage.sync.sync_env import reports, run, sync_env
from tests.loyalty_moengage.sync.test_sync_dag import NIGHT
from tests.loyalty_moengage.sync.test_transform import EXPECTED_EVENTS, FIXTURE


@pytest.fixture
def tiny(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
    return loyalty_db


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM moengage_sync.{table}").fetchone()[0]


def _dry_report(dsn: str, run_id: str) -> dict:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT stats FROM moengage_sync.dry_runs WHERE run_id = %s AND task_key = 'report'",
                            (run_id,)).fetchone()[0]


def _note(dag_run) -> str | None:
    """The run's note as Airflow stored it (set by the listener in loyalty_moengage.sync.run_note)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(select(DagRun).where(DagRun.run_id == dag_run.run_id,
                                                   DagRun.dag_id == dag_run.dag_id)).note


def _note_xcom(dag_run) -> str | None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(select(XComModel.value).where(
            XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id, XComModel.task_id == "report",
            XComModel.key == "moengage_run_note"))


def test_dry_run_sends_nothing_consumes_no_key_and_reports_what_would_go(tiny, tmp_path):
    with sync_env(tmp_path, tiny) as sandbox:
        dag_run = run("tiny", NIGHT, conf={"dry_run": True})
        assert str(dag_run.state) == "success"
        assert sandbox.state.events("WS_TEST") == []
        for table in ("batches", "event_keys", "quarantine", "run_reports", "attribute_chunks", "attribute_watermark"):
            assert _count(tiny, table) == 0, table
        summary = _dry_report(tiny, dag_run.run_id)
        assert summary["events"] == len(EXPECTED_EVENTS)
        assert summary["quarantined_by_reason"] == {"customer_id is a value MoEngage refuses": 3}
        assert summary["requests"] == 1 and summary["minutes_at_budget"] >= 0
        assert summary["budget_source"] == "connection 'moengage_default'"
        assert all(len(v) <= 3 for v in summary["samples"].values())
        assert set(summary["events_by_type"]) <= set(summary["samples"])
        assert _note(dag_run) == _note_xcom(dag_run)
        note = _note(dag_run)
        assert note.startswith(f"DRY RUN night {NIGHT} (Asia/Kolkata): {len(EXPECTED_EVENTS)} events"), note

        # the real run afterwards sends every event: the dry run took no key
        real = run("tiny", NIGHT)
        assert str(real.state) == "success"
        assert len(sandbox.state.events("WS_TEST")) == len(EXPECTED_EVENTS)
        (report,) = reports(tiny, "tiny")
        assert _note(real) == _note_xcom(real)
        note = _note(real)
        assert note == (f"night {NIGHT} (Asia/Kolkata): {report['events_sent']:,} events, {report['members_updated']:,} "
                        "members, 3 quarantined, 0 uncertain: success"), note

        # a dry run after it counts them as already sent
        again = run("tiny", NIGHT, conf={"dry_run": True})
        assert _dry_report(tiny, again.run_id)["events_already_sent"] == len(EXPECTED_EVENTS)
        assert _dry_report(tiny, again.run_id)["events"] == 0


def test_cli_plan_prints_the_dry_run(tiny, tmp_path, capsys):
    from loyalty_moengage.cli import main

    with sync_env(tmp_path, tiny):
        assert main(["plan", "--program", "tiny", "--night", NIGHT.isoformat()]) == 0
    out = capsys.readouterr().out
    assert f"DRY RUN: program tiny, night {NIGHT} (Asia/Kolkata)" in out
    assert f"events that would be sent {len(EXPECTED_EVENTS)}" in out
    assert "customer_id is a value MoEngage refuses" in out and "sample payloads, loyalty_" in out
    assert "minutes at the workspace budget" in out
    assert _count(tiny, "batches") == 0 and _count(tiny, "event_keys") == 0
