"""The connector webhook's writes: enroll (or update) customers and credit accrual points.

Everything is checked first (payload, stores, phones); then one transaction claims the
idempotency key and writes members, transactions and 'earn' ledger lots, so a request either
fully happens once or not at all. The rows are the ones the nightly sync reads: an accrual lot
recorded now shows up in the next night's ``loyalty_points_earned``.

The relation_reference is what the nightly sync sends to MoEngage as ``customer_id``, so it
should be the user's MoEngage ID. A new member's relation_reference is the item's optional
``customer_id`` when given (campaigns send ``"customer_id": "{{UserAttribute['ID']}}"``), else
``LOYALTY_API_REF_PREFIX`` (default ``PH-``) + the E.164 digits (``+919876543210`` ->
``PH-919876543210``), which MoEngage may not know. Tier = the program's lowest-rank tier,
status active, enrolled_at now(). An existing member (same program, same phone) keeps its
reference, tier and status, even when the payload's customer_id differs (the response returns
the stored reference; no error); non-empty email/name/gender from the payload replace the stored
ones. A reference (given customer_id or derived) that already belongs to another member of the
program, one with a different phone, is a 409 naming the field, and nothing is written.
Points = floor(amount x earn_rate), credited only to active members; expires_on = today in the
program's time zone + points_validity_days.
"""

from __future__ import annotations

import uuid
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection

from loyalty_moengage.api import idempotency
from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.phone import PhoneError, normalize_phone
from loyalty_moengage.api.programs import ProgramInfo
from loyalty_moengage.api.validation import CustomerIn

_STORES = "SELECT store_id FROM loyalty.stores WHERE program_id = %s AND store_id = ANY(%s)"

_UPSERT_MEMBER = """
INSERT INTO loyalty.members AS m
       (program_id, relation_reference, phone, email, name, gender, status, tier, enrolled_at)
VALUES (%(program_id)s, %(ref)s, %(phone)s, %(email)s, %(name)s, %(gender)s, 'active', %(tier)s, now())
ON CONFLICT (program_id, phone) WHERE phone IS NOT NULL DO UPDATE
   SET email = COALESCE(EXCLUDED.email, m.email),
       name = COALESCE(EXCLUDED.name, m.name),
       gender = COALESCE(EXCLUDED.gender, m.gender),
       updated_at = CASE
           WHEN (COALESCE(EXCLUDED.email, m.email), COALESCE(EXCLUDED.name, m.name),
                 COALESCE(EXCLUDED.gender, m.gender)) IS DISTINCT FROM (m.email, m.name, m.gender)
           THEN now() ELSE m.updated_at END
RETURNING m.member_id, m.relation_reference, m.status, m.tier, (m.xmax = 0) AS created
"""
_TRANSACTION = """
INSERT INTO loyalty.transactions
       (transaction_id, program_id, member_id, amount, currency, store_id, channel, occurred_at, recorded_at)
VALUES (%(txn)s, %(program_id)s, %(member_id)s, %(amount)s, %(currency)s, %(store_id)s, %(channel)s, now(), now())
"""
_EARN = """
INSERT INTO loyalty.points_ledger
       (program_id, member_id, entry_type, points, earning_type, transaction_id, expires_on,
        occurred_at, recorded_at)
VALUES (%(program_id)s, %(member_id)s, 'earn', %(points)s, 'accrual', %(txn)s,
        (now() AT TIME ZONE %(tz)s)::date + %(days)s, now(), now())
"""
_REF_OWNER = """
SELECT phone FROM loyalty.members WHERE program_id = %s AND relation_reference = %s
"""
_BALANCE = "SELECT COALESCE(sum(points), 0)::bigint FROM loyalty.points_ledger WHERE member_id = %s"


def relation_reference(prefix: str, e164: str) -> str:
    return prefix + e164.lstrip("+")


def accrual_points(amount: Decimal, earn_rate: Decimal) -> int:
    return int((amount * earn_rate).to_integral_value(rounding=ROUND_FLOOR))


async def check_against_db(conn: AsyncConnection, program: ProgramInfo,
                           customers: list[CustomerIn]) -> list[str]:
    """E.164 phone per customer, after checking each store belongs to the key's program."""
    cur = await conn.execute(_STORES, (program.program_id, sorted({c.store_id for c in customers})))
    known = {row[0] for row in await cur.fetchall()}
    phones = []
    for c in customers:
        if c.store_id not in known:
            raise ApiError(422, f"{c.path}.store_id", "is not a store of this program")
        try:
            phones.append(normalize_phone(c.number, program.default_country))
        except PhoneError as exc:
            raise ApiError(422, f"{c.path}.number", str(exc)) from None
    if program.entry_tier is None:
        raise ApiError(503, None, "the program has no tiers configured")
    return phones


async def _apply(conn: AsyncConnection, program: ProgramInfo, c: CustomerIn, phone: str,
                 ref_prefix: str) -> dict[str, Any]:
    ref = c.customer_id or relation_reference(ref_prefix, phone)
    field = f"{c.path}.customer_id" if c.customer_id else f"{c.path}.number"
    clash = ApiError(409, field, f"customer_id {ref} already belongs to a member with another phone")
    if c.customer_id:
        # Checked up front so an existing member (matched by phone) cannot be paired with a
        # reference another member holds; the UniqueViolation below covers concurrent inserts.
        cur = await conn.execute(_REF_OWNER, (program.program_id, ref))
        owner = await cur.fetchone()
        if owner is not None and owner[0] != phone:
            raise clash
    params = {"program_id": program.program_id, "ref": ref,
              "phone": phone, "email": c.email, "name": c.name, "gender": c.gender,
              "tier": program.entry_tier}
    try:
        cur = await conn.execute(_UPSERT_MEMBER, params)
    except psycopg.errors.UniqueViolation:
        raise clash from None
    member_id, reference, status, tier, created = await cur.fetchone()
    txn, points = "", 0
    if c.amount is not None:
        txn = f"MOE-{uuid.uuid4().hex[:24]}"
        await conn.execute(_TRANSACTION, {"txn": txn, "program_id": program.program_id,
                                          "member_id": member_id, "amount": c.amount,
                                          "currency": program.currency, "store_id": c.store_id,
                                          "channel": c.channel})
        if status == "active":
            points = accrual_points(c.amount, program.earn_rate)
        if points > 0:
            await conn.execute(_EARN, {"program_id": program.program_id, "member_id": member_id,
                                       "points": points, "txn": txn, "tz": program.time_zone,
                                       "days": program.points_validity_days})
    cur = await conn.execute(_BALANCE, (member_id,))
    (available,) = await cur.fetchone()
    return {
        "customer_id": reference,
        "member": "created" if created else "updated",
        "status": status,
        "tier": tier,
        "transaction_id": txn,
        "points_credited": points,
        "points_available": int(available),
    }


async def enroll(conn: AsyncConnection, program: ProgramInfo, customers: list[CustomerIn],
                 rk: idempotency.RequestKey, *, ref_prefix: str, idempotency_hours: int
                 ) -> tuple[bytes, bool]:
    """(JSON response body, replayed). Raises ApiError before anything is committed."""
    phones = await check_against_db(conn, program, customers)
    async with conn.transaction():
        stored = await idempotency.claim(conn, program.program_id, rk, idempotency_hours)
        if stored is not None:
            return stored, True
        results = [await _apply(conn, program, c, phone, ref_prefix) for c, phone in zip(customers, phones)]
        response = orjson.dumps({"status": "success", "results": results})
        await idempotency.save(conn, program.program_id, rk, 200, response, [c.audit() for c in customers])
    return response, False
