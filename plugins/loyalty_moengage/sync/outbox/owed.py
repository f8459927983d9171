"""Attribute updates the live lane owes (``live.attributes``), kept so none goes stale for long.

MoEngage keeps the last attribute write it applies, whatever its age. Two writes can put an
older snapshot last: a night's refresh (as of the night's end) that lands after a live update
of the next morning, and a live batch sent again after its answer was lost (hours later, at the
night's settle). So a live update sent while the previous night's refresh may still land, and
the attribute elements a resend leaves out, are *owed*: the first live run after that refresh has
landed sends those members' attributes as of then (``sync/live/run.py``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from typing import Any, Iterable

from loyalty_moengage.sync.outbox.states import LIVE_RUN_PREFIX

#: A live run pays at most this many owed members (the rest wait for the next run).
PAY_AT_MOST = 20_000


#: The newest night whose attribute refresh can no longer land: a run of it reported and no
#: night's users batch of that night or older is unsent.
_LANDED = ("SELECT max(r.night) FROM moengage_sync.run_reports r WHERE r.program_id = %(p)s AND NOT EXISTS ("
           "SELECT 1 FROM moengage_sync.batches b WHERE b.program_id = %(p)s AND b.kind = 'users' "
           "AND b.night <= r.night AND NOT starts_with(b.run_id, %(live)s) "
           "AND b.state IN ('staged', 'pending', 'claimed', 'sending', 'uncertain'))")


def refresh_landed(conn: Any, program_id: str) -> date | None:
    """The newest night whose refresh has landed (None: no night has reported yet)."""
    return conn.execute(_LANDED, {"p": program_id, "live": LIVE_RUN_PREFIX}).fetchone()[0]


def at_risk(conn: Any, program_id: str, night: date) -> bool:
    """Could a night's refresh still land after a live update of ``night`` (the refresh of the
    night before has not landed)?"""
    landed = refresh_landed(conn, program_id)
    return landed is None or landed < night - timedelta(days=1)


def owe(conn: Any, program_id: str, customers: Iterable[str], after_night: date) -> int:
    """Record members owed a live attribute update once the refresh of ``after_night`` has landed;
    in the caller's transaction."""
    rows = sorted(set(customers))
    if not rows:
        return 0
    return conn.execute(
        "INSERT INTO moengage_sync.live_attributes_owed (program_id, customer_id, after_night) "
        "SELECT %s, c, %s FROM unnest(%s::text[]) AS c ON CONFLICT (program_id, customer_id) DO UPDATE "
        "SET after_night = greatest(moengage_sync.live_attributes_owed.after_night, EXCLUDED.after_night)",
        (program_id, after_night, rows)).rowcount


def due(conn: Any, program_id: str, limit: int = PAY_AT_MOST) -> list[str]:
    """Owed members whose refresh has landed, oldest debt first (locked until the caller commits,
    so two runs never pay the same debt)."""
    landed = refresh_landed(conn, program_id)
    if landed is None:
        return []
    return [r[0] for r in conn.execute(
        "SELECT customer_id FROM moengage_sync.live_attributes_owed WHERE program_id = %s AND after_night <= %s "
        "ORDER BY since, customer_id LIMIT %s FOR UPDATE SKIP LOCKED", (program_id, landed, limit))]


def paid(conn: Any, program_id: str, customers: list[str]) -> int:
    """The members whose update this transaction enqueues: no longer owed."""
    return conn.execute("DELETE FROM moengage_sync.live_attributes_owed WHERE program_id = %s AND customer_id = ANY(%s)",
                        (program_id, customers)).rowcount


def without_attributes(body: bytes) -> tuple[bytes, list[str]]:
    """An events body with its attribute elements left out, and whose they were."""
    import orjson

    from loyalty_moengage.moengage.packing import BODY_PREFIX, BODY_SUFFIX

    elements = orjson.loads(body)["elements"]
    kept = [orjson.dumps(e) for e in elements if e.get("type") != "customer"]
    owed = [e["customer_id"] for e in elements if e.get("type") == "customer"]
    return BODY_PREFIX + b",".join(kept) + BODY_SUFFIX, owed


def drop_attributes(conn: Any, batch: Any, *, program_id: str, claimed_by: str) -> Any:
    """A live batch that goes again after a lost answer goes without its members' attributes (a
    snapshot that old could overwrite a newer one); they are owed instead. The row shows what is
    sent; in one transaction, only while the claim is ``claimed_by``'s. Returns the batch to send."""
    body, owed = without_attributes(batch.body)
    changed = conn.execute(
        "UPDATE moengage_sync.batches SET body = %s, body_bytes = %s, users = 0, element_count = events, "
        "updated_at = now() WHERE batch_id = %s AND claimed_by = %s AND state = 'claimed'",
        (body, len(body), batch.batch_id, claimed_by)).rowcount
    if changed:
        owe(conn, program_id, owed, batch.night - timedelta(days=1))
    conn.commit()
    return replace(batch, body=body, users=0) if changed else batch
