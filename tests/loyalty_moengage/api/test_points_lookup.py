"""The points lookup's libpq path (named prepared statements, binary results) answers exactly
what psycopg's cursor answers, and a connection killed under it reads as lost (so it is retried)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from loyalty_moengage.api import points
from tests.loyalty_moengage.api.conftest import PHONE_1, PHONE_2


# ---- the lookup: libpq fast path == psycopg cursor ------------------------------------------

def _both_paths(dsn: str, calls: list[dict]) -> tuple[list, list]:
    async def go():
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            fast = [await points.lookup(conn, "demo", **kw) for kw in calls]
            await conn.execute("DEALLOCATE ALL")      # a statement gone behind our back is prepared again
            fast_again = [await points.lookup(conn, "demo", **kw) for kw in calls]
            async with conn.transaction():          # inside a transaction the fast path works too
                in_tx = [await points.lookup(conn, "demo", **kw) for kw in calls]
            assert fast == fast_again == in_tx
            original = points._fast_path_ok
            points._fast_path_ok = lambda _conn: False
            try:
                cursor = [await points.lookup(conn, "demo", **kw) for kw in calls]
            finally:
                points._fast_path_ok = original
            return fast, cursor
        finally:
            await conn.close()
    return asyncio.run(go())


def test_the_libpq_lookup_answers_what_the_cursor_answers(seeded_db):
    calls = [{"phones": [PHONE_1]}, {"phones": [PHONE_2]}, {"phones": ["+919800000099"]},
             {"phones": ["+9111", PHONE_1]}, {"phones": [PHONE_2, PHONE_1]}, {"phones": ['+1"\\{,}', PHONE_2]},
             {"customer_id": "REL-0001"}, {"customer_id": "REL-0002"}, {"customer_id": "nobody"},
             {"customer_id": 'quote"back\\slash'}]
    fast, cursor = _both_paths(seeded_db, calls)
    assert fast == cursor
    assert fast[0]["customer_id"] == "REL-0001" and fast[0]["points_available"] == 1020
    assert fast[2] is None and fast[4]["customer_id"] == "REL-0002"


def test_a_connection_killed_under_the_lookup_reads_as_lost(seeded_db):
    from loyalty_moengage.api.state import lost

    async def go():
        conn = await psycopg.AsyncConnection.connect(seeded_db, autocommit=True)
        await points.lookup(conn, "demo", phones=[PHONE_1])
        with psycopg.connect(seeded_db, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        await asyncio.sleep(0.2)
        with pytest.raises(psycopg.OperationalError) as info:
            await points.lookup(conn, "demo", phones=[PHONE_1])
        assert lost(conn, info.value)      # so ApiState.run runs it again on a fresh connection
        await conn.close()
    asyncio.run(go())

