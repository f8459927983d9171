"""What the sync forgets, and when: sent bodies after the report, records past the audit retention."""

from __future__ import annotations

from datetime import date
from typing import Any

RETENTION_GRACE_DAYS = 2


def enforce_retention(conn: Any, *, program_id: str, night: date, retention_days: int, keep_sent_bodies: bool) -> dict[str, int]:
    counts = {}
    if not keep_sent_bodies:
        cur = conn.execute(
            "UPDATE moengage_sync.batches SET body = NULL WHERE program_id = %s AND state = 'sent' AND body IS NOT NULL",
            (program_id,),
        )
        counts["bodies_dropped"] = cur.rowcount
    # Two days of grace: a run of the oldest night the plan still accepts may be going on while
    # a newer night's report runs (the plan refuses anything older than retention_days).
    cutoff = date.fromordinal(night.toordinal() - retention_days - RETENTION_GRACE_DAYS)
    for table in ("event_keys", "quarantine", "task_stats", "attribute_chunks", "awaiting_presence",
                  "night_verdicts", "batch_reliance", "awaiting_reliance"):
        cur = conn.execute(f"DELETE FROM moengage_sync.{table} WHERE program_id = %s AND night < %s", (program_id, cutoff))
        counts[f"{table}_deleted"] = cur.rowcount
    cur = conn.execute(
        "DELETE FROM moengage_sync.batches WHERE program_id = %s AND night < %s AND state IN ('sent', 'rejected')",
        (program_id, cutoff),
    )
    counts["batches_deleted"] = cur.rowcount
    conn.commit()
    return counts
