"""Errors no retry can mend fail the task at once, name what to fix, and reach the run report."""

from __future__ import annotations

import os
from datetime import date, timedelta, timezone

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException

from loyalty_moengage.config.programs import get_program
from loyalty_moengage.sync import tasks
from loyalty_moengage.night import Window
from tests.loyalty_moengage.sync.sync_env import API_KEY, WORKSPACE, reports, run, sync_env
from tests.loyalty_moengage.sync.test_contract import templates, tiny  # noqa: F401 - fixtures

NIGHT = date(2026, 11, 21)


def _context(run_id: str = "r-fast") -> dict:
    start = Window.of_night(NIGHT - timedelta(days=1), "Asia/Kolkata").end.astimezone(timezone.utc)
    end = Window.of_night(NIGHT, "Asia/Kolkata").end.astimezone(timezone.utc)
    return {"data_interval_start": start, "data_interval_end": end, "run_id": run_id, "params": {}, "ti": None}


def _break(templates, name: str, old: str, new: str) -> None:
    path = templates / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("old, new, expected", [
    ("FROM loyalty.redemptions r", "FROM loyalty.redemptions r WHERE", "syntax error"),
    ("FROM loyalty.redemptions r", "FROM loyalty.redemptionz r", 'relation "loyalty.redemptionz" does not exist'),
    ("WHERE r.program_id = %(program_id)s", "WHERE r.item LIKE '%gift%' AND r.program_id = %(program_id)s",
     "a literal % (a LIKE pattern, the modulo operator) is written %%"),
    ("WHERE r.program_id = %(program_id)s", "WHERE r.program_id = %(programme)s", "query parameter missing: programme"),
])
def test_a_broken_template_fails_preflight_without_retry_naming_it(tiny, templates, tmp_path, old, new, expected):
    _break(templates, "events/points_redeemed.sql", old, new)
    with sync_env(tmp_path, tiny):
        with pytest.raises(AirflowFailException) as err:
            tasks.preflight(get_program("tiny"), _context())
    assert "events/points_redeemed.sql" in str(err.value) and expected in str(err.value)


def test_data_that_breaks_a_template_fails_the_chunk_naming_template_and_rows(tiny, templates, tmp_path):
    # An analyst's template that divides by a column the data can hold as zero.
    _break(templates, "events/points_redeemed.sql", "FROM loyalty.redemptions r",
           ", 1 / (r.points - r.points) AS ratio FROM loyalty.redemptions r")
    with sync_env(tmp_path, tiny):
        program = get_program("tiny")
        tasks.preflight(program, _context())
        [chunk] = tasks.plan(program, _context())
        with pytest.raises(AirflowFailException) as err:
            tasks.transform(program, chunk, _context())
    message = str(err.value)
    assert "events/points_redeemed.sql" in message and "division by zero" in message
    assert "members 0 to 9223372036854775807" in message and "night 2026-11-21" in message


def test_the_report_names_the_cause_of_a_failed_run(tiny, templates, tmp_path):
    _break(templates, "events/points_redeemed.sql", "FROM loyalty.redemptions r", "FROM loyalty.redemptionz r")
    with sync_env(tmp_path, tiny) as sandbox:
        dag_run = run("tiny", NIGHT)
        assert sandbox.state.events(WORKSPACE) == []
    assert str(dag_run.state) == "failed"
    (report,) = reports(tiny, "tiny")
    assert report["outcome"] == "failed"
    assert report["notes"][0].startswith("preflight failed: SQL template 'events/points_redeemed.sql' failed")


def test_credentials_moengage_refuses_fail_without_retry(tiny, tmp_path):
    with sync_env(tmp_path, tiny) as sandbox:
        os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"] = sandbox.connection_json(WORKSPACE, "wrong-key-1234567", dc="03")
        with pytest.raises(AirflowFailException, match="MoEngage rejected the credentials"):
            tasks.preflight(get_program("tiny"), _context())
        os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"] = sandbox.connection_json(WORKSPACE, API_KEY, dc="03")
        program = get_program("tiny")
        tasks.preflight(program, _context())
        for chunk in tasks.plan(program, _context()):
            tasks.transform(program, chunk, _context())
        tasks.guard(program, _context())
        os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"] = sandbox.connection_json(WORKSPACE, "wrong-key-1234567", dc="03")
        with pytest.raises(AirflowFailException, match="401"):
            tasks.load(program, 0, _context())
        assert sandbox.state.events(WORKSPACE) == []
    with psycopg.connect(tiny) as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM moengage_sync.batches GROUP BY 1").fetchall())
        awaiting = conn.execute("SELECT count(*) FROM moengage_sync.awaiting_presence").fetchone()[0]
    assert set(states) <= {"pending"}   # nothing sent, nothing lost: batches pending, events awaiting their check
    assert sum(states.values()) + awaiting > 0
