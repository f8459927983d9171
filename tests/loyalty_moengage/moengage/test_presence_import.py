"""`loyalty-moengage presence import`: a MoEngage export seeds the presence cache, so a first
night's events need no Get User API lookups for the customers it names."""

from __future__ import annotations

import psycopg
import pytest

from tests.loyalty_moengage.sync.sync_env import sync_env


def _presence(dsn: str) -> dict[str, bool]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT customer_id, present FROM moengage_sync.customer_presence "
                                 "WHERE program_id = 'tiny'").fetchall())


def test_a_segment_export_marks_its_customers_present_and_a_dry_run_writes_nothing(loyalty_db, tmp_path, capsys):
    from loyalty_moengage.cli import main

    export = tmp_path / "all_users.csv"
    export.write_text("Customer ID,First Name,Email\nREL-0001,A,a@x\nREL-0002,B,b@x\nREL-0002,B,b@x\n"
                      "unknown,C,c@x\n,D,d@x\nREL-0003,E,e@x\n")
    with psycopg.connect(loyalty_db) as conn:
        conn.execute("INSERT INTO moengage_sync.customer_presence (program_id, customer_id, present) VALUES "
                     "('tiny', 'REL-0001', true), ('tiny', 'REL-0003', false)")
    with sync_env(tmp_path, loyalty_db):
        assert main(["presence", "import", "--program", "tiny", "--file", str(export), "--dry-run"]) == 0
        dry = capsys.readouterr().out
        assert _presence(loyalty_db) == {"REL-0001": True, "REL-0003": False}
        assert main(["presence", "import", "--program", "tiny", "--file", str(export)]) == 0
        real = capsys.readouterr().out
    assert "6 rows, 3 distinct customer ids (2 refused as customer_id values, 1 repeated); 1 already known " \
           "present; would mark 2 present (1 of them cached as absent)" in dry and "dry run: nothing written" in dry
    assert "marked 2 present (1 of them cached as absent) for program tiny" in real
    assert _presence(loyalty_db) == {"REL-0001": True, "REL-0002": True, "REL-0003": True}


def test_a_plain_list_needs_no_header_and_imported_customers_need_no_lookup(loyalty_db, tmp_path):
    from datetime import date

    from loyalty_moengage.cli import main
    from tests.loyalty_moengage.sync.sync_env import WORKSPACE, run
    from tests.loyalty_moengage.sync.test_transform import FIXTURE

    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())

    listing = tmp_path / "ids.txt"
    listing.write_text("REL-0001\nREL-0002\n")
    with sync_env(tmp_path, loyalty_db) as sandbox:
        assert main(["presence", "import", "--program", "tiny", "--file", str(listing)]) == 0
        assert str(run("tiny", date(2026, 11, 22)).state) == "success"
        lookups = [r for r in sandbox.state.requests(WORKSPACE) if r["endpoint"] == "export"]
    # Only the preflight's check of the Get User API: every customer with events was imported.
    assert len(lookups) == 1


def test_a_csv_without_an_id_column_is_refused_naming_the_columns(loyalty_db, tmp_path, capsys):
    from loyalty_moengage.cli import main

    export = tmp_path / "users.csv"
    export.write_text("Email,Name\na@x,A\n")
    with sync_env(tmp_path, loyalty_db):
        assert main(["presence", "import", "--program", "tiny", "--file", str(export)]) == 2
        assert main(["presence", "import", "--program", "tiny", "--file", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err
    assert "no customer id column in the header (Email, Name): name it with --column" in err
    assert "nope.csv: no such file" in err
    assert _presence(loyalty_db) == {}
