"""A deliberate resend of one night's events, for operators (after a MoEngage-side data loss).

MoEngage keeps no event ids, so a resend is the one way to send an event twice on purpose.
It is recorded (who, when, why, how many) in ``moengage_sync.resend_requests`` and done in
two ways, both in one transaction:
- ``uncertain`` batches that still hold their body go back to ``pending`` as they are;
- for every other batch of the night, the night's event keys are forgotten, so the next run of
  that night (clear it in the UI, or ``make run NIGHT=...``) extracts and enqueues them again.
"""

from __future__ import annotations

from datetime import date
from typing import Any


def resend_night(dsn: str, *, program_id: str, night: date, requested_by: str, reason: str) -> dict[str, Any]:
    from loyalty_moengage.db import connect

    if not requested_by.strip() or not reason.strip():
        raise ValueError("a resend needs --requested-by and --reason: they are kept with the request")
    with connect(dsn) as conn:
        requeued = conn.execute(
            "UPDATE moengage_sync.batches SET state = 'pending', updated_at = now(), "
            "error = 'requeued by operator resend' "
            "WHERE program_id = %s AND night = %s AND kind = 'events' AND state = 'uncertain' AND body IS NOT NULL "
            "RETURNING batch_id, events",
            (program_id, night),
        ).fetchall()
        requeued_ids = [r[0] for r in requeued]
        forgotten = conn.execute(
            "DELETE FROM moengage_sync.event_keys k WHERE k.program_id = %s AND k.night = %s "
            "AND NOT (k.batch_id = ANY(%s)) AND NOT EXISTS (SELECT 1 FROM moengage_sync.batches b "
            "WHERE b.batch_id = k.batch_id AND b.state IN ('staged', 'pending', 'claimed', 'sending'))",
            (program_id, night, requeued_ids),
        ).rowcount
        events = forgotten + sum(r[1] for r in requeued)
        conn.execute(
            "INSERT INTO moengage_sync.resend_requests (program_id, night, requested_by, reason, events) "
            "VALUES (%s, %s, %s, %s, %s)",
            (program_id, night, requested_by, reason, events),
        )
    return {
        "program_id": program_id,
        "night": night,
        "requested_by": requested_by,
        "batches_requeued": len(requeued_ids),
        "event_keys_forgotten": forgotten,
        "next_step": (f"rerun night {night}: clear its DAG run in the Airflow UI, or "
                      f"`python -m loyalty_moengage.cli run --program {program_id} --night {night}`")
                     if forgotten else "the next load sends the requeued batches",
    }
