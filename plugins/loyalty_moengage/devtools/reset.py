"""Forget one program's sync state, so the demo and the benchmark start from a first night."""

from __future__ import annotations

# Every moengage_sync table keyed by program_id; the outbox tables are vacuumed afterwards.
PROGRAM_STATE_TABLES = ("batches", "event_keys", "quarantine", "task_stats", "run_reports",
                        "attribute_watermark", "resend_requests", "customer_presence")
_VACUUMED = ("batches", "event_keys", "quarantine")


def reset_program_state(dsn: str, program_id: str) -> None:
    """Delete the program's rows from the sync state, then VACUUM the outbox tables so the next
    run meets no dead tuples (the benchmark times that run; for the demo it is cheap)."""
    from loyalty_moengage.db import connect

    with connect(dsn) as conn:
        for table in PROGRAM_STATE_TABLES:
            conn.execute(f"DELETE FROM moengage_sync.{table} WHERE program_id = %s", (program_id,))
        conn.commit()
    with connect(dsn, autocommit=True) as conn:
        for table in _VACUUMED:
            conn.execute(f"VACUUM moengage_sync.{table}")
