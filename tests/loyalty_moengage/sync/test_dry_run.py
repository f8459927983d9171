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
    """The run's note as Airflow stored it (set by the listener in loyalty_moengage.sync.ops.run_note)."""
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


def _night_batches(dsn: str, program_id: str, night) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM moengage_sync.batches WHERE program_id = %s AND night = %s",
                            (program_id, night)).fetchone()[0]


def _agree(summary: dict, report: dict, requests: int) -> None:
    """A dry run's counts are those of the real run of the same night that follows it."""
    assert summary["events"] == report["events_enqueued"]
    assert summary["events_by_type"] == report["events_by_type"]
    assert summary["events_extracted"] == report["events_extracted"]
    assert summary["events_already_sent"] == report["events_already_sent"]
    assert summary["late_rows_found"] == report["late_rows_found"]
    assert summary["members_extracted"] == report["members_extracted"]
    assert summary["members"] == report["members_enqueued"]
    assert summary["attributes_refresh"] == (not report["attributes_skipped"])
    assert summary["quarantined_by_reason"] == report["quarantined_by_reason"]
    assert summary["requests"] == requests


def test_the_dry_runs_counts_are_the_real_runs_first_run_and_rerun(loyalty_db, tmp_path):
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    from loyalty_moengage_devtools.generator import generate
    from loyalty_moengage_devtools.seed import seed_from_loyalty_db
    from tests.loyalty_moengage.sync.sync_env import WORKSPACE

    tz = "Asia/Kolkata"
    night = datetime.now(timezone.utc).astimezone(ZoneInfo(tz)).date() - timedelta(days=1)   # the newest night
    generate(loyalty_db, program_id="gen", members=400, days=3, seed=11, end_date=night + timedelta(days=1),
             time_zone=tz)
    with sync_env(tmp_path, loyalty_db, program_id="gen", time_zone=tz, customers=()) as sandbox:
        seed_from_loyalty_db(sandbox, WORKSPACE, loyalty_db, "gen", missing_share=0.1)  # some unknown to MoEngage
        dry = _dry_report(loyalty_db, run("gen", night, tz, conf={"dry_run": True}).run_id)
        assert str(run("gen", night, tz).state) == "success"
        (first,) = reports(loyalty_db, "gen")
        _agree(dry, first, _night_batches(loyalty_db, "gen", night))
        assert dry["events"] > 0 and dry["members"] == 400 and dry["quarantined_by_reason"]

        again = _dry_report(loyalty_db, run("gen", night, tz, conf={"dry_run": True}).run_id)
        batches_before = _night_batches(loyalty_db, "gen", night)
        assert str(run("gen", night, tz).state) == "success"
        rerun = reports(loyalty_db, "gen")[-1]
        _agree(again, rerun, _night_batches(loyalty_db, "gen", night) - batches_before)
        assert again["events"] == 0 and again["members"] == 0 and again["events_already_sent"] == dry["events"]
        assert "already enqueued these members' attributes" in again["attributes_taken"]


def test_cli_plan_without_a_moengage_connection_says_which_and_how_to_add_it(tiny, tmp_path, capsys):
    import os

    from loyalty_moengage.cli import main

    with sync_env(tmp_path, tiny):
        del os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"]
        assert main(["plan", "--program", "tiny", "--night", NIGHT.isoformat()]) == 1
    out = capsys.readouterr().out
    assert "note: preflight failed: the Airflow connection 'moengage_default' (MoEngage) is not defined" in out
    assert "make sandbox" in out
    assert _count(tiny, "batches") == 0
