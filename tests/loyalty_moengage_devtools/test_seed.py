"""Seeding the sandbox from the loyalty DB: the schema is read by devtools.seed, not by the sandbox."""

from __future__ import annotations

import psycopg
import pytest

from loyalty_moengage_devtools.sandbox.server import SandboxServer
from loyalty_moengage_devtools.seed import is_missing, seed_from_loyalty_db

WS, KEY = "WS_SANDBOX", "sandbox-key-123"


@pytest.fixture
def sb():
    with SandboxServer(port=0) as server:
        server.add_workspace(WS, KEY, "03")
        yield server


def test_seed_from_loyalty_db_with_deterministic_missing_share(sb, loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        conn.execute("INSERT INTO loyalty.programs (program_id, name, time_zone, earn_rate) VALUES ('p', 'P', 'Asia/Kolkata', 1)")
        conn.execute("INSERT INTO loyalty.tiers VALUES ('p', 'Silver', 1)")
        conn.execute("INSERT INTO loyalty.members (program_id, relation_reference, tier, enrolled_at) "
                     "SELECT 'p', 'REL-' || g, 'Silver', now() FROM generate_series(1, 1000) g")
    result = seed_from_loyalty_db(sb, WS, loyalty_db, "p", missing_share=0.1, seed=3)
    assert result["members"] == 1000 and 60 <= result["missing"] <= 140
    users = sb.state.users(WS)
    assert len(users) == result["seeded"]
    assert all(("REL-%d" % i in users) != is_missing("REL-%d" % i, 0.1, 3) for i in range(1, 1001))


def test_the_sandbox_does_not_read_the_loyalty_schema():
    from pathlib import Path

    import loyalty_moengage_devtools.sandbox as sandbox

    for path in Path(sandbox.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "loyalty." not in text.replace("loyalty_moengage.", "") and "psycopg" not in text, path
