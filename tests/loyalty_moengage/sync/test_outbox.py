"""Claims, leases and compare-and-set transitions of the outbox, on a real Postgres."""

from __future__ import annotations

import threading
from datetime import date

import psycopg
import pytest

from loyalty_moengage.sync.outbox import delivery, enqueue
from loyalty_moengage.sync.outbox.delivery import ClaimLost, Owner

NIGHT = date(2026, 11, 21)


def _add_batches(dsn: str, n: int, *, night: date = NIGHT, state: str = "pending", kind: str = "events") -> list[int]:
    with psycopg.connect(dsn) as conn:
        ids = enqueue.allocate_batch_ids(conn, n)
        body = b'{"type":"transition","elements":[{}]}'
        enqueue.insert_batches(conn, program_id="p", night=night, run_id="enqueuer", chunk_label="all",
                              batch_ids=ids, batches=[enqueue.NewBatch(kind, body, 1, 0, 1)] * n)
        conn.execute("UPDATE moengage_sync.batches SET state = %s WHERE batch_id = ANY(%s)", (state, ids))
    return ids


def _states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM moengage_sync.batches GROUP BY state").fetchall())


def test_a_live_claim_is_never_taken_by_another_run(loyalty_db):
    _add_batches(loyalty_db, 4)
    a = Owner(program_id="p", run_id="night-A", slot=0)
    b = Owner(program_id="p", run_id="night-B", slot=0)
    with psycopg.connect(loyalty_db) as conn:
        held = delivery.claim(conn, a, 2, up_to_night=NIGHT)
        delivery.start_sending(conn, held[0].batch_id, a)
        # Run B's slot 0 starts: same slot number, another run. Nothing of A's is an orphan.
        assert delivery.recover_orphans(conn, "p", b) == (0, 0)
        assert delivery.recover_orphans(conn, "p") == (0, 0)
        others = delivery.claim(conn, b, 10, up_to_night=NIGHT)
    assert {x.batch_id for x in others}.isdisjoint({x.batch_id for x in held})
    assert _states(loyalty_db) == {"sending": 1, "claimed": 3}


def test_a_later_try_of_the_same_slot_takes_over_and_the_zombie_cannot_send(loyalty_db):
    _add_batches(loyalty_db, 3)
    zombie = Owner(program_id="p", run_id="r", slot=0, try_number=1)
    retry = Owner(program_id="p", run_id="r", slot=0, try_number=2)
    with psycopg.connect(loyalty_db) as conn:
        held = delivery.claim(conn, zombie, 3, up_to_night=NIGHT)
        delivery.start_sending(conn, held[0].batch_id, zombie)
        # The retry: the batch mid-POST may have reached MoEngage, the others were never posted.
        assert delivery.recover_orphans(conn, "p", retry) == (1, 2)
        with pytest.raises(ClaimLost):
            delivery.start_sending(conn, held[1].batch_id, zombie)
        taken = delivery.claim(conn, retry, 10, up_to_night=NIGHT)
        # The zombie's answer still settles the batch it posted (recovery kept its name on it) ...
        assert delivery.finish(conn, held[0].batch_id, zombie, "sent", request_id="r-1")
        # ... but it cannot touch what the retry holds now.
        assert not delivery.finish(conn, taken[0].batch_id, zombie, "sent")
        assert delivery.release(conn, [taken[0].batch_id], zombie, error="x") == 0
        conn.commit()
    assert {b.batch_id for b in taken} == {held[1].batch_id, held[2].batch_id}
    assert _states(loyalty_db) == {"sent": 1, "claimed": 2}


def test_an_expired_lease_is_an_orphan_for_anyone(loyalty_db):
    _add_batches(loyalty_db, 2)
    dead = Owner(program_id="p", run_id="r", slot=0)
    with psycopg.connect(loyalty_db) as conn:
        held = delivery.claim(conn, dead, 2, up_to_night=NIGHT, lease_seconds=60)
        delivery.start_sending(conn, held[0].batch_id, dead)
        assert delivery.recover_orphans(conn, "p") == (0, 0)
        conn.execute("UPDATE moengage_sync.batches SET lease_expires_at = now() - interval '1 second'")
        conn.commit()
        assert delivery.recover_orphans(conn, "p") == (1, 1)
    assert _states(loyalty_db) == {"uncertain": 1, "pending": 1}


def test_the_lease_keeper_renews_while_the_owner_lives(loyalty_db):
    import time

    _add_batches(loyalty_db, 1)
    owner = Owner(program_id="p", run_id="r", slot=0)

    def lease_left(conn) -> float:
        left = conn.execute("SELECT extract(epoch FROM lease_expires_at - now()) FROM moengage_sync.batches"
                            ).fetchone()[0]
        conn.commit()
        return float(left)

    with psycopg.connect(loyalty_db) as conn:
        delivery.claim(conn, owner, 1, up_to_night=NIGHT, lease_seconds=30)
        with delivery.LeaseKeeper(loyalty_db, owner, lease_seconds=3600, every=0.05):
            deadline = time.monotonic() + 10
            while lease_left(conn) < 1000 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert lease_left(conn) > 1000
        conn.execute("UPDATE moengage_sync.batches SET lease_expires_at = now() - interval '1 second'")
        conn.commit()
        time.sleep(0.3)  # a keeper still running would have renewed by now
        assert delivery.recover_orphans(conn, "p") == (0, 1)


def test_claims_of_concurrent_owners_never_overlap(loyalty_db):
    _add_batches(loyalty_db, 60)
    seen: list[list[int]] = []

    def slot(k: int) -> None:
        owner = Owner(program_id="p", run_id=f"run-{k % 3}", slot=k)
        mine = []
        with psycopg.connect(loyalty_db) as conn:
            while batch := delivery.claim(conn, owner, 3, up_to_night=NIGHT):
                for b in batch:
                    delivery.start_sending(conn, b.batch_id, owner)
                    assert delivery.finish(conn, b.batch_id, owner, "sent")
                    conn.commit()
                    mine.append(b.batch_id)
        seen.append(mine)

    threads = [threading.Thread(target=slot, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [b for mine in seen for b in mine]
    assert len(flat) == len(set(flat)) == 60
    assert _states(loyalty_db) == {"sent": 60}


def test_quarantine_keeps_each_row_once_per_night(loyalty_db):
    rows = [("events/x.sql", "bad", "e-1", b'{"event_id": "e-1"}'), ("events/x.sql", "bad", "e-2", b'{"event_id": "e-2"}')]
    with psycopg.connect(loyalty_db) as conn:
        assert enqueue.insert_quarantine(conn, program_id="p", night=NIGHT, run_id="r1", rows=rows) == 2
        assert enqueue.insert_quarantine(conn, program_id="p", night=NIGHT, run_id="r2", rows=rows) == 0
        assert enqueue.insert_quarantine(conn, program_id="p", night=date(2026, 11, 22), run_id="r3", rows=rows[:1]) == 1
        assert conn.execute("SELECT count(*) FROM moengage_sync.quarantine").fetchone()[0] == 3


def test_a_claim_whose_lease_ran_out_is_not_posted(loyalty_db):
    _add_batches(loyalty_db, 1)
    owner = Owner(program_id="p", run_id="r", slot=0)
    with psycopg.connect(loyalty_db) as conn:
        [held] = delivery.claim(conn, owner, 1, up_to_night=NIGHT)
        conn.execute("UPDATE moengage_sync.batches SET lease_expires_at = now() - interval '1 second'")
        conn.commit()
        with pytest.raises(ClaimLost):
            delivery.start_sending(conn, held.batch_id, owner)
    assert _states(loyalty_db) == {"claimed": 1}


def test_users_batches_older_than_the_newest_refresh_are_never_claimed(loyalty_db):
    older = date(2026, 11, 20)
    _add_batches(loyalty_db, 1, night=older, kind="users")
    _add_batches(loyalty_db, 1, night=older)
    with psycopg.connect(loyalty_db) as conn:
        conn.execute("INSERT INTO moengage_sync.attribute_watermark (program_id, night, run_id) VALUES ('p', %s, 'r')",
                     (NIGHT,))
        conn.commit()
        claimed = delivery.claim(conn, Owner(program_id="p", run_id="r", slot=0), 10, up_to_night=NIGHT)
    assert [b.kind for b in claimed] == ["events"]
    assert _states(loyalty_db) == {"claimed": 1, "superseded": 1}


def test_a_failing_guard_keeps_what_a_concurrent_passing_guard_released(loyalty_db):
    from loyalty_moengage.sync.send import guard

    [bid] = _add_batches(loyalty_db, 1, state="staged")
    with psycopg.connect(loyalty_db) as conn:
        enqueue.insert_event_keys(conn, f"p,e-1,{NIGHT},loyalty_points_earned,{bid}\n".encode())
        conn.commit()
        assert guard.release_night(conn, "p", NIGHT) == 1          # run A's guard passes first
        assert guard.withdraw_night(conn, "p", NIGHT, "enqueuer") == 0  # run B's fails just after
        assert conn.execute("SELECT count(*) FROM moengage_sync.event_keys").fetchone()[0] == 1
    assert _states(loyalty_db) == {"pending": 1}


def test_an_orphaned_live_batch_with_attributes_owes_its_members(loyalty_db):
    """A worker died mid-POST of events with their members' attributes beside them: MoEngage may
    apply that snapshot after a newer one, so its members are owed an update (outbox/owed.py)."""
    body = (b'{"type":"transition","elements":[{"type":"customer","customer_id":"C-1","update_existing_only":true,'
            b'"attributes":{"points_available":5}},{"type":"event","customer_id":"C-1","actions":[]}]}')
    with psycopg.connect(loyalty_db) as conn:
        ids = enqueue.allocate_batch_ids(conn, 2)
        enqueue.insert_batches(conn, program_id="p", night=NIGHT, run_id="live:r", chunk_label="live",
                              batch_ids=ids, batches=[enqueue.NewBatch("events", body, 2, 1, 1),
                                                      enqueue.NewBatch("events", b'{"elements":[{}]}', 1, 0, 1)])
        conn.execute("UPDATE moengage_sync.batches SET state = 'pending'")
        dead = Owner(program_id="p", run_id="live:r", slot=-2)
        for held in delivery.claim(conn, dead, 2, up_to_night=NIGHT, lease_seconds=60):
            delivery.start_sending(conn, held.batch_id, dead)
        conn.execute("UPDATE moengage_sync.batches SET lease_expires_at = now() - interval '1 second'")
        conn.commit()
        assert delivery.recover_orphans(conn, "p") == (2, 0)
        owed = conn.execute("SELECT program_id, customer_id FROM moengage_sync.live_attributes_owed").fetchall()
    assert owed == [("p", "C-1")]
