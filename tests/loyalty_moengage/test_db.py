"""DSNs from Airflow connections: what libpq reads from them, and that psycopg connects with them."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from airflow.sdk import Connection
from psycopg.conninfo import conninfo_to_dict

from loyalty_moengage.db import connection_json, dsn_from_connection, redact_dsn

PASSWORD = "p@ss:w/rd?#% &+é"


def conn(**fields) -> Connection:
    return Connection(conn_id="loyalty_db", conn_type="postgres", **fields)


@pytest.mark.parametrize(("fields", "expected"), [
    pytest.param({"host": "/var/run/postgresql"},
                 {"user": "postgres", "dbname": "postgres", "host": "/var/run/postgresql"}, id="socket-defaults"),
    pytest.param({"host": "/var/run/postgresql", "login": "u", "password": PASSWORD, "schema": "db", "port": 5433},
                 {"user": "u", "password": PASSWORD, "dbname": "db", "host": "/var/run/postgresql"},
                 id="socket-no-port"),
    pytest.param({"host": "db.example.com", "login": "u", "password": PASSWORD, "schema": "loyalty", "port": 6432},
                 {"user": "u", "password": PASSWORD, "dbname": "loyalty", "host": "db.example.com", "port": "6432"},
                 id="tcp-special-password"),
    pytest.param({"host": "db.example.com", "password": ""},
                 {"user": "postgres", "dbname": "postgres", "host": "db.example.com", "port": "5432"},
                 id="tcp-defaults-empty-password"),
    pytest.param({}, {"user": "postgres", "dbname": "postgres", "port": "5432"}, id="no-host"),
    pytest.param({"host": "db.example.com", "schema": "loyalty prod"},  # broke libpq before get_uri
                 {"user": "postgres", "dbname": "loyalty prod", "host": "db.example.com", "port": "5432"},
                 id="database-name-with-space"),
    pytest.param({"host": "127.0.0.1", "extra": json.dumps({"sslmode": "require", "options": "-c statement_timeout=5000",
                                                             "application_name": "night sync", "cursor": "dictcursor"})},
                 {"user": "postgres", "dbname": "postgres", "host": "127.0.0.1", "port": "5432", "sslmode": "require",
                  "options": "-c statement_timeout=5000", "application_name": "night sync"},
                 id="libpq-extras-only-spaces-kept"),
])
def test_libpq_reads_what_the_connection_says(fields, expected):
    assert conninfo_to_dict(dsn_from_connection(conn(**fields))) == expected


def test_password_is_redacted_in_either_host_form():
    for host in ("/var/run/postgresql", "db.example.com"):
        dsn = dsn_from_connection(conn(host=host, login="u", password=PASSWORD))
        assert "p%40ss" in dsn and "p%40ss" not in redact_dsn(dsn) and "u:***@" in redact_dsn(dsn)


@pytest.fixture
def role(pg_server):
    """A login role whose password needs every kind of escaping."""
    name = f"lm_r_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as c:
        c.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            psycopg.sql.Identifier(name), psycopg.sql.Literal(PASSWORD)))
    yield name
    with psycopg.connect(pg_server, autocommit=True) as c:
        c.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(name)))


def _who(dsn: str) -> tuple[str, str | None]:
    with psycopg.connect(dsn) as c:
        user, = c.execute("SELECT current_user").fetchone()
        return user, c.info.host


def test_psycopg_connects_over_tcp_and_through_the_socket_folder(pg_server, role):
    server = conninfo_to_dict(pg_server)
    with psycopg.connect(pg_server) as c:
        socket_dir = c.execute("SHOW unix_socket_directories").fetchone()[0].split(",")[0].strip()
        tcp_host, tcp_port = c.info.host, c.info.port
    database = server.get("dbname", "postgres")
    if not tcp_host.startswith("/"):
        dsn = dsn_from_connection(conn(host=tcp_host, port=tcp_port, login=role, password=PASSWORD, schema=database))
        assert _who(dsn) == (role, tcp_host)
    if not socket_dir or tcp_port != 5432:
        pytest.skip("no Unix socket, or not on 5432 (a socket-folder DSN carries no port, as before get_uri)")
    dsn = dsn_from_connection(conn(host=socket_dir, login=role, password=PASSWORD, schema=database))
    assert _who(dsn) == (role, socket_dir)


def test_connection_json_round_trips(pg_server):
    back = dsn_from_connection(Connection.from_json(connection_json(pg_server), conn_id="loyalty_db"))
    keys = ("user", "password", "host", "dbname")
    original = conninfo_to_dict(pg_server)
    assert {k: conninfo_to_dict(back).get(k) for k in keys} == {k: original.get(k) for k in keys}
    assert _who(back) == _who(pg_server)
