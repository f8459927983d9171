"""By-hand runs (``loyalty-moengage run`` / ``plan``): a line per task and the report on the terminal,
Airflow's records in a log file under $AIRFLOW_HOME/logs/by-hand/, ``--verbose`` for the old output;
no secret in either. The commands run as a user runs them: a process of their own, a real night
in-process against the real Postgres and the sandbox."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.loyalty_moengage.sync.sync_env import API_KEY, WORKSPACE, sync_env
from tests.loyalty_moengage.sync.test_sync_dag import NIGHT
from tests.loyalty_moengage.sync.test_transform import FIXTURE

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("preflight", "plan", "transform[0]", "guard", "load[0]", "settle", "report")
#: Records of Airflow's own that a quiet terminal must not show and its log file must hold.
AIRFLOW_RECORDS = ("Task instance state updated", "Done. Returned value was", "[DAG TEST] end task")
SECRETS = (API_KEY, base64.b64encode(f"{WORKSPACE}:{API_KEY}".encode()).decode())


@pytest.fixture
def tiny(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
    return loyalty_db


def user_env() -> dict[str, str]:
    """This environment as a user's shell has it: without pytest's marker, which turns Airflow's
    structlog logger cache off (a user's run has it on)."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_VERSION"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loyalty_moengage.cli", *args, "--program", "tiny", "--night",
                           NIGHT.isoformat()], cwd=ROOT, env=user_env(), capture_output=True, text=True,
                          timeout=600)


def _ended(lines: list[str], task: str) -> bool:
    """A line of ``task`` (a mapped one with its rendered name) ended in success, with its seconds."""
    shape = re.compile(rf"  {re.escape(task)}( \(.+\))? +success +\d+\.\d s")
    return any(shape.fullmatch(line) for line in lines)


def _log_file(out: str) -> Path:
    last = out.rstrip("\n").splitlines()[-1]
    assert last.startswith("Airflow's log of this run: "), last
    path = Path(last.removeprefix("Airflow's log of this run: "))
    assert path.parent == Path(os.environ["AIRFLOW_HOME"]) / "logs" / "by-hand"
    assert path.name.startswith(f"tiny-{NIGHT.isoformat()}-") and path.exists()
    return path


def _no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_a_quiet_run_prints_a_line_per_task_and_the_report_and_keeps_airflows_records_in_a_file(tiny, tmp_path):
    with sync_env(tmp_path, tiny):
        quiet = _cli("run")
        verbose = _cli("run", "--verbose")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    lines = quiet.stdout.splitlines()
    assert len(lines) <= 35, quiet.stdout
    for task in TASKS:
        assert _ended(lines, task), (task, quiet.stdout)
    assert "MoEngage sync report: program tiny, night 2026-11-21 (success)" in quiet.stdout
    assert f"moengage_sync_tiny night {NIGHT}: success" in lines[-2]
    for record in AIRFLOW_RECORDS:
        assert record not in quiet.stdout + quiet.stderr
    log = _log_file(quiet.stdout).read_text()
    for record in AIRFLOW_RECORDS:
        assert record in log
    assert "MoEngage credentials verified for workspace WS_TEST" in log

    assert verbose.returncode == 0, verbose.stdout + verbose.stderr
    both = verbose.stdout + verbose.stderr
    for record in AIRFLOW_RECORDS:
        assert record in both
    assert "Airflow's log of this run" not in both and len(both.splitlines()) > 2 * len(lines)
    _no_secret(quiet.stdout, quiet.stderr, log, verbose.stdout, verbose.stderr)


def test_a_quiet_plan_prints_the_summary_and_with_json_stdout_is_the_json_alone(tiny, tmp_path):
    with sync_env(tmp_path, tiny):
        plan = _cli("plan")
        as_json = _cli("plan", "--json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "MoEngage sync DRY RUN: program tiny, night 2026-11-21" in plan.stdout
    assert _ended(plan.stdout.splitlines(), "transform[0]"), plan.stdout
    for record in AIRFLOW_RECORDS:
        assert record not in plan.stdout + plan.stderr
    log = _log_file(plan.stdout).read_text()
    assert all(record in log for record in AIRFLOW_RECORDS)

    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert summary["program_id"] == "tiny" and summary["events"] > 0
    assert "report" in as_json.stderr and _log_file(as_json.stderr)
    _no_secret(plan.stdout, plan.stderr, log, as_json.stdout, as_json.stderr)


def test_everything_written_during_the_run_reaches_the_file_masked_and_not_the_terminal(tmp_path, capsys):
    import logging

    import structlog

    from loyalty_moengage.by_hand import airflow_output_to
    from loyalty_moengage.moengage.connection import mask

    secret = "by-hand-secret-9d1e7"
    mask(secret)
    path = tmp_path / "logs" / "by-hand" / "run.log"
    with airflow_output_to(path, sys.stdout) as terminal:
        print("the task line", file=terminal)
        logging.getLogger("airflow.task").warning("stdlib record with %s", secret)
        structlog.get_logger("task").warning(f"structlog record with {secret}")
        print(f"a print with {secret}")
        os.write(2, f"a raw write to descriptor 2 with {secret}\n".encode())
    out, err = capsys.readouterr()
    text = path.read_text()
    assert out == "the task line\n" and secret not in err
    for what in ("stdlib record with ***", "structlog record with ***", "a print with ***",
                 "a raw write to descriptor 2 with ***"):
        assert what in text, text
    assert secret not in text
    print("after the block")
    assert capsys.readouterr().out == "after the block\n"


def test_a_stream_kept_from_the_run_still_writes_after_it_and_not_into_the_file(tmp_path):
    """Airflow's cached structlog loggers keep the stream they were first used with: the run's.
    After the run it must still take writes (to descriptor 1), and the file gets none of them."""
    from loyalty_moengage.by_hand import airflow_output_to

    path = tmp_path / "run.log"
    with airflow_output_to(path, sys.stdout):
        kept = sys.stdout
        print("during the run")
    kept.write("a cached logger after the run\n")
    kept.flush()
    assert path.read_text() == "during the run\n"


def test_a_line_that_cannot_be_masked_is_withheld_and_the_run_goes_on(tmp_path, monkeypatch):
    from loyalty_moengage import by_hand

    real = by_hand.redact

    def fragile(text: str) -> str:
        if "poison" in text:
            raise RuntimeError("masker broke")
        return real(text)

    monkeypatch.setattr(by_hand, "redact", fragile)
    streams = sys.stdout, sys.stderr
    path = tmp_path / "run.log"
    with by_hand.airflow_output_to(path, sys.stdout):
        print("before")
        print("poison " + "x" * 100_000)
        for i in range(2_000):   # more than a pipe holds: a stopped copier would block or break the run
            print(f"after {i}")
    assert (sys.stdout, sys.stderr) == streams
    lines = path.read_text().splitlines()
    assert lines[0] == "before" and lines[1] == "[a line withheld: masking it failed]"
    assert lines[-1] == "after 1999" and not any("poison" in line for line in lines)


def test_a_failed_night_lists_the_tasks_that_never_ran_and_its_log_holds_the_traceback(tiny, tmp_path):
    with sync_env(tmp_path, tiny):
        del os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"]
        failed = _cli("run")
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert any(re.fullmatch(r"  preflight +failed +\d+\.\d s", line) for line in lines), failed.stdout
    for task in ("plan", "transform", "guard", "load[0]"):
        assert any(re.fullmatch(rf"  {re.escape(task)} +upstream_failed", line) for line in lines), (task, failed.stdout)
    assert "note: preflight failed: the Airflow connection 'moengage_default' (MoEngage) is not defined" in failed.stdout
    assert "Traceback" not in failed.stdout + failed.stderr
    assert "Traceback" in _log_file(failed.stdout).read_text()
