"""Crediting one purchase from the connector: counted once by its own id, capped, in the ledger.

A purchase with an id (the connector body's ``purchase_id``, ``order_id`` or ``transaction_id``,
rendered from an event attribute) gets a transaction id derived from the program and that id, so
the transactions table's primary key is what makes it count once, for ever and whatever else the
retry changes (amount, store, phone). A purchase without an id gets a random transaction id: two
such purchases count twice, and only an identical request inside MoEngage's retry window is taken
for a redelivery (idempotency.py).

The caps (config/api_policy.py) are applied here: the points one purchase earns, and the points
one member earns through the connector in the program's day. The member row is locked by the
enrolment's upsert, so two concurrent purchases of one member cannot both pass the daily cap.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from psycopg import AsyncConnection

from loyalty_moengage.api.programs import ProgramInfo
from loyalty_moengage.config.api_policy import ApiPolicy

TXN_PREFIX = "MOE-"
_READABLE_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,80}$")

_TRANSACTION = """
INSERT INTO loyalty.transactions
       (transaction_id, program_id, member_id, amount, currency, store_id, channel, occurred_at, recorded_at)
VALUES (%(txn)s, %(program_id)s, %(member_id)s, %(amount)s, %(currency)s, %(store_id)s, %(channel)s, now(), now())
ON CONFLICT (transaction_id) DO NOTHING
RETURNING 1
"""
_COUNTED = """
SELECT t.member_id, (SELECT COALESCE(sum(l.points), 0)::bigint FROM loyalty.points_ledger l
                     WHERE l.transaction_id = t.transaction_id)
FROM loyalty.transactions t WHERE t.transaction_id = %s
"""
_EARNED_TODAY = """
SELECT COALESCE(sum(points), 0)::bigint FROM loyalty.points_ledger
WHERE member_id = %(member_id)s AND entry_type = 'earn' AND earning_type = 'accrual'
  AND transaction_id LIKE 'MOE-%%'
  AND recorded_at >= (date_trunc('day', now() AT TIME ZONE %(tz)s) AT TIME ZONE %(tz)s)
"""
_EARN = """
INSERT INTO loyalty.points_ledger
       (program_id, member_id, entry_type, points, earning_type, transaction_id, expires_on,
        occurred_at, recorded_at)
VALUES (%(program_id)s, %(member_id)s, 'earn', %(points)s, 'accrual', %(txn)s,
        (now() AT TIME ZONE %(tz)s)::date + %(days)s, now(), now())
"""


@dataclass(frozen=True)
class Credit:
    """What one purchase did: its transaction, the points credited and cut by a cap."""

    transaction_id: str
    points_credited: int
    points_capped: int = 0
    duplicate: bool = False   # this purchase id was counted before: nothing credited now
    foreign: bool = False     # ... for another member: a template or an attacker reusing ids


def transaction_id(program_id: str, purchase_id: str | None) -> str:
    """``MOE-<program>-<purchase id>`` (or a digest of an id that is long or unusual), else random."""
    if purchase_id is None:
        return f"{TXN_PREFIX}{uuid.uuid4().hex[:24]}"
    if _READABLE_ID.match(purchase_id):
        return f"{TXN_PREFIX}{program_id}-{purchase_id}"
    digest = hashlib.sha256(purchase_id.encode("utf-8")).hexdigest()[:32]
    return f"{TXN_PREFIX}{program_id}-#{digest}"  # '#' never appears in a readable id


def accrual_points(amount: Decimal, earn_rate: Decimal) -> int:
    return int((amount * earn_rate).to_integral_value(rounding=ROUND_FLOOR))


async def _capped(conn: AsyncConnection, program: ProgramInfo, policy: ApiPolicy, member_id: int,
                  points: int) -> int:
    points = min(points, policy.max_points_per_purchase)
    if points <= 0:
        return 0
    cur = await conn.execute(_EARNED_TODAY, {"member_id": member_id, "tz": program.time_zone})
    (earned,) = await cur.fetchone()
    return max(0, min(points, policy.max_points_per_member_per_day - int(earned)))


async def credit(conn: AsyncConnection, program: ProgramInfo, policy: ApiPolicy, *, member_id: int,
                 active: bool, amount: Decimal, purchase_id: str | None, store_id: str,
                 channel: str | None) -> Credit:
    """Record the purchase and its accrual lot, once per purchase id; inside the caller's transaction."""
    txn = transaction_id(program.program_id, purchase_id)
    cur = await conn.execute(_TRANSACTION, {"txn": txn, "program_id": program.program_id,
                                            "member_id": member_id, "amount": amount,
                                            "currency": program.currency, "store_id": store_id,
                                            "channel": channel})
    if await cur.fetchone() is None:
        cur = await conn.execute(_COUNTED, (txn,))
        owner, before = await cur.fetchone()
        if owner != member_id:  # say nothing of another member's purchase
            return Credit("", 0, duplicate=True, foreign=True)
        return Credit(txn, int(before), duplicate=True)
    earned = accrual_points(amount, program.earn_rate) if active else 0
    points = await _capped(conn, program, policy, member_id, earned)
    if points > 0:
        await conn.execute(_EARN, {"program_id": program.program_id, "member_id": member_id,
                                   "points": points, "txn": txn, "tz": program.time_zone,
                                   "days": program.points_validity_days})
    return Credit(txn, points, points_capped=earned - points)
