"""The connector webhook's writes: enroll (or update) customers and credit their purchases.

Everything is checked first (payload, stores, phones); then one transaction claims the
idempotency key and writes members, transactions and 'earn' ledger lots, so a request either
fully happens once or not at all. The rows are the ones the nightly sync reads: an accrual lot
recorded now shows up in the next night's ``loyalty_points_earned``.

Phones: a number is matched to an existing member by any of its readings (phone.py:
``9876543210.0``, ``14155550123`` without its ``+``); a new member is created only from a
reading that is valid, or from the only possible one, so a misread phone never makes a phantom
member that would collect the real member's points.

The relation_reference is what the nightly sync sends to MoEngage as ``customer_id``, so it
should be the user's MoEngage ID. A new member's relation_reference is the item's optional
``customer_id`` when given (campaigns send ``"customer_id": "{{UserAttribute['ID']}}"``), else
``LOYALTY_API_REF_PREFIX`` (default ``PH-``) + the E.164 digits (``+919876543210`` ->
``PH-919876543210``), which MoEngage may not know. A member enrolled that way is linked later:
the first payload that gives a ``customer_id`` (not held by another member) replaces the derived
reference, so the sync (which never creates profiles) reaches the member. Any other existing
member keeps its reference whatever the payload says. Name, email and gender from a campaign
only fill what the loyalty platform left empty, unless the program's ``api.profile_updates``
is ``overwrite``. A ``customer_id`` held by another member of the program is left out and
reported (the purchase still counts for the member the phone names); only a derived reference
held by a member with another phone is a 409, with nothing written.
Tier = the program's lowest-rank tier, status active. Points: purchases.py.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection

from loyalty_moengage.api import idempotency
from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.phone import PhoneError, is_valid_reading, phone_candidates, readings_to_match
from loyalty_moengage.api.programs import ProgramInfo
from loyalty_moengage.api.purchases import credit
from loyalty_moengage.api.validation import CustomerIn, FieldProblem
from loyalty_moengage.config.api_policy import ApiPolicy

_STORES = "SELECT store_id FROM loyalty.stores WHERE program_id = %s AND store_id = ANY(%s)"
_KNOWN_PHONES = "SELECT phone FROM loyalty.members WHERE program_id = %s AND phone = ANY(%s)"

_UPSERT = """
INSERT INTO loyalty.members AS m
       (program_id, relation_reference, phone, email, name, gender, status, tier, enrolled_at)
VALUES (%(program_id)s, %(ref)s, %(phone)s, %(email)s, %(name)s, %(gender)s, 'active', %(tier)s, now())
ON CONFLICT (program_id, phone) WHERE phone IS NOT NULL DO UPDATE
   SET email = {email}, name = {name}, gender = {gender},
       updated_at = CASE WHEN ({email}, {name}, {gender}) IS DISTINCT FROM (m.email, m.name, m.gender)
                         THEN now() ELSE m.updated_at END
RETURNING m.member_id, m.relation_reference, m.status, m.tier, (m.xmax = 0) AS created
"""
#: fill_blanks: the platform's value wins; overwrite: a non-empty campaign value wins.
UPSERT_MEMBER = {
    "fill_blanks": _UPSERT.format(email="COALESCE(m.email, EXCLUDED.email)",
                                  name="COALESCE(m.name, EXCLUDED.name)",
                                  gender="COALESCE(m.gender, EXCLUDED.gender)"),
    "overwrite": _UPSERT.format(email="COALESCE(EXCLUDED.email, m.email)",
                                name="COALESCE(EXCLUDED.name, m.name)",
                                gender="COALESCE(EXCLUDED.gender, m.gender)"),
}
_REF_OWNER = "SELECT phone FROM loyalty.members WHERE program_id = %s AND relation_reference = %s"
_LINK = """
UPDATE loyalty.members SET relation_reference = %(ref)s, updated_at = now()
WHERE member_id = %(member_id)s AND relation_reference = %(derived)s
"""
_BALANCE = "SELECT COALESCE(sum(points), 0)::bigint FROM loyalty.points_ledger WHERE member_id = %s"


def relation_reference(prefix: str, e164: str) -> str:
    return prefix + e164.lstrip("+")


def choose_phone(candidates: list[str], known: set[str]) -> str | None:
    """The member's phone among the readings: the likeliest when it is valid (another member
    under a less likely reading must never get this customer's purchase: ``6499962283`` in India
    is not New Zealand's ``+64 9996 2283``); else a known member's reading; else the first valid
    one, or the only one; None when only guesses remain."""
    candidates = readings_to_match(candidates)
    for phone in candidates:
        if phone in known:
            return phone
    for phone in candidates:
        if is_valid_reading(phone):
            return phone
    return candidates[0] if len(candidates) == 1 else None


async def check_against_db(conn: AsyncConnection, program: ProgramInfo,
                           customers: list[CustomerIn]) -> list[str]:
    """E.164 phone per customer, after checking each store belongs to the key's program."""
    if program.entry_tier is None:
        raise ApiError(403, None, f"program {program.program_id} has no tiers in the loyalty database "
                                  "(loyalty.tiers): a new member could not be given one")
    cur = await conn.execute(_STORES, (program.program_id, sorted({c.store_id for c in customers})))
    known_stores = {row[0] for row in await cur.fetchall()}
    readings = []
    for c in customers:
        if c.store_id not in known_stores:
            raise ApiError(422, f"{c.path}.store_id", "is not a store of this program")
        try:
            readings.append(phone_candidates(c.number, program.default_country))
        except PhoneError as exc:
            raise ApiError(422, f"{c.path}.number", str(exc)) from None
    cur = await conn.execute(_KNOWN_PHONES, (program.program_id, sorted({p for r in readings for p in r})))
    known = {row[0] for row in await cur.fetchall()}
    phones = []
    for c, candidates in zip(customers, readings):
        phone = choose_phone(candidates, known)
        if phone is None:
            raise ApiError(422, f"{c.path}.number", "can be read as more than one phone number and none "
                                                    "is a member: send it with + and the country code")
        phones.append(phone)
    return phones


async def _upsert(conn: AsyncConnection, policy: ApiPolicy, params: dict[str, Any]) -> tuple | None:
    """The member row (locked), or None when ``params['ref']`` is held by another member: in a
    savepoint, so that clash leaves the request's transaction usable."""
    try:
        async with conn.transaction():
            cur = await conn.execute(UPSERT_MEMBER[policy.profile_updates], params)
            return await cur.fetchone()
    except psycopg.errors.UniqueViolation:
        return None


async def _link(conn: AsyncConnection, member_id: int, ref: str, derived: str) -> bool:
    try:
        async with conn.transaction():
            cur = await conn.execute(_LINK, {"ref": ref, "member_id": member_id, "derived": derived})
            return cur.rowcount == 1
    except psycopg.errors.UniqueViolation:  # another member took ref meanwhile
        return False


async def _member(conn: AsyncConnection, program: ProgramInfo, policy: ApiPolicy, c: CustomerIn,
                  phone: str, ref_prefix: str, problems: list[FieldProblem]) -> tuple[int, str, str, str, bool, bool]:
    """(member_id, reference, status, tier, created, linked) after the upsert (row locked). A
    customer_id another member holds is left out and reported: the purchase still counts for
    the member the phone names, and nobody can take over another member's MoEngage profile."""
    derived = relation_reference(ref_prefix, phone)
    ref = c.customer_id or derived
    taken = FieldProblem(f"{c.path}.customer_id", "belongs to another member of the program; left out")
    if c.customer_id:
        cur = await conn.execute(_REF_OWNER, (program.program_id, ref))
        owner = await cur.fetchone()
        if owner is not None and owner[0] != phone:
            problems.append(taken)
            ref = derived
    params = {"program_id": program.program_id, "ref": ref, "phone": phone, "email": c.email,
              "name": c.name, "gender": c.gender, "tier": program.entry_tier}
    row = await _upsert(conn, policy, params)
    if row is None and ref != derived:
        problems.append(taken)
        ref = params["ref"] = derived
        row = await _upsert(conn, policy, params)
    if row is None:
        raise ApiError(409, f"{c.path}.number", f"the reference {derived} already belongs to a member with another phone")
    member_id, reference, status, tier, created = row
    linked = False
    if c.customer_id and ref == c.customer_id and not created and reference == derived and ref != derived:
        linked = await _link(conn, member_id, ref, derived)
        if linked:
            reference = ref
        else:
            problems.append(taken)
    return member_id, reference, status, tier, created, linked


async def _apply(conn: AsyncConnection, program: ProgramInfo, policy: ApiPolicy, c: CustomerIn,
                 phone: str, ref_prefix: str) -> dict[str, Any]:
    problems = list(c.problems)
    member_id, reference, status, tier, created, linked = await _member(conn, program, policy, c, phone,
                                                                         ref_prefix, problems)
    result: dict[str, Any] = {"customer_id": reference, "member": "created" if created else "updated",
                              "status": status, "tier": tier, "linked": linked, "transaction_id": "",
                              "points_credited": 0, "points_capped": 0, "purchase": "none"}
    if c.amount is not None:
        done = await credit(conn, program, policy, member_id=member_id, active=status == "active",
                            amount=c.amount, purchase_id=c.purchase_id, store_id=c.store_id,
                            channel=c.channel)
        result.update(transaction_id=done.transaction_id, points_credited=done.points_credited,
                      points_capped=done.points_capped,
                      purchase="already_counted" if done.duplicate else "counted")
        if done.foreign:
            result["purchase"] = "not_counted"
            problems.append(FieldProblem(f"{c.path}.purchase_id", "is the id of another member's purchase; "
                                                                  "this one was not counted"))
    cur = await conn.execute(_BALANCE, (member_id,))
    (available,) = await cur.fetchone()
    result["points_available"] = int(available)
    result["ignored_fields"] = [{"field": p.field, "reason": p.reason} for p in problems]
    return result


async def enroll(conn: AsyncConnection, program: ProgramInfo, policy: ApiPolicy, customers: list[CustomerIn],
                 rk: idempotency.RequestKey, *, ref_prefix: str, test: bool = False) -> tuple[bytes, bool]:
    """(JSON response body, replayed). Raises ApiError before anything is committed; with
    ``test`` everything is done and answered, then rolled back (MoEngage's Test button)."""
    phones = await check_against_db(conn, program, customers)
    async with conn.transaction(force_rollback=test):
        stored = await idempotency.claim(conn, program.program_id, rk)
        if stored is not None:
            return stored, True
        results = [await _apply(conn, program, policy, c, phone, ref_prefix)
                   for c, phone in zip(customers, phones)]
        response = orjson.dumps({"status": "success", "test": test, "deduplication": rk.describe(),
                                 "results": results})
        await idempotency.save(conn, program.program_id, rk, 200, response, [c.audit() for c in customers])
    return response, False
