"""Connections to the loyalty database and to the sync's own state tables.

One rule decides which database is used, everywhere (tasks, CLI, API, tests):
1. the Airflow Connection (``loyalty_db`` unless the program says otherwise), if it exists;
2. else the ``LOYALTY_DB_URL`` environment variable;
3. else the embedded PostgreSQL under ``.local/pgdata``.

Only a connection that does not exist falls back (and the log says to which database); any other
error reading it (a secrets backend down, access denied, a malformed ``AIRFLOW_CONN_*``) raises
``ConnectionUnavailable``: a night synced from the wrong database is worse than a failed task.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from loyalty_moengage.paths import sql_dir

log = logging.getLogger(__name__)

DEFAULT_CONN_ID = "loyalty_db"


class ConnectionUnavailable(RuntimeError):
    """The Airflow connection could not be read; it may exist, so nothing falls back."""


def _airflow_connection(conn_id: str) -> Any | None:
    """The Airflow Connection, or None when it is not defined anywhere Airflow looks."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowSecretsBackendAccessDenied

    env_name = f"AIRFLOW_CONN_{conn_id.upper()}"
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        pass
    except AirflowSecretsBackendAccessDenied as exc:
        raise _unavailable(conn_id, exc) from exc
    except Exception as exc:
        if not os.environ.get(env_name):
            raise _unavailable(conn_id, exc) from exc
        # Defined, but Airflow could not read it here (outside a task): parse the env var as Airflow does.
        return _from_env(conn_id, env_name)
    if os.environ.get(env_name):
        # Airflow's env backend reports a value it cannot parse as "not found".
        return _from_env(conn_id, env_name)
    failures = _backend_failures(conn_id)
    if failures:
        raise ConnectionUnavailable(
            f"Cannot tell whether Airflow connection {conn_id!r} exists: {'; '.join(failures)}. "
            "Not falling back to LOYALTY_DB_URL or the embedded database; fix the secrets backend and retry.")
    return None


def _unavailable(conn_id: str, exc: BaseException) -> ConnectionUnavailable:
    return ConnectionUnavailable(
        f"Cannot read Airflow connection {conn_id!r}: {type(exc).__name__}: {exc}. Not falling back to "
        "LOYALTY_DB_URL or the embedded database; fix the connection or the secrets backend and retry.")


def _from_env(conn_id: str, env_name: str) -> Any:
    from airflow.sdk import Connection

    value = os.environ[env_name]
    try:
        if value.lstrip().startswith("{"):
            return Connection.from_json(value, conn_id=conn_id)
        return Connection.from_uri(value, conn_id=conn_id)
    except Exception as exc:
        raise ConnectionUnavailable(
            f"Airflow connection {conn_id!r} is set in {env_name} but cannot be read "
            f"({type(exc).__name__}: {exc}); write it as a URI or as Airflow's connection JSON.") from None


def _backend_failures(conn_id: str) -> list[str]:
    """Each secrets backend that raised when asked for ``conn_id``.

    Airflow logs a backend's error at debug level and goes on to the next backend, so a backend
    outage ends as AirflowNotFoundException too; asking each backend again tells the two apart.
    """
    from airflow.sdk.execution_time.supervisor import ensure_secrets_backend_loaded

    failures = []
    for backend in ensure_secrets_backend_loaded():
        try:
            backend.get_connection(conn_id=conn_id)
        except Exception as exc:
            failures.append(f"secrets backend {type(backend).__name__} raised {type(exc).__name__}: {exc}")
    return failures


def dsn_from_connection(conn: Any) -> str:
    """libpq URI for an Airflow postgres Connection; a host starting with / is a socket folder.

    ``Connection.get_uri()`` writes user, password, host and database percent-encoded, which
    libpq decodes (a socket folder becomes ``%2Fvar%2Frun%2Fpostgresql``). Unset fields get
    the defaults this project has always used: user and database ``postgres``, port 5432 (no
    port for a socket folder).
    """
    from airflow.sdk import Connection

    host = conn.host or ""
    socket = host.startswith("/")
    uri = Connection(
        conn_id=getattr(conn, "conn_id", None) or DEFAULT_CONN_ID,
        conn_type="postgresql",
        host=host or None,
        login=conn.login or "postgres",
        password=conn.password or None,
        schema=conn.schema or "postgres",
        port=None if socket else (conn.port or 5432),
    ).get_uri()
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    params = {k: v for k, v in (extra or {}).items() if k in {"sslmode", "sslrootcert", "application_name", "options"}}
    # Not get_uri's query: it passes every extra (libpq refuses unknown keys) and writes spaces as '+'.
    query = "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in params.items())
    return uri + (f"?{query}" if query else "")


def loyalty_dsn(conn_id: str = DEFAULT_CONN_ID) -> str:
    """The DSN by the rule above; raises ConnectionUnavailable rather than guess."""
    conn = _airflow_connection(conn_id)
    if conn is not None:
        return dsn_from_connection(conn)
    url = os.environ.get("LOYALTY_DB_URL")
    if url:
        _say_fallback(conn_id, "LOYALTY_DB_URL", "Airflow connection %r does not exist: using LOYALTY_DB_URL (%s)",
                      conn_id, redact_dsn(url))
        return url
    from loyalty_moengage.embedded import data_dir, ensure_server

    _say_fallback(conn_id, "embedded", "Airflow connection %r does not exist and LOYALTY_DB_URL is not set: using "
                  "the embedded PostgreSQL in %s", conn_id, data_dir())
    return ensure_server()


#: The fallbacks this process has already named at INFO: (connection id, what it fell back to, where).
_FALLBACKS_SAID: set[tuple[str, str, str]] = set()


def _say_fallback(conn_id: str, target: str, message: str, *args: Any) -> None:
    """The fallback at INFO once per process (each task's log names it), at DEBUG after: a
    command that resolves the DSN again says nothing new."""
    said = (conn_id, target, message % args)
    level = logging.DEBUG if said in _FALLBACKS_SAID else logging.INFO
    _FALLBACKS_SAID.add(said)
    log.log(level, message, *args)


def connect(dsn: str, *, autocommit: bool = False, application_name: str = "loyalty_moengage"):
    """A psycopg connection that fails fast on an unreachable server and notices a dead one:
    a hung connection would stall a lease's renewals or a report without an error."""
    import psycopg

    return psycopg.connect(dsn, autocommit=autocommit, application_name=application_name, connect_timeout=10,
                           keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)


def run_sql_files(dsn: str, files: list[Path]) -> None:
    with connect(dsn, autocommit=True) as conn:
        for path in files:
            conn.execute(path.read_text())


def ensure_state_schema(dsn: str) -> bool:
    """Apply the sync's state schema once per version of its file; True when it was applied.

    Every run's first task calls this, and a backfill starts several runs together: DDL run
    concurrently on live tables conflicts ("tuple concurrently updated") and takes exclusive
    locks that stall other runs' sends. So one applies it under an advisory lock and records
    the file's digest (as the schema's comment); everyone else sees that digest and goes on.
    """
    import hashlib

    from loyalty_moengage.paths import PACKAGE_DIR

    sql = (PACKAGE_DIR / "sql" / "010_sync_state.sql").read_text()
    version = hashlib.sha256(sql.encode()).hexdigest()[:16]
    with connect(dsn, autocommit=True) as conn:
        if _state_schema_version(conn) == version:
            return False
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('loyalty_moengage state schema'))")
            if _state_schema_version(conn) == version:
                return False
            conn.execute(sql)
            conn.execute(f"COMMENT ON SCHEMA moengage_sync IS 'loyalty_moengage state schema {version}'")
    return True


def _state_schema_version(conn: Any) -> str | None:
    # Read from the catalogs with a plain query: a name lookup (to_regclass, or the table
    # itself) can use this session's stale catalog cache and miss what another run just made.
    row = conn.execute(
        "SELECT d.description FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_description d "
        "ON d.objoid = n.oid AND d.classoid = 'pg_catalog.pg_namespace'::regclass "
        "WHERE n.nspname = 'moengage_sync'").fetchone()
    prefix = "loyalty_moengage state schema "
    return row[0].removeprefix(prefix) if row and row[0].startswith(prefix) else None


def schema_files() -> list[Path]:
    return sorted((sql_dir() / "schema").glob("*.sql"))


def apply_schema(dsn: str) -> None:
    """Create the reference loyalty schema and the sync's state schema (idempotent)."""
    from loyalty_moengage.paths import PACKAGE_DIR

    run_sql_files(dsn, schema_files() + sorted((PACKAGE_DIR / "sql").glob("*.sql")))


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, for logs and reports."""
    import re

    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)


def connection_json(dsn: str) -> str:
    """An Airflow Connection (JSON form, for AIRFLOW_CONN_*) equivalent to a libpq DSN."""
    import json

    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(dsn)
    conn: dict[str, Any] = {"conn_type": "postgres", "host": p.get("host", "localhost"),
                            "login": p.get("user", "postgres"), "schema": p.get("dbname", "postgres")}
    if p.get("port"):
        conn["port"] = int(p["port"])
    if p.get("password"):
        conn["password"] = p["password"]
    return json.dumps(conn)
