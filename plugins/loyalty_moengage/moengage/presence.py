"""Which customer_ids exist in MoEngage, cached, so the sync never creates a profile.

MoEngage creates a user when it receives an event for an unknown customer_id, whatever
``update_existing_only`` says on user elements. So events are only enqueued for customers the
Get User API has confirmed; confirmations are cached for good. An absence is checked again
after 20 hours, then after twice as long each time it is confirmed (40 h, 80 h, ... at most 30
days): a member may be added to MoEngage later, but one who is not should not cost a lookup every
night they have an event. The lookup budget is small (1,000 users/min); ``presence import``
(``presence_import.py``) seeds the cache from a MoEngage export.
"""

from __future__ import annotations

from typing import Any, Callable

ABSENT_RECHECK = "20 hours"
ABSENT_RECHECK_MAX = "30 days"


def known_customers(conn: Any, program_id: str, customer_ids: list[str],
                    lookup: Callable[[list[str]], set[str]]) -> tuple[set[str], int]:
    """The subset of ``customer_ids`` present in MoEngage, and how many were looked up now."""
    if not customer_ids:
        return set(), 0
    present, to_check = cached_presence(conn, program_id, customer_ids)
    if to_check:
        found = lookup(to_check)
        present |= found
        record_answers(conn, program_id, to_check, found)
    return present, len(to_check)


def cached_presence(conn: Any, program_id: str, customer_ids: list[str]) -> tuple[set[str], list[str]]:
    """(customers the cache says MoEngage has, customers to look up: unknown or a stale absence)."""
    if not customer_ids:
        return set(), []
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS _cids (customer_id text) ON COMMIT DELETE ROWS")
    with conn.cursor() as cur:
        with cur.copy("COPY _cids (customer_id) FROM STDIN") as copy:
            for cid in customer_ids:
                copy.write_row((cid,))
        cur.execute(
            "SELECT c.customer_id, p.present, p.checked_at > now() - least(%s::interval * "
            "power(2, least(greatest(p.absent_checks - 1, 0), 6))::int, %s::interval) "
            "FROM _cids c LEFT JOIN moengage_sync.customer_presence p "
            "ON p.program_id = %s AND p.customer_id = c.customer_id",
            (ABSENT_RECHECK, ABSENT_RECHECK_MAX, program_id),
        )
        rows = cur.fetchall()
        cur.execute("TRUNCATE _cids")
    present = {cid for cid, known, _fresh in rows if known}
    return present, sorted(cid for cid, known, fresh in rows if not known and not fresh)


def record_answers(conn: Any, program_id: str, checked: list[str], found: set[str]) -> None:
    """Cache the Get User API's answers for ``checked`` (``found``: those it has)."""
    if checked:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO moengage_sync.customer_presence AS p (program_id, customer_id, present, absent_checks) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (program_id, customer_id) DO UPDATE SET present = EXCLUDED.present, "
                "checked_at = now(), absent_checks = CASE WHEN EXCLUDED.present THEN 0 ELSE p.absent_checks + 1 END",
                [(program_id, cid, cid in found, 0 if cid in found else 1) for cid in checked],
            )
