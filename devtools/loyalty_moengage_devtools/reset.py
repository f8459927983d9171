"""Forget one program's sync state, so the demo and the benchmark start from a first night."""

from __future__ import annotations

_VACUUMED = ("batches", "event_keys", "quarantine")
# Every moengage_sync table with a program_id column, read from the schema so a new state table
# is reset without an edit here.
_STATE_TABLES = ("SELECT table_name FROM information_schema.columns WHERE table_schema = 'moengage_sync' "
                 "AND column_name = 'program_id' ORDER BY table_name")


def reset_program_state(dsn: str, program_id: str, *, keep: tuple[str, ...] = ()) -> None:
    """Delete the program's rows from every sync state table but ``keep`` (e.g. the presence
    cache, for a warm-cache night), then VACUUM the outbox tables so the next run meets no dead
    tuples (the benchmark times that run; for the demo it is cheap)."""
    from loyalty_moengage.db import connect

    with connect(dsn) as conn:
        tables = [t for (t,) in conn.execute(_STATE_TABLES).fetchall() if t not in keep]
        for table in tables:
            conn.execute(f'DELETE FROM moengage_sync."{table}" WHERE program_id = %s', (program_id,))
        conn.commit()
    with connect(dsn, autocommit=True) as conn:
        for table in _VACUUMED:
            conn.execute(f"VACUUM moengage_sync.{table}")
