"""Attribute updates the live lane owes (``live.attributes``), so no balance is left older than
the last write.

MoEngage keeps the last attribute write it applies, whatever its age. An older snapshot can land
after a live update in three ways, and each leaves the member *owed* a fresh update:

- **a night's refresh** (as of the night's end) enqueued after a live write of a later night: each
  refresh chunk owes its members written live since (:func:`owe_refreshed`, in the chunk's
  transaction); one already in flight when a live write goes out owes that write's members
  (:func:`in_flight`);
- **a live write in doubt** (its answer lost: MoEngage may apply it late, after a newer one);
- **a resend** of a live write after a lost answer, or a live write left unsent until a newer
  refresh was decided (pending across midnight): it goes without the attributes
  (:func:`before_resend`).

The first live run with no refresh in flight (none unsent, the deciding run reported, the last
one sent ``settle_seconds`` ago) sends the owed members' attributes as of then
(``sync/live/run.py``), and deletes the debts in the same transaction.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Any, Iterable

from loyalty_moengage.sync.outbox.states import LIVE_RUN_PREFIX

#: A live run pays at most this many owed members (the rest wait for the next run).
PAY_AT_MOST = 20_000
#: A member whose row the members template cannot compute (bad data) is tried again this much later,
#: so the debts behind it are paid meanwhile.
BAD_ROW_RETRY_SECONDS = 900.0

#: A night's refresh may still land after a live write: one of its users batches is unsent, the
#: run that decided the newest refresh has not reported since, or the last one was sent less than
#: %(settle)s seconds ago (MoEngage may apply a write it answered later than one sent after it).
_IN_FLIGHT = (
    "SELECT EXISTS (SELECT 1 FROM moengage_sync.batches b WHERE b.program_id = %(p)s AND b.kind = 'users' "
    "  AND NOT starts_with(b.run_id, %(live)s) AND (b.state IN ('staged', 'pending', 'claimed', 'sending', 'uncertain') "
    "  OR (b.state = 'sent' AND b.sent_at > now() - make_interval(secs => %(settle)s)))) "
    "OR EXISTS (SELECT 1 FROM moengage_sync.attribute_watermark w WHERE w.program_id = %(p)s AND NOT EXISTS ("
    "  SELECT 1 FROM moengage_sync.run_reports r WHERE r.program_id = w.program_id AND r.run_id = w.run_id "
    "  AND r.reported_at >= w.updated_at))")


#: Owed again even while a payment holds the row: the insert waits for the payment's delete (a
#: DO NOTHING would not wait, and the debt would be deleted with the payment of an older one).
#: Every insert takes its rows in customer order, so two never wait on each other crosswise.
_AGAIN = "ON CONFLICT (program_id, customer_id) DO UPDATE SET not_before = greatest(o.not_before, EXCLUDED.not_before)"


def in_flight(conn: Any, program_id: str, settle_seconds: float) -> bool:
    """Could a night's refresh still land after a live write sent now?"""
    return conn.execute(_IN_FLIGHT, {"p": program_id, "live": LIVE_RUN_PREFIX, "settle": settle_seconds}).fetchone()[0]


def written(conn: Any, program_id: str, customers: Iterable[str], night: date) -> None:
    """Members whose attributes a live batch of ``night`` carries (caller's transaction)."""
    rows = sorted(set(customers))
    if rows:
        conn.execute(
            "INSERT INTO moengage_sync.live_attribute_writes (program_id, customer_id, night) "
            "SELECT %s, c, %s FROM unnest(%s::text[]) AS c ON CONFLICT (program_id, customer_id) DO UPDATE "
            "SET night = greatest(moengage_sync.live_attribute_writes.night, EXCLUDED.night)",
            (program_id, night, rows))


def forget_covered(conn: Any, program_id: str, night: date) -> None:
    """A refresh of ``night`` was decided (caller's transaction): live writes of that night or
    older can no longer be overwritten by an older snapshot."""
    conn.execute("DELETE FROM moengage_sync.live_attribute_writes WHERE program_id = %s AND night <= %s",
                 (program_id, night))


def owe_refreshed(conn: Any, program_id: str, night: date, customers: list[str]) -> int:
    """A chunk of ``night``'s refresh is enqueued (caller's transaction): its members written live
    in a later night get this older snapshot after theirs, and are owed. A rerun whose chunks
    were enqueued before sends nothing and owes nothing."""
    if not conn.execute("SELECT EXISTS (SELECT 1 FROM moengage_sync.live_attribute_writes WHERE program_id = %s "
                        "AND night > %s)", (program_id, night)).fetchone()[0]:
        return 0
    return conn.execute(
        "INSERT INTO moengage_sync.live_attributes_owed AS o (program_id, customer_id) SELECT program_id, customer_id "
        "FROM moengage_sync.live_attribute_writes WHERE program_id = %s AND night > %s AND customer_id = ANY(%s) "
        "ORDER BY customer_id " + _AGAIN, (program_id, night, customers)).rowcount


def owe(conn: Any, program_id: str, customers: Iterable[str], *, not_before_seconds: float = 0.0) -> int:
    """Members owed a fresh update (caller's transaction); ``not_before_seconds``: a write in
    doubt may still land that long, and a payment sent before it could be overwritten by it."""
    rows = sorted(set(customers))
    if not rows:
        return 0
    return conn.execute(
        "INSERT INTO moengage_sync.live_attributes_owed AS o (program_id, customer_id, not_before) "
        "SELECT %s, c, now() + make_interval(secs => %s) FROM unnest(%s::text[]) AS c " + _AGAIN,
        (program_id, not_before_seconds, rows)).rowcount


def owe_in_doubt(conn: Any, program_id: str, bodies: Iterable[bytes], wait_seconds: float | None = None) -> int:
    """The members whose attributes these bodies carry, sent with an answer lost: MoEngage may
    still apply them, after a newer write, for the receipt wait (``wait_seconds``, default the
    receipts' default); they are owed, paid once it has passed (caller's transaction)."""
    from loyalty_moengage.sync.outbox.receipts import ReceiptSettings

    wait = ReceiptSettings().wait_seconds if wait_seconds is None else wait_seconds
    return owe(conn, program_id, [c for body in bodies for c in split(body)[1]], not_before_seconds=wait)


def hold_refresh_decision(conn: Any, program_id: str) -> None:
    """Share-lock the program's refresh decision (caller's transaction): a decision cannot commit
    between this transaction's look at what is in flight and its commit (plan.py takes it FOR UPDATE)."""
    conn.execute("SELECT 1 FROM moengage_sync.attribute_watermark WHERE program_id = %s FOR SHARE", (program_id,))


def due(conn: Any, program_id: str, settle_seconds: float, limit: int = PAY_AT_MOST) -> list[str]:
    """Owed members, oldest debt first, when no refresh is in flight and no write in doubt of
    theirs can still land (locked until the caller commits, so two runs never pay the same debt)."""
    if in_flight(conn, program_id, settle_seconds):
        return []
    return [r[0] for r in conn.execute(
        "SELECT customer_id FROM moengage_sync.live_attributes_owed WHERE program_id = %s AND not_before <= now() "
        "ORDER BY since, customer_id LIMIT %s FOR UPDATE SKIP LOCKED", (program_id, limit))]


def defer(conn: Any, program_id: str, customers: list[str], seconds: float = BAD_ROW_RETRY_SECONDS) -> int:
    """Debts that cannot be paid now (their rows fail the template) wait ``seconds``, still owed."""
    return conn.execute(
        "UPDATE moengage_sync.live_attributes_owed SET not_before = now() + make_interval(secs => %s) "
        "WHERE program_id = %s AND customer_id = ANY(%s)", (seconds, program_id, customers)).rowcount


def paid(conn: Any, program_id: str, customers: list[str]) -> int:
    """The members whose update this transaction enqueues: no longer owed."""
    return conn.execute("DELETE FROM moengage_sync.live_attributes_owed WHERE program_id = %s AND customer_id = ANY(%s)",
                        (program_id, customers)).rowcount


def split(body: bytes) -> tuple[bytes, list[str]]:
    """A body without its attribute elements, and whose they were."""
    import orjson

    from loyalty_moengage.moengage.packing import BODY_PREFIX, BODY_SUFFIX

    elements = orjson.loads(body)["elements"]
    kept = [orjson.dumps(e) for e in elements if e.get("type") != "customer"]
    return BODY_PREFIX + b",".join(kept) + BODY_SUFFIX, [e["customer_id"] for e in elements if e.get("type") == "customer"]


def covered_by_refresh(conn: Any, program_id: str, night: date) -> bool:
    """A refresh of ``night`` or a later one is decided: a live attribute write of ``night`` not
    sent yet (left pending across midnight) is older than that refresh's snapshot."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM moengage_sync.attribute_watermark WHERE program_id = %s "
                        "AND night >= %s)", (program_id, night)).fetchone()[0]


class RefreshDecided(RuntimeError):
    """A refresh covering a live attribute write was decided while its request waited (a 429, the
    rate budget): nothing of it left; taken again, it goes without its attributes."""


def _covered(conn: Any, batch: Any, program_id: str) -> bool:
    """A live write with attributes that a refresh decided since covers."""
    return bool(batch.users and batch.live) and covered_by_refresh(conn, program_id, batch.night)


def check_not_covered(conn: Any, batch: Any, program_id: str) -> None:
    """Right before each HTTP request of a live write with attributes (after any wait)."""
    if _covered(conn, batch, program_id):
        raise RefreshDecided(f"batch {batch.batch_id}: a refresh covering its attributes was decided while it waited")


def stale_attributes(conn: Any, batch: Any, program_id: str) -> str | None:
    """Why a claimed batch's attributes may be older than a write sent since, or None: a live write
    going again after a lost answer, or one left unsent until a newer refresh was decided."""
    if batch.users and batch.live and batch.lost_answers:
        return "a live attribute update whose answer was lost"
    if _covered(conn, batch, program_id):
        return "a live attribute update left unsent until a newer night's refresh was decided"
    return None


def before_resend(conn: Any, batch: Any, *, program_id: str, claimed_by: str, wait_seconds: float | None,
                  why: str = "a live attribute update whose answer was lost") -> Any:
    """A live write whose snapshot may be older than one sent since (``why``: :func:`stale_attributes`):
    an events batch goes without its attribute elements (the row is rewritten, so it says what
    went), a live users batch does not go at all (``superseded``); their members are owed, due
    after ``wait_seconds``. In one transaction, only while the claim is ``claimed_by``'s. Returns
    the batch to send, or None."""
    if batch.kind == "events":
        body, _ = split(batch.body)
        changed = conn.execute(
            "UPDATE moengage_sync.batches SET body = %s, body_bytes = %s, users = 0, element_count = events, "
            "updated_at = now() WHERE batch_id = %s AND claimed_by = %s AND state = 'claimed'",
            (body, len(body), batch.batch_id, claimed_by)).rowcount
        out = replace(batch, body=body, users=0) if changed else batch
    else:
        changed = conn.execute(
            "UPDATE moengage_sync.batches SET state = 'superseded', claimed_by = NULL, updated_at = now(), "
            "error = %s WHERE batch_id = %s AND claimed_by = %s AND state = 'claimed' AND starts_with(run_id, %s)",
            (f"{why}: owed again as of now instead", batch.batch_id, claimed_by, LIVE_RUN_PREFIX)).rowcount
        out = None if changed else batch
    if changed:
        owe_in_doubt(conn, program_id, [batch.body], wait_seconds)
    conn.commit()
    return out
