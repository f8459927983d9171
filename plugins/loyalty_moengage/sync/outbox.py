"""The Postgres outbox: ready payload batches and their explicit delivery states.

States: ``pending`` -> ``sending`` -> ``sent`` | ``rejected`` | ``uncertain``.
A batch is marked ``sending`` (and committed) before its POST, so a worker that dies mid-send
leaves evidence: the next attempt of the same load slot turns its ``sending`` batches into
``uncertain`` (outcome unknown) instead of silently resending them. Transient failures put a
batch back to ``pending`` for the next attempt or the next night; nothing is dropped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date
from typing import Any, Iterable

STATES = ("staged", "pending", "claimed", "sending", "sent", "rejected", "uncertain", "superseded")


@dataclass(frozen=True)
class NewBatch:
    kind: str              # "events" | "users"
    body: bytes
    element_count: int
    users: int
    events: int


@dataclass(frozen=True)
class ClaimedBatch:
    batch_id: int
    night: date
    kind: str
    body: bytes
    users: int
    events: int
    attempts: int


def existing_event_ids(conn: Any, program_id: str, event_ids: list[str]) -> set[str]:
    """Which of these event_ids were already enqueued for the program (by any run, ever)."""
    if not event_ids:
        return set()
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS _candidates (event_id text) ON COMMIT DELETE ROWS")
    with conn.cursor() as cur:
        with cur.copy("COPY _candidates (event_id) FROM STDIN") as copy:
            copy.write("\n".join(_copy_text(e) for e in event_ids) + "\n")
        cur.execute(
            "SELECT c.event_id FROM _candidates c JOIN moengage_sync.event_keys k "
            "ON k.program_id = %s AND k.event_id = c.event_id",
            (program_id,),
        )
        found = {r[0] for r in cur.fetchall()}
        cur.execute("TRUNCATE _candidates")
    return found


def _copy_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def allocate_batch_ids(conn: Any, count: int) -> list[int]:
    if count == 0:
        return []
    rows = conn.execute(
        "SELECT nextval(pg_get_serial_sequence('moengage_sync.batches', 'batch_id')) "
        "FROM generate_series(1, %s)",
        (count,),
    ).fetchall()
    return [r[0] for r in rows]


def insert_batches(conn: Any, *, program_id: str, night: date, run_id: str, chunk_label: str,
                   batch_ids: list[int], batches: list[NewBatch]) -> None:
    # Binary COPY: bodies travel as raw bytes (text COPY would hex-escape every byte of a
    # ~100 KB body in Python, which cost a third of a chunk's time).
    with conn.cursor() as cur:
        with cur.copy(
            "COPY moengage_sync.batches (batch_id, program_id, night, run_id, kind, chunk_label, "
            "element_count, users, events, body, body_bytes) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "text", "date", "text", "text", "text", "int4", "int4", "int4", "bytea", "int4"])
            for batch_id, b in zip(batch_ids, batches):
                copy.write_row((batch_id, program_id, night, run_id, b.kind, chunk_label,
                                b.element_count, b.users, b.events, b.body, len(b.body)))


def insert_event_keys(conn: Any, csv_bytes: bytes) -> None:
    """COPY (program_id, event_id, night, event_name, batch_id) rows given as CSV."""
    with conn.cursor() as cur:
        with cur.copy(
            "COPY moengage_sync.event_keys (program_id, event_id, night, event_name, batch_id) "
            "FROM STDIN WITH (FORMAT csv)"
        ) as copy:
            copy.write(csv_bytes)


def insert_quarantine(conn: Any, *, program_id: str, night: date, run_id: str,
                      rows: Iterable[tuple[str, str, str | None, bytes]]) -> int:
    """rows: (template, reason, row_key, row_json)."""
    n = 0
    with conn.cursor() as cur:
        with cur.copy(
            "COPY moengage_sync.quarantine (program_id, night, run_id, template, reason, row_key, row_data) "
            "FROM STDIN"
        ) as copy:
            for template, reason, key, row_json in rows:
                copy.write_row((program_id, night, run_id, template, reason, key, row_json.decode()))
                n += 1
    return n


def users_already_enqueued(conn: Any, *, program_id: str, run_id: str, chunk_label: str) -> bool:
    """True when an earlier attempt of this run's chunk already enqueued its attribute refresh."""
    row = conn.execute(
        "SELECT 1 FROM moengage_sync.batches WHERE program_id = %s AND run_id = %s "
        "AND chunk_label = %s AND kind = 'users' LIMIT 1",
        (program_id, run_id, chunk_label),
    ).fetchone()
    return row is not None


# ---- load side -------------------------------------------------------------------------

def recover_orphans(conn: Any, program_id: str, slot_key: str | None = None) -> tuple[int, int]:
    """Batches a dead attempt left behind: 'sending' ones may have reached MoEngage (uncertain);
    'claimed' ones were never posted (pending again). ``slot_key=None`` recovers every slot,
    which is right when no load of the program can be running (a new run's plan).
    Returns (uncertain, released)."""
    slot_clause = "" if slot_key is None else " AND claimed_by = %(slot)s"
    params = {"program": program_id, "slot": slot_key}
    uncertain = conn.execute(
        "UPDATE moengage_sync.batches SET state = 'uncertain', updated_at = now(), "
        "error = 'worker stopped during the POST; MoEngage may or may not have it' "
        "WHERE program_id = %(program)s AND state = 'sending'" + slot_clause, params,
    ).rowcount
    released = conn.execute(
        "UPDATE moengage_sync.batches SET state = 'pending', updated_at = now() "
        "WHERE program_id = %(program)s AND state = 'claimed'" + slot_clause, params,
    ).rowcount
    conn.commit()
    return uncertain, released


def start_sending(conn: Any, batch_id: int) -> None:
    """Durably mark the one batch about to be POSTed: the only state a crash turns uncertain."""
    conn.execute("UPDATE moengage_sync.batches SET state = 'sending', updated_at = now() WHERE batch_id = %s",
                 (batch_id,))
    conn.execute("SET LOCAL synchronous_commit = on")
    conn.commit()


def requeue_uncertain(conn: Any, program_id: str) -> int:
    cur = conn.execute(
        "UPDATE moengage_sync.batches SET state = 'pending', updated_at = now() "
        "WHERE program_id = %s AND state = 'uncertain' AND body IS NOT NULL",
        (program_id,),
    )
    conn.commit()
    return cur.rowcount


def claim(conn: Any, program_id: str, slot_key: str, limit: int, *, up_to_night: date) -> list[ClaimedBatch]:
    """Mark up to ``limit`` pending batches 'claimed' by this slot, oldest night first.

    The claim is always committed durably (even when the session runs with
    ``synchronous_commit = off``): a claim lost in a crash after its POST would resend the batch.
    """
    conn.execute("SET LOCAL synchronous_commit = on")
    rows = conn.execute(
        """
        UPDATE moengage_sync.batches b
        SET state = 'claimed', claimed_by = %(slot)s, attempts = attempts + 1, updated_at = now()
        FROM (
            SELECT batch_id FROM moengage_sync.batches
            WHERE program_id = %(program)s AND state = 'pending' AND night <= %(night)s
            ORDER BY night, kind, batch_id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) c
        WHERE b.batch_id = c.batch_id
        RETURNING b.batch_id, b.night, b.kind, b.body, b.users, b.events, b.attempts
        """,
        {"slot": slot_key, "program": program_id, "limit": limit, "night": up_to_night},
    ).fetchall()
    conn.commit()
    batches = [ClaimedBatch(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6]) for r in rows]
    batches.sort(key=lambda b: (b.night, b.kind, b.batch_id))
    return batches


def mark(conn: Any, batch_id: int, state: str, *, request_id: str | None = None,
         http_status: int | None = None, error: str | None = None) -> None:
    assert state in STATES
    conn.execute(
        "UPDATE moengage_sync.batches SET state = %s, request_id = %s, http_status = %s, error = %s, "
        "updated_at = now(), sent_at = CASE WHEN %s = 'sent' THEN now() ELSE sent_at END "
        "WHERE batch_id = %s",
        (state, request_id, http_status, error, state, batch_id),
    )


def batch_states(conn: Any, program_id: str, night: date) -> dict[str, int]:
    rows = conn.execute(
        "SELECT state, count(*) FROM moengage_sync.batches WHERE program_id = %s AND night = %s GROUP BY state",
        (program_id, night),
    ).fetchall()
    return {state: n for state, n in rows}


def to_csv(table: Any) -> bytes:
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(table, buf, write_options=pacsv.WriteOptions(include_header=False))
    return buf.getvalue()
