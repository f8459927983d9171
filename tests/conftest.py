"""Shared fixtures: a real PostgreSQL (embedded unless TEST_DATABASE_URL is set) and Airflow's env.

Each test that needs a clean loyalty database gets one cloned from a template that already has
the schema applied, which costs a fraction of a second.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ["LOYALTY_PROJECT_ROOT"] = str(ROOT)
# LOYALTY_TEST_AIRFLOW_HOME lets two test sessions run side by side (each its own SQLite metadata DB).
os.environ["AIRFLOW_HOME"] = os.environ.get("LOYALTY_TEST_AIRFLOW_HOME") or str(ROOT / ".local" / "airflow-test")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
# Tests never fall back to a developer's loyalty database by accident.
os.environ.pop("LOYALTY_DB_URL", None)
os.environ.pop("AIRFLOW_CONN_LOYALTY_DB", None)

import pytest  # noqa: E402




def _with_database(dsn: str, database: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params["dbname"] = database
    return make_conninfo(**params)


@pytest.fixture(scope="session")
def pg_server():
    """TEST_DATABASE_URL, or the suite's own embedded server, stopped when the session ends
    (also when it fails or is interrupted: pytest tears session fixtures down on Ctrl-C)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    from loyalty_moengage.embedded import owned_server

    with owned_server("test-pgdata") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def template_db(pg_server: str):
    """A database with the full schema applied, used as a template for per-test databases."""
    import psycopg

    from loyalty_moengage.db import apply_schema

    name = f"lm_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = _with_database(pg_server, name)
    apply_schema(dsn)
    yield name
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def loyalty_db(pg_server: str, template_db: str):
    """DSN of a fresh database holding the schema and nothing else; dropped after the test."""
    import psycopg

    name = f"lm_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _with_database(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db(pg_server: str):
    """DSN of a fresh database with no schema at all."""
    import psycopg

    name = f"lm_e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
