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


def _rows(dsn: str) -> dict[str, tuple]:
    """customer_id: (present, imported, hours since checked_at, rounded)."""
    with psycopg.connect(dsn) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            "SELECT customer_id, present, imported, round(extract(epoch FROM now() - checked_at) / 3600) "
            "FROM moengage_sync.customer_presence WHERE program_id = 'tiny'").fetchall()}


def test_imported_presence_expires_after_the_lifetime_from_the_import_and_says_so(loyalty_db, tmp_path, capsys):
    from datetime import timedelta

    from loyalty_moengage.cli import main
    from loyalty_moengage.moengage.presence import cached_presence

    listing = tmp_path / "ids.txt"
    listing.write_text("REL-0001\nREL-0002\n")
    with sync_env(tmp_path, loyalty_db, extra_program="    presence_lifetime_hours: 48\n"):
        assert main(["presence", "import", "--program", "tiny", "--file", str(listing)]) == 0
    out = capsys.readouterr().out
    assert "marked 2 present (0 of them cached as absent) for program tiny" in out
    assert "the presence it marks is trusted for 48 h (presence_lifetime_hours), until " in out
    assert _rows(loyalty_db) == {"REL-0001": (True, True, 0), "REL-0002": (True, True, 0)}
    lifetime = timedelta(hours=48)
    with psycopg.connect(loyalty_db) as conn:
        conn.execute("UPDATE moengage_sync.customer_presence SET checked_at = now() - interval '47 hours 59 minutes' "
                     "WHERE customer_id = 'REL-0001'")
        conn.execute("UPDATE moengage_sync.customer_presence SET checked_at = now() - interval '48 hours 1 minute' "
                     "WHERE customer_id = 'REL-0002'")
        assert cached_presence(conn, "tiny", ["REL-0001", "REL-0002"], lifetime=lifetime) == ({"REL-0001"},
                                                                                             ["REL-0002"])


def test_an_import_never_extends_a_trusted_confirmation(loyalty_db, tmp_path, capsys):
    """A still-trusted confirmation is left as it is (its own expiry stands); an expired one, an
    absence or a new id is marked present from now, as imported (not confirmed)."""
    from loyalty_moengage.cli import main

    with psycopg.connect(loyalty_db) as conn:
        conn.execute("INSERT INTO moengage_sync.customer_presence (program_id, customer_id, present, checked_at) "
                     "VALUES ('tiny', 'TRUSTED', true, now() - interval '100 hours'), "
                     "('tiny', 'EXPIRED', true, now() - interval '200 hours'), "
                     "('tiny', 'ABSENT', false, now() - interval '1 hour')")
    listing = tmp_path / "ids.txt"
    listing.write_text("TRUSTED\nEXPIRED\nABSENT\nNEW\n")
    with sync_env(tmp_path, loyalty_db):
        assert main(["presence", "import", "--program", "tiny", "--file", str(listing), "--dry-run", "--json"]) == 0
        dry = capsys.readouterr().out
        assert _rows(loyalty_db)["EXPIRED"] == (True, False, 200)
        assert main(["presence", "import", "--program", "tiny", "--file", str(listing)]) == 0
        real = capsys.readouterr().out
    assert "1 already known present; would mark 3 present (1 of them cached as absent)" in dry
    assert "would be trusted for 168 h" in dry and '"expired_reasserted": 1' in dry and '"lifetime_hours": 168.0' in dry
    assert "marked 3 present (1 of them cached as absent)" in real and "(1 of them were expired confirmations)" in real
    assert _rows(loyalty_db) == {"TRUSTED": (True, False, 100), "EXPIRED": (True, True, 0), "ABSENT": (True, True, 0),
                                 "NEW": (True, True, 0)}


def test_an_imported_customer_moengage_does_not_have_gets_no_event_once_the_import_expired(loyalty_db, tmp_path):
    """An id list is not MoEngage's word: past the lifetime its customers are looked up before an
    event is sent, and one MoEngage does not have is held (no profile created)."""
    from datetime import date

    import requests

    from loyalty_moengage.cli import main
    from loyalty_moengage.sync.chunk.check import NOT_IN_MOENGAGE
    from tests.loyalty_moengage.sync.sync_env import WORKSPACE, run
    from tests.loyalty_moengage.sync.test_transform import FIXTURE

    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
    listing = tmp_path / "ids.txt"
    listing.write_text("REL-0001\nREL-0002\n")
    with sync_env(tmp_path, loyalty_db, customers=("REL-0001",)) as sandbox:   # REL-0002 is not in MoEngage
        assert main(["presence", "import", "--program", "tiny", "--file", str(listing)]) == 0
        with psycopg.connect(loyalty_db) as conn:
            conn.execute("UPDATE moengage_sync.customer_presence SET checked_at = now() - interval '169 hours'")
        assert str(run("tiny", date(2026, 11, 21)).state) == "success"   # both have events that night
        profiles = requests.get(f"{sandbox.url}/sandbox/workspaces/{WORKSPACE}/profiles", timeout=10).json()
        sent = {e["customer_id"] for e in sandbox.state.events(WORKSPACE)}
    assert profiles["profiles_created"] == 0 and sent == {"REL-0001"}
    assert _rows(loyalty_db) == {"REL-0001": (True, False, 0), "REL-0002": (False, False, 0)}
    with psycopg.connect(loyalty_db) as conn:
        held = conn.execute("SELECT count(*) FROM moengage_sync.quarantine WHERE template = '(presence)' "
                            "AND reason = %s AND row_data->>'customer_id' = 'REL-0002'",
                            (NOT_IN_MOENGAGE,)).fetchone()[0]
    assert held > 0
