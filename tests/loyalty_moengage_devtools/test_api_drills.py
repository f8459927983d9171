"""The API abuse drill end to end: real server processes on the suite's PostgreSQL (TEST_DATABASE_URL,
else the embedded one), every attack held, and its report written (about 35 s; not a timed test)."""

from __future__ import annotations

import json

import pytest


def test_every_attack_on_the_api_is_held(pg_server, tmp_path):
    import psycopg

    from loyalty_moengage_devtools.api_drills import STEPS, main

    try:
        with psycopg.connect(pg_server, connect_timeout=5, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server to make the drill's database on: {type(exc).__name__}")
    rc = main(["--dsn", pg_server, "--out", str(tmp_path)])
    report = json.loads((tmp_path / "api-drills-latest.json").read_text())
    failed = {s["name"]: s["observed"] for s in report["steps"] if not s["passed"]}
    assert rc == 0 and failed == {}, failed
    assert [s["n"] for s in report["steps"]] == [n for n, *_ in STEPS] == list(range(1, 13))
    assert report["commit"] and report["machine"]["cores"] and report["started_at"]
    figures = {s["name"]: s["figures"] for s in report["steps"]}
    assert figures["minting"]["points_credited"] == 2000 and figures["brute_force"]["guesses"] == {"401": 2000}
    assert figures["connection_drop"]["requests"] == 2000 and all(figures["connection_drop"]["terminated"])
    assert figures["secrets_in_logs"]["access_lines"] > 0 and figures["secrets_in_logs"]["found"] == {}
    md = (tmp_path / "api-drills-latest.md").read_text()
    assert "| 12 |" in md and "FAIL" not in md
    with psycopg.connect(pg_server, autocommit=True) as conn:   # the drill's database is gone
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (report["database"],)).fetchone()[0] == 0
