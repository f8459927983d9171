"""Operator actions on uncertain batches: resend them, or record that MoEngage has them.

MoEngage keeps no event ids, so a resend is the one way to send an event twice on purpose.
Every action is recorded (who, when, why, scope, how many) in ``moengage_sync.resend_requests``
and done in one transaction:

- ``resend`` (default scope ``uncertain``): the uncertain batches (of one night, the named
  batches, or of every night) go back to ``pending`` as they are, and the next load sends them. Nothing MoEngage
  accepted with a 200 is touched. An uncertain batch whose body is gone has its event keys
  forgotten instead, so the next run of its night extracts those events again.
- ``resend`` with ``all_events`` (scope ``night``, one night only): additionally forgets the
  event keys of the night's sent batches, so a rerun of that night sends all of it once more
  (after a MoEngage-side loss).
- ``resolve``: the operator checked MoEngage and the uncertain batches arrived: they become
  ``sent`` and stop being reported as needing attention.
"""

from __future__ import annotations

from datetime import date
from typing import Any

def _check_who(requested_by: str, reason: str) -> None:
    if not requested_by.strip() or not reason.strip():
        raise ValueError("this needs --requested-by and --reason: they are kept with the request")


def _where(night: date | None, batch_ids: list[int] | None) -> tuple[str, tuple[Any, ...]]:
    """Which uncertain batches: of one night, or the named ones, or every one."""
    clause, params = "", ()
    if night is not None:
        clause, params = " AND night = %s", (night,)
    if batch_ids:
        clause, params = clause + " AND batch_id = ANY(%s)", (*params, list(batch_ids))
    return clause, params


def resend(dsn: str, *, program_id: str, night: date | None = None, batch_ids: list[int] | None = None,
           all_events: bool = False, requested_by: str, reason: str) -> dict[str, Any]:
    from loyalty_moengage.db import connect

    _check_who(requested_by, reason)
    if all_events and night is None:
        raise ValueError("a full resend (--all-events) names the night it resends (--night)")
    if all_events and batch_ids:
        raise ValueError("a full resend (--all-events) covers a whole night, not named batches")
    where, params = _where(night, batch_ids)
    with connect(dsn) as conn:
        requeued = conn.execute(
            "UPDATE moengage_sync.batches SET state = 'pending', claimed_by = NULL, updated_at = now(), "
            "settled_by = 'operator', error = 'requeued by operator resend' WHERE program_id = %s AND state = 'uncertain' "
            "AND body IS NOT NULL" + where + " RETURNING batch_id, events, users",
            (program_id, *params),
        ).fetchall()
        bodiless = [r[0] for r in conn.execute(
            "UPDATE moengage_sync.batches SET state = 'superseded', updated_at = now(), "
            "error = 'uncertain, body gone: its events are extracted again by the next run of the night' "
            "WHERE program_id = %s AND state = 'uncertain' AND body IS NULL" + where + " RETURNING batch_id",
            (program_id, *params)).fetchall()]
        forgotten = conn.execute(
            "DELETE FROM moengage_sync.event_keys WHERE program_id = %s AND batch_id = ANY(%s)",
            (program_id, bodiless)).rowcount
        if all_events:
            forgotten += conn.execute(
                "DELETE FROM moengage_sync.event_keys k WHERE k.program_id = %s AND k.night = %s "
                "AND EXISTS (SELECT 1 FROM moengage_sync.batches b WHERE b.batch_id = k.batch_id "
                "AND b.state = 'sent')",
                (program_id, night)).rowcount
        events = forgotten + sum(r[1] for r in requeued)
        conn.execute(
            "INSERT INTO moengage_sync.resend_requests (program_id, night, requested_by, reason, events, scope, "
            "batches) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (program_id, night, requested_by, reason, events, "night" if all_events else "uncertain",
             len(requeued)),
        )
    scope = f"night {night}" if night else "every night"
    return {
        "program_id": program_id,
        "night": night,
        "scope": "all events of the night" if all_events else f"uncertain batches of {scope}",
        "requested_by": requested_by,
        "batches_requeued": len(requeued),
        "events_requeued": sum(r[1] for r in requeued),
        "members_requeued": sum(r[2] for r in requeued),
        "event_keys_forgotten": forgotten,
        "next_step": (f"rerun night {night}: clear its DAG run in the Airflow UI, or "
                      f"`loyalty-moengage run --program {program_id} --night {night}`")
                     if forgotten else "the next load (a rerun, the next attempt or the next night) sends them",
    }


def resolve(dsn: str, *, program_id: str, night: date | None = None, batch_ids: list[int] | None = None,
            requested_by: str, reason: str) -> dict[str, Any]:
    """The operator confirmed in MoEngage that the uncertain batches arrived."""
    from loyalty_moengage.db import connect

    _check_who(requested_by, reason)
    where, params = _where(night, batch_ids)
    with connect(dsn) as conn:
        settled = conn.execute(
            "UPDATE moengage_sync.batches SET state = 'sent', updated_at = now(), settled_by = 'operator', "
            "error = 'uncertain; confirmed received by ' || %s WHERE program_id = %s AND state = 'uncertain'"
            + where + " RETURNING events",
            (requested_by, program_id, *params)).fetchall()
        conn.execute(
            "INSERT INTO moengage_sync.resend_requests (program_id, night, requested_by, reason, events, scope, "
            "batches) VALUES (%s, %s, %s, %s, %s, 'confirmed', %s)",
            (program_id, night, requested_by, reason, sum(r[0] for r in settled), len(settled)))
    return {"program_id": program_id, "night": night, "batches_confirmed": len(settled),
            "events_confirmed": sum(r[0] for r in settled)}
