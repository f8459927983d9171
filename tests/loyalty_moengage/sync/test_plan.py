"""The plan: member-id chunks and the newest night's attribute refresh."""

from __future__ import annotations

from datetime import date

import psycopg
import pytest

from loyalty_moengage_devtools.generator import generate
from loyalty_moengage.sync.outbox import delivery, enqueue
from loyalty_moengage.sync.chunk.plan import MEMBER_ID_MAX, decide_attribute_refresh, plan_chunks

NIGHT = date(2026, 11, 21)


def test_chunks_cover_every_member_id_once(loyalty_db):
    generate(loyalty_db, program_id="p", members=250, days=2, seed=1, end_date=NIGHT, time_zone="UTC")
    with psycopg.connect(loyalty_db) as conn:
        chunks = plan_chunks(conn, "p", chunk_members=100)
        ids = [r[0] for r in conn.execute("SELECT member_id FROM loyalty.members WHERE program_id = 'p'")]
    assert [c["label"] for c in chunks] == ["members 1-100", "members 101-200", "members 201-250"]
    assert chunks[0]["lo"] == 0 and chunks[-1]["hi"] == MEMBER_ID_MAX
    assert all(a["hi"] == b["lo"] for a, b in zip(chunks, chunks[1:]))
    per_chunk = [sum(c["lo"] <= i < c["hi"] for i in ids) for c in chunks]
    assert per_chunk == [100, 100, 50]


def test_chunks_never_exceed_max_chunks(loyalty_db):
    generate(loyalty_db, program_id="p", members=250, days=2, seed=1, end_date=NIGHT, time_zone="UTC")
    with psycopg.connect(loyalty_db) as conn:
        assert len(plan_chunks(conn, "p", chunk_members=100, max_chunks=2)) == 2
        assert plan_chunks(conn, "nobody", chunk_members=100) == [
            {"lo": 0, "hi": MEMBER_ID_MAX, "label": "members (none)"}]


def _users_batch(conn, night: date, state: str) -> int:
    [batch_id] = enqueue.allocate_batch_ids(conn, 1)
    enqueue.insert_batches(conn, program_id="p", night=night, run_id=f"r-{night}", chunk_label="all",
                          batch_ids=[batch_id], batches=[enqueue.NewBatch("users", b"{}", 1, 1, 0)])
    conn.execute("UPDATE moengage_sync.batches SET state = %s WHERE batch_id = %s", (state, batch_id))
    return batch_id


def _state(conn, batch_id: int) -> str:
    return conn.execute("SELECT state FROM moengage_sync.batches WHERE batch_id = %s", (batch_id,)).fetchone()[0]


def test_only_the_newest_night_refreshes_and_it_supersedes_older_unsent_attributes(loyalty_db):
    older, newer = date(2026, 11, 20), NIGHT
    with psycopg.connect(loyalty_db) as conn:
        stale = _users_batch(conn, older, "pending")
        sent = _users_batch(conn, older, "sent")
        assert decide_attribute_refresh(conn, program_id="p", night=newer, run_id="r", latest_night=newer) == (True, None)
        assert (_state(conn, stale), _state(conn, sent)) == ("superseded", "sent")
        refresh, why = decide_attribute_refresh(conn, program_id="p", night=older, run_id="r0", latest_night=newer)
        assert not refresh and "newer night (2026-11-21)" in why
        refresh, why = decide_attribute_refresh(conn, program_id="q", night=older, run_id="r0", latest_night=newer)
        assert not refresh and "older than the newest complete night" in why


def test_a_rerun_refreshes_only_chunks_no_run_has_enqueued_unless_forced(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        assert decide_attribute_refresh(conn, program_id="p", night=NIGHT, run_id="r1", latest_night=NIGHT)[0]
        assert enqueue.claim_attribute_chunk(conn, program_id="p", night=NIGHT, lo=0, hi=10, run_id="r1",
                                            chunk_label="members 1-10") is None
        pending = _users_batch(conn, NIGHT, "pending")
        conn.commit()
        assert decide_attribute_refresh(conn, program_id="p", night=NIGHT, run_id="r2", latest_night=NIGHT)[0]
        why = enqueue.claim_attribute_chunk(conn, program_id="p", night=NIGHT, lo=0, hi=10, run_id="r2",
                                           chunk_label="members 1-10")
        assert why and "run r1 already enqueued" in why
        assert _state(conn, pending) == "pending"
        conn.rollback()
        assert decide_attribute_refresh(conn, program_id="p", night=NIGHT, run_id="r3", latest_night=NIGHT,
                                        force=True)[0]
        assert _state(conn, pending) == "superseded"
        assert enqueue.claim_attribute_chunk(conn, program_id="p", night=NIGHT, lo=0, hi=10, run_id="r3",
                                            chunk_label="members 1-10") is None
