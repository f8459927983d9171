"""Which database a task, the CLI or the API uses: only a connection that does not exist falls back.

Airflow resolves every connection here itself, from env vars and from secrets backends named in
``AIRFLOW__SECRETS__BACKEND`` (tests/loyalty_moengage/secrets_backends.py). Airflow builds its
backends once per process, so cases with a backend run in a subprocess; "inside a task" runs a
probe DAG with ``dag.test()`` in its own Airflow home.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from loyalty_moengage.db import ConnectionUnavailable, loyalty_dsn

ROOT = Path(__file__).resolve().parents[2]
URL = "postgresql://fallback@db.invalid:5432/loyalty"
BACKENDS = "tests.loyalty_moengage.secrets_backends"


@pytest.fixture
def db_log():
    """Messages of loyalty_moengage.db (a handler of its own: Airflow's log setup reroutes caplog's)."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("loyalty_moengage.db")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_defined_connection_wins_over_the_url(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DB", json.dumps({"conn_type": "postgres", "host": "loyalty.internal",
                                                              "login": "reader", "schema": "loyalty"}))
    monkeypatch.setenv("LOYALTY_DB_URL", URL)
    params = conninfo_to_dict(loyalty_dsn())
    assert (params["host"], params["user"], params["dbname"]) == ("loyalty.internal", "reader", "loyalty")


def test_a_missing_connection_falls_back_to_the_url_and_says_so(monkeypatch, db_log):
    monkeypatch.setenv("LOYALTY_DB_URL", URL)
    assert loyalty_dsn("loyalty_nowhere") == URL
    assert db_log == [f"Airflow connection 'loyalty_nowhere' does not exist: using LOYALTY_DB_URL ({URL})"]


def test_the_fallback_is_said_once_per_process_then_at_debug(monkeypatch, db_log):
    """A by-hand run resolves the DSN in its tasks and again for its summary: the second says nothing new."""
    monkeypatch.setenv("LOYALTY_DB_URL", URL)
    assert loyalty_dsn("loyalty_twice") == loyalty_dsn("loyalty_twice") == URL
    assert db_log == [f"Airflow connection 'loyalty_twice' does not exist: using LOYALTY_DB_URL ({URL})"]


def test_a_missing_connection_without_url_uses_the_embedded_database_and_says_so(monkeypatch, db_log):
    from loyalty_moengage.embedded import stop_server

    # Not pytest's tmp_path: as root the server runs as another user, and pytest makes its folder root-only.
    tmp_path = Path(tempfile.mkdtemp(prefix="lm-embedded-"))
    tmp_path.chmod(0o755)
    monkeypatch.setenv("LOYALTY_STATE_DIR", str(tmp_path))
    try:
        dsn = loyalty_dsn("loyalty_nowhere")
        assert db_log == ["Airflow connection 'loyalty_nowhere' does not exist and LOYALTY_DB_URL is not set: "
                          f"using the embedded PostgreSQL in {tmp_path / 'pgdata'}"]
        assert (tmp_path / "pgdata" / "postmaster.pid").exists() and dsn.startswith("postgresql://")
    finally:
        stop_server()
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_malformed_env_connection_fails_naming_it(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DB", '{"conn_type": "postgres", ')
    monkeypatch.setenv("LOYALTY_DB_URL", URL)
    with pytest.raises(ConnectionUnavailable, match=r"Airflow connection 'loyalty_db' is set in AIRFLOW_CONN_LOYALTY_DB "
                                                    r"but cannot be read \(JSONDecodeError"):
        loyalty_dsn()


def _outside_a_task(backend: str) -> subprocess.CompletedProcess:
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
            "from loyalty_moengage.db import loyalty_dsn; print('DSN', loyalty_dsn())")
    env = {**os.environ, "AIRFLOW__SECRETS__BACKEND": f"{BACKENDS}.{backend}", "LOYALTY_DB_URL": URL}
    env.pop("AIRFLOW_CONN_LOYALTY_DB", None)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_outside_a_task_a_secrets_backend_outage_fails_naming_the_connection():
    result = _outside_a_task("OutageBackend")
    assert result.returncode != 0 and "DSN" not in result.stdout
    assert ("ConnectionUnavailable: Cannot tell whether Airflow connection 'loyalty_db' exists: secrets backend "
            "OutageBackend raised ConnectionError: vault.internal:8200 timed out. Not falling back") in result.stderr


def test_outside_a_task_access_denied_fails_naming_the_connection():
    result = _outside_a_task("DenyingBackend")
    assert result.returncode != 0 and "DSN" not in result.stdout
    assert ("ConnectionUnavailable: Cannot read Airflow connection 'loyalty_db': AirflowSecretsBackendAccessDenied: "
            "policy denies loyalty_db. Not falling back") in result.stderr


def test_outside_a_task_a_healthy_backend_without_the_connection_falls_back():
    result = _outside_a_task("EmptyBackend")
    assert result.returncode == 0, result.stderr
    assert f"DSN {URL}" in result.stdout
    assert "Airflow connection 'loyalty_db' does not exist: using LOYALTY_DB_URL" in result.stdout + result.stderr


PROBE = '''
import pendulum
from airflow.sdk import dag, task


@dag(dag_id="lm_connection_probe", schedule=None, start_date=pendulum.datetime(2026, 1, 1))
def probe():
    @task(retries=0)
    def resolve():
        from loyalty_moengage.db import loyalty_dsn

        print("DSN", loyalty_dsn())

    resolve()


probe_dag = probe()
if __name__ == "__main__":
    print("STATE", probe_dag.test().state)
'''


@pytest.fixture(scope="module")
def probe_home(tmp_path_factory) -> dict[str, str]:
    """An Airflow home of its own (SQLite, migrated) whose dags folder holds only the probe."""
    home = tmp_path_factory.mktemp("probe-airflow")
    dags = home / "dags"
    dags.mkdir()
    (dags / "probe.py").write_text(textwrap.dedent(PROBE))
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "PYTHONPATH": str(ROOT), "LOYALTY_DB_URL": URL}
    env.pop("AIRFLOW_CONN_LOYALTY_DB", None)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    return env


def _inside_a_task(env: dict[str, str], backend: str | None) -> str:
    env = dict(env)
    if backend:
        env["AIRFLOW__SECRETS__BACKEND"] = f"{BACKENDS}.{backend}"
    result = subprocess.run([sys.executable, str(Path(env["AIRFLOW__CORE__DAGS_FOLDER"]) / "probe.py")], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=180)
    return result.stdout + result.stderr


def test_inside_a_task_a_missing_connection_falls_back_and_says_so(probe_home):
    out = _inside_a_task(probe_home, None)
    assert "STATE success" in out and f"DSN {URL}" in out, out
    assert f"Airflow connection 'loyalty_db' does not exist: using LOYALTY_DB_URL ({URL})" in out


def test_inside_a_task_a_secrets_backend_outage_fails_the_task(probe_home):
    out = _inside_a_task(probe_home, "OutageBackend")
    assert "STATE failed" in out and f"DSN {URL}" not in out, out
    assert ("Cannot tell whether Airflow connection 'loyalty_db' exists: secrets backend OutageBackend raised "
            "ConnectionError: vault.internal:8200 timed out") in out
