"""The owed attribute updates' table under concurrency, on a real Postgres (sync/outbox/owed.py)."""

from __future__ import annotations

import threading
import time

import psycopg

from loyalty_moengage.sync.outbox import owed


def _owed(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {c for c, in conn.execute("SELECT customer_id FROM moengage_sync.live_attributes_owed")}


def test_a_debt_owed_again_while_a_payment_holds_it_survives_the_payment(loyalty_db):
    """A payment locks X's debt and reads X's attributes; meanwhile a refresh chunk owes X again
    (its older snapshot goes after the payment's). The new debt waits for the payment's delete and
    is then written, not dropped with it."""
    with psycopg.connect(loyalty_db) as conn:
        owed.owe(conn, "p", ["X"])
        conn.commit()
    payer = psycopg.connect(loyalty_db)
    assert owed.due(payer, "p", 0.0) == ["X"]          # locked until the payer commits
    done = threading.Event()

    def owe_again() -> None:
        with psycopg.connect(loyalty_db) as conn:
            owed.owe(conn, "p", ["X"])
            conn.commit()
        done.set()

    thread = threading.Thread(target=owe_again)
    thread.start()
    time.sleep(0.5)
    assert not done.is_set()                              # it waits for the payment
    owed.paid(payer, "p", ["X"])
    payer.commit()
    payer.close()
    thread.join(10)
    assert done.is_set() and _owed(loyalty_db) == {"X"}


def test_a_write_in_doubt_is_paid_only_once_it_can_no_longer_land(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        owed.owe(conn, "p", ["late"], not_before_seconds=1.0)
        owed.owe(conn, "p", ["now"])
        conn.commit()
        assert owed.due(conn, "p", 0.0) == ["now"]
        conn.rollback()
        owed.owe(conn, "p", ["now"], not_before_seconds=60.0)   # a later doubt pushes the payment back
        conn.commit()
        time.sleep(1.1)
        assert owed.due(conn, "p", 0.0) == ["late"]
