"""Live points of one member, with the same arithmetic as the nightly sync's member attributes
(include/sql/members/attributes.sql), so a Content API and the synced attributes agree:

* points_available = sum(points) over all the member's ledger entries;
* points_expiring_Nd = sum of the remaining points (lot points + entries naming the lot) of earn
  lots with expires_on in (today, today + N], today being the date in the program's time zone;
* next_expiry_date = min expires_on of lots with remaining > 0 and expires_on > today, or ""
  when there is none (MoEngage templates stop on null, so no field is ever null).

One round trip and one pass over the member's ledger rows: the member by (program_id, phone) or (program_id, relation_reference) uses the
unique indexes, the ledger rows by ``ledger_member_recorded_idx``; a member has few rows.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

_SQL = """
WITH mem AS (
    SELECT m.member_id, m.relation_reference, m.tier, m.status,
           (now() AT TIME ZONE p.time_zone)::date AS today
    FROM loyalty.members m
    JOIN loyalty.programs p ON p.program_id = m.program_id
    WHERE m.program_id = %(program_id)s AND {where}
    {order}
),
lots AS (
    SELECT max(l.expires_on) AS expires_on, sum(l.points) AS remaining
    FROM mem
    JOIN loyalty.points_ledger l ON l.member_id = mem.member_id
    GROUP BY COALESCE(l.lot_entry_id, l.entry_id)
)
SELECT mem.relation_reference, mem.tier, mem.status, mem.today,
       COALESCE(sum(lots.remaining), 0)::bigint AS points_available,
       COALESCE(sum(lots.remaining) FILTER (
           WHERE lots.expires_on > mem.today AND lots.expires_on <= mem.today + 30), 0)::bigint AS d30,
       COALESCE(sum(lots.remaining) FILTER (
           WHERE lots.expires_on > mem.today AND lots.expires_on <= mem.today + 60), 0)::bigint AS d60,
       COALESCE(sum(lots.remaining) FILTER (
           WHERE lots.expires_on > mem.today AND lots.expires_on <= mem.today + 90), 0)::bigint AS d90,
       min(lots.expires_on) FILTER (WHERE lots.remaining > 0 AND lots.expires_on > mem.today) AS next_expiry
FROM mem
LEFT JOIN lots ON true
GROUP BY mem.relation_reference, mem.tier, mem.status, mem.today
"""
BY_PHONE = _SQL.format(where="m.phone = %(key)s", order="")
# A number with several readings (phone.py): the member of the likeliest reading that exists.
BY_PHONES = _SQL.format(where="m.phone = ANY(%(key)s)", order="ORDER BY array_position(%(key)s, m.phone) LIMIT 1")
BY_REFERENCE = _SQL.format(where="m.relation_reference = %(key)s", order="")


async def lookup(conn: AsyncConnection, program_id: str, *, phones: list[str] | None = None,
                 customer_id: str | None = None) -> dict[str, Any] | None:
    """The flat JSON object a MoEngage template reads, or None for an unknown member."""
    if phones:
        sql, key = (BY_PHONE, phones[0]) if len(phones) == 1 else (BY_PHONES, phones)
    else:
        sql, key = BY_REFERENCE, customer_id
    cur = await conn.execute(sql, {"program_id": program_id, "key": key}, prepare=True)
    row = await cur.fetchone()
    if row is None:
        return None
    reference, tier, status, today, available, d30, d60, d90, next_expiry = row
    return {
        "member": True,
        "customer_id": reference,
        "points_available": int(available),
        "tier": tier,
        "status": status,
        "points_expiring_30d": int(d30),
        "points_expiring_60d": int(d60),
        "points_expiring_90d": int(d90),
        "next_expiry_date": next_expiry.isoformat() if next_expiry else "",
        "as_of_date": today.isoformat(),
    }


def non_member(as_of_date: str) -> dict[str, Any]:
    """The answer for someone who is not a member, where the program asks for one (a campaign
    then still sends: every field a template reads is there, none null)."""
    return {"member": False, "customer_id": "", "points_available": 0, "tier": "", "status": "",
            "points_expiring_30d": 0, "points_expiring_60d": 0, "points_expiring_90d": 0,
            "next_expiry_date": "", "as_of_date": as_of_date}
