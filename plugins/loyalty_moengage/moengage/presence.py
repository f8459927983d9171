"""Which customer_ids exist in MoEngage, cached, so the sync never creates a profile.

MoEngage creates a user when it receives an event for an unknown customer_id, whatever
``update_existing_only`` says on user elements. So events are only enqueued for customers the
Get User API has confirmed. A confirmation is trusted for the program's presence lifetime
(``presence_lifetime_hours``, passed in as ``lifetime``): customers are deleted in MoEngage
(erasure requests, clean-ups) and the next event for a deleted customer_id would create the
profile again, so an older ``present = true`` is looked up again before an event is sent. An
absence is checked again after 20 hours, then after twice as long each time it is confirmed (40 h,
80 h, ... at most 30 days): a member may be added to MoEngage later, but one who is not should not
cost a lookup every night they have an event. The lookup budget is small (1,000 users/min);
``presence import`` (``presence_import.py``) seeds the cache from a MoEngage export (its rows
marked ``imported``, trusted no longer than a confirmation made at the import), and the presence
refresher (``sync/ops/presence_refresh.py``) renews confirmations before they expire.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable

ABSENT_RECHECK = "20 hours"
ABSENT_RECHECK_MAX = "30 days"


def known_customers(conn: Any, program_id: str, customer_ids: list[str], lookup: Callable[[list[str]], set[str]],
                    *, lifetime: timedelta) -> tuple[set[str], int]:
    """The subset of ``customer_ids`` present in MoEngage, and how many were looked up now."""
    if not customer_ids:
        return set(), 0
    present, to_check = cached_presence(conn, program_id, customer_ids, lifetime=lifetime)
    if to_check:
        found = lookup(to_check)
        present |= found
        record_answers(conn, program_id, to_check, found)
    return present, len(to_check)


def cached_presence(conn: Any, program_id: str, customer_ids: list[str], *,
                    lifetime: timedelta) -> tuple[set[str], list[str]]:
    """(customers the cache says MoEngage has, customers to look up: unknown, a presence older
    than ``lifetime`` or a stale absence)."""
    if not customer_ids:
        return set(), []
    rows = _with_ids(conn, customer_ids, (
        "SELECT c.customer_id, p.present, p.checked_at > now() - CASE WHEN p.present THEN %s::interval "
        "ELSE least(%s::interval * power(2, least(greatest(p.absent_checks - 1, 0), 6))::int, %s::interval) END "
        "FROM _cids c LEFT JOIN moengage_sync.customer_presence p "
        "ON p.program_id = %s AND p.customer_id = c.customer_id"), (lifetime, ABSENT_RECHECK, ABSENT_RECHECK_MAX,
                                                                    program_id))
    present = {cid for cid, known, fresh in rows if known and fresh}
    return present, sorted(cid for cid, _known, fresh in rows if not fresh)


def renewals_due(conn: Any, program_id: str, customer_ids: list[str], *, older_than: timedelta) -> list[str]:
    """Of ``customer_ids``, those cached present on an answer older than ``older_than`` (expired
    ones included) or on an import no Get User answer has confirmed yet: oldest first, so a
    refresher short of budget renews those closest to expiry before the others."""
    if not customer_ids:
        return []
    rows = _with_ids(conn, customer_ids, (
        "SELECT p.customer_id FROM _cids c JOIN moengage_sync.customer_presence p "
        "ON p.program_id = %s AND p.customer_id = c.customer_id "
        "WHERE p.present AND (p.imported OR p.checked_at <= now() - %s::interval) "
        "ORDER BY p.checked_at, p.customer_id"), (program_id, older_than))
    return [cid for cid, in rows]


def _with_ids(conn: Any, customer_ids: list[str], sql: str, params: tuple) -> list[tuple]:
    """``sql``'s rows with ``customer_ids`` in the temporary table ``_cids`` (COPY: a page of
    thousands of ids is one round trip, not a parameter list)."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS _cids (customer_id text) ON COMMIT DELETE ROWS")
    with conn.cursor() as cur:
        with cur.copy("COPY _cids (customer_id) FROM STDIN") as copy:
            for cid in customer_ids:
                copy.write_row((cid,))
        cur.execute(sql, params)
        rows = cur.fetchall()
        cur.execute("TRUNCATE _cids")
    return rows


def record_answers(conn: Any, program_id: str, checked: list[str], found: set[str]) -> None:
    """Cache the Get User API's answers for ``checked`` (``found``: those it has); an answer is a
    confirmation, so it ends an import's unconfirmed mark and starts a new lifetime."""
    if checked:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO moengage_sync.customer_presence AS p (program_id, customer_id, present, absent_checks) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (program_id, customer_id) DO UPDATE SET present = EXCLUDED.present, "
                "checked_at = now(), imported = false, "
                "absent_checks = CASE WHEN EXCLUDED.present THEN 0 ELSE p.absent_checks + 1 END",
                [(program_id, cid, cid in found, 0 if cid in found else 1) for cid in checked],
            )
