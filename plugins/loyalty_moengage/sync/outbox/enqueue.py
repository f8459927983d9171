"""The write side of the outbox: a chunk's batches, event keys and quarantine rows.

Everything here runs in the caller's transaction: a chunk's batches (state ``staged``), the
event keys that point at them and its quarantine rows commit together or not at all.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date
from typing import Any, Iterable

from loyalty_moengage.sync.outbox.states import STAGED


@dataclass(frozen=True)
class NewBatch:
    kind: str              # "events" | "users"
    body: bytes
    element_count: int
    users: int
    events: int


@dataclass(frozen=True)
class Reliance:
    """Events a chunk leaves to another run's work that only its guard's withdrawal would undo:
    that run's ``staged`` batches holding some of them, and its unreleased awaiting events."""
    batches: frozenset[int] = frozenset()
    awaiting: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.batches or self.awaiting)


def enqueued_events(conn: Any, program_id: str, event_ids: list[str], *,
                    run_id: str | None = None) -> tuple[set[str], Reliance]:
    """Which of these event_ids were already enqueued for the program (by any run, ever), and what
    of them a run other than ``run_id`` holds in work its guard could still withdraw."""
    if not event_ids:
        return set(), Reliance()
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS _candidates (event_id text) ON COMMIT DELETE ROWS")
    with conn.cursor() as cur:
        with cur.copy("COPY _candidates (event_id) FROM STDIN") as copy:
            copy.write("\n".join(_copy_text(e) for e in event_ids) + "\n")
        cur.execute(
            "SELECT c.event_id, CASE WHEN b.state = 'staged' AND b.run_id <> %s THEN b.batch_id END, "
            "a.event_id IS NOT NULL FROM _candidates c JOIN moengage_sync.event_keys k "
            "ON k.program_id = %s AND k.event_id = c.event_id "
            "LEFT JOIN moengage_sync.batches b ON b.batch_id = k.batch_id "
            "LEFT JOIN moengage_sync.awaiting_presence a ON k.batch_id IS NULL AND a.program_id = k.program_id "
            "AND a.event_id = k.event_id AND NOT a.released AND a.run_id <> %s",
            (run_id, program_id, run_id),
        )
        rows = cur.fetchall()
        cur.execute("TRUNCATE _candidates")
    return {r[0] for r in rows}, Reliance(batches=frozenset(r[1] for r in rows if r[1] is not None),
                                          awaiting=frozenset(r[0] for r in rows if r[2]))


def rely_on(conn: Any, *, program_id: str, run_id: str, reliance: Reliance) -> int:
    """Record, in the chunk's transaction, that ``run_id`` relies on this work of other runs (read
    by the gate before the transaction), so their failing guards keep it for this run's guard
    (``send/guard.py`` says why and the lock order). Locks it ``FOR SHARE`` first, in key order,
    batches before awaiting rows. Returns how many are gone (withdrawn since the gate read them,
    or their awaiting events checked since): the caller must read what is known again."""
    gone = 0
    if reliance.batches:
        ids = sorted(reliance.batches)
        found = conn.execute("SELECT batch_id FROM moengage_sync.batches WHERE batch_id = ANY(%s) "
                             "ORDER BY batch_id FOR SHARE", (ids,)).fetchall()
        gone += len(ids) - len(found)
        # Released meanwhile: no withdrawal can take those, nothing to record.
        conn.execute("INSERT INTO moengage_sync.batch_reliance (batch_id, run_id, program_id, night) "
                     "SELECT batch_id, %s, program_id, night FROM moengage_sync.batches WHERE batch_id = ANY(%s) "
                     "AND state = %s ON CONFLICT DO NOTHING", (run_id, ids, STAGED))
    if reliance.awaiting:
        events = sorted(reliance.awaiting)
        found = conn.execute("SELECT event_id FROM moengage_sync.awaiting_presence WHERE program_id = %s "
                             "AND event_id = ANY(%s) ORDER BY event_id FOR SHARE", (program_id, events)).fetchall()
        gone += len(events) - len(found)
        conn.execute("INSERT INTO moengage_sync.awaiting_reliance (program_id, event_id, run_id, night) "
                     "SELECT program_id, event_id, %s, night FROM moengage_sync.awaiting_presence "
                     "WHERE program_id = %s AND event_id = ANY(%s) AND NOT released ON CONFLICT DO NOTHING",
                     (run_id, program_id, events))
    return gone


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


def insert_awaiting(conn: Any, *, program_id: str, night: date, run_id: str, events: Any) -> None:
    """Events whose customer is checked later (``lookups.py``): kept, and their keys taken with no batch yet."""
    ids, names = events.column("event_id").to_pylist(), events.column("event_name").to_pylist()
    with conn.cursor() as cur:
        with cur.copy("COPY moengage_sync.awaiting_presence (program_id, night, run_id, event_id, event_name, "
                      "customer_id, element) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["text", "date", "text", "text", "text", "text", "bytea"])
            for eid, name, cid, element in zip(ids, names, events.column("customer_id").to_pylist(),
                                               events.column("element").to_pylist()):
                copy.write_row((program_id, night, run_id, eid, name, cid, element.encode()))
        with cur.copy("COPY moengage_sync.event_keys (program_id, event_id, night, event_name) FROM STDIN") as copy:
            for eid, name in zip(ids, names):
                copy.write_row((program_id, eid, night, name))


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
    """rows: (template, reason, row_key, row_json). Each row is kept once per night, whatever
    reruns or concurrent runs record it again. Returns the rows new to the night."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS _quarantine (template text, reason text, row_key text, "
                 "row_data jsonb) ON COMMIT DELETE ROWS")
    with conn.cursor() as cur:
        with cur.copy("COPY _quarantine (template, reason, row_key, row_data) FROM STDIN") as copy:
            for template, reason, key, row_json in rows:
                copy.write_row((template, reason, key, row_json.decode()))
        cur.execute(
            "INSERT INTO moengage_sync.quarantine (program_id, night, run_id, template, reason, row_key, "
            "row_data, row_digest) SELECT %s, %s, %s, template, reason, row_key, row_data, md5(row_data::text) "
            "FROM _quarantine ON CONFLICT (program_id, night, template, reason, row_digest) DO NOTHING",
            (program_id, night, run_id))
        added = cur.rowcount
        cur.execute("TRUNCATE _quarantine")
    return added


def _newer_night(newer: date) -> str:
    return f"a newer night ({newer}) refreshes attributes"


def _taken_by(run_id: str | None, night: date) -> str:
    return f"run {run_id or '?'} already enqueued these members' attributes for night {night}"


def attributes_taken(conn: Any, *, program_id: str, night: date, lo: int, hi: int) -> str | None:
    """Why this night's attribute refresh of members [lo, hi) is not this run's to enqueue (a newer
    night refreshes attributes, or a run of this night already enqueued them), else None. Read only:
    :func:`claim_attribute_chunk` decides, in the chunk's transaction."""
    row = conn.execute("SELECT night FROM moengage_sync.attribute_watermark WHERE program_id = %s",
                       (program_id,)).fetchone()
    if row and row[0] > night:
        return _newer_night(row[0])
    other = conn.execute("SELECT run_id FROM moengage_sync.attribute_chunks WHERE program_id = %s AND night = %s "
                         "AND member_lo = %s AND member_hi = %s", (program_id, night, lo, hi)).fetchone()
    return _taken_by(other[0], night) if other else None


def claim_attribute_chunk(conn: Any, *, program_id: str, night: date, lo: int, hi: int, run_id: str,
                          chunk_label: str) -> str | None:
    """Take the night's attribute refresh of members [lo, hi) for this run, in the caller's
    transaction. Returns None when taken, else why not (as :func:`attributes_taken`). A concurrent
    run blocks on the row until this transaction ends, so the same members are never enqueued twice."""
    row = conn.execute("SELECT night FROM moengage_sync.attribute_watermark WHERE program_id = %s FOR SHARE",
                       (program_id,)).fetchone()
    if row and row[0] > night:
        return _newer_night(row[0])
    taken = conn.execute(
        "INSERT INTO moengage_sync.attribute_chunks (program_id, night, member_lo, member_hi, run_id, chunk_label) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", (program_id, night, lo, hi, run_id, chunk_label),
    ).rowcount
    if taken:
        return None
    other = conn.execute("SELECT run_id FROM moengage_sync.attribute_chunks WHERE program_id = %s AND night = %s "
                         "AND member_lo = %s AND member_hi = %s", (program_id, night, lo, hi)).fetchone()
    return _taken_by(other[0] if other else None, night)


def to_csv(table: Any) -> bytes:
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(table, buf, write_options=pacsv.WriteOptions(include_header=False))
    return buf.getvalue()


def event_key_rows(keys: Any, batch_ids: list[int], *, program_id: str, night: date) -> bytes:
    """The event-key rows of packed events (``keys.batch`` indexes ``batch_ids``) as CSV for COPY."""
    import numpy as np
    import pyarrow as pa

    ids = np.asarray(batch_ids, dtype=np.int64)[keys.column("batch").to_numpy()]
    return to_csv(pa.table({
        "program_id": pa.array([program_id] * keys.num_rows),
        "event_id": keys.column("event_id"),
        "night": pa.array([night.isoformat()] * keys.num_rows),
        "event_name": keys.column("event_name"),
        "batch_id": pa.array(ids),
    }))
