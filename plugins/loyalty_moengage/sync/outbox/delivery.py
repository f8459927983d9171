"""The delivery side of the outbox: claims, leases and the outcome of each POST.

States (``sync/outbox/states.py``; every transition in sql/010_sync_state.sql): ``pending`` ->
``claimed`` -> ``sending`` -> ``sent`` | ``rejected`` | ``uncertain`` (events batches whose answer
was lost; ``settle.py`` settles them by their receipts) | ``pending`` (users batches whose answer
was lost: resending attributes duplicates nothing). A claim belongs to one
:class:`Owner` (run, load slot, task try, and a nonce) and carries a lease the owner renews
(:class:`LeaseKeeper`); every transition out of ``claimed`` or ``sending`` is a compare-and-set
on (state, owner) with its rowcount checked, so nobody can post a batch another owner holds.
A claim is orphaned only when its lease expired or a later try of the same load slot took
over; then a ``sending`` events batch becomes ``uncertain`` (it may have reached MoEngage), a
``sending`` users batch and every ``claimed`` one go back to ``pending``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable

from loyalty_moengage.sync.outbox.states import LIVE_RUN_PREFIX, OUTCOMES

log = logging.getLogger(__name__)

#: How long a claim stays the owner's without renewal; the owner renews every quarter of it.
LEASE_SECONDS = 120.0


@dataclass(frozen=True)
class ClaimedBatch:
    batch_id: int
    night: date
    kind: str
    body: bytes
    users: int
    events: int
    attempts: int
    lost_answers: int = 0
    live: bool = False          # enqueued by a live run


class ClaimLost(RuntimeError):
    """Another owner holds the batch now (our lease expired, or a later try took over)."""


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: one attempt of one load slot of one run, never shared."""

    program_id: str
    run_id: str
    slot: int
    try_number: int = 1
    nonce: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def slot_key(self) -> str:
        return f"{self.program_id}:{self.run_id}:slot-{self.slot}"

    @property
    def token(self) -> str:
        return f"{self.slot_key}:try-{self.try_number}:{self.nonce}"


def recover_orphans(conn: Any, program_id: str, owner: Owner | None = None) -> tuple[int, int]:
    """Take back claims nobody holds any more: leases that expired (any owner), and with
    ``owner`` the claims of earlier tries of the same load slot (Airflow starts a try only when
    the one before has ended). ``sending`` events batches may have reached MoEngage: uncertain;
    ``sending`` users batches are sent again (last-write-wins) and ``claimed`` ones were never
    posted: pending again. A live owner's claims are never touched. Returns (uncertain, released)."""
    orphaned = "(coalesce(lease_expires_at, '-infinity') < now()"
    params: dict[str, Any] = {"program": program_id}
    if owner is not None:
        orphaned += " OR (claim_slot = %(slot)s AND claim_try < %(try)s)"
        params.update({"slot": owner.slot_key, "try": owner.try_number})
    orphaned += ")"
    doubts = conn.execute(
        "UPDATE moengage_sync.batches SET state = 'uncertain', updated_at = now(), lease_expires_at = NULL, "
        "lost_answers = lost_answers + 1, error = 'its load attempt (' || coalesce(claimed_by, '?') || ') stopped "
        "during the POST; MoEngage may or may not have it' "
        "WHERE program_id = %(program)s AND state = 'sending' AND kind = 'events' AND " + orphaned
        + " RETURNING CASE WHEN users > 0 THEN body END", params,
    ).fetchall()
    uncertain = len(doubts)
    if any(body for body, in doubts):
        # Live attributes in doubt: MoEngage may apply them after a newer write (outbox/owed.py).
        from loyalty_moengage.sync.outbox.owed import owe_in_doubt

        owe_in_doubt(conn, program_id, [bytes(body) for body, in doubts if body])
    released = conn.execute(
        "UPDATE moengage_sync.batches SET state = 'pending', updated_at = now(), lease_expires_at = NULL, "
        "claimed_by = NULL, lost_answers = lost_answers + 1, settled_by = 'resend', error = 'its load attempt "
        "stopped during the POST; sent again (attributes are last-write-wins)' "
        "WHERE program_id = %(program)s AND state = 'sending' AND kind = 'users' AND " + orphaned, params,
    ).rowcount
    released += conn.execute(
        "UPDATE moengage_sync.batches SET state = 'pending', updated_at = now(), lease_expires_at = NULL, "
        "claimed_by = NULL WHERE program_id = %(program)s AND state = 'claimed' AND " + orphaned, params,
    ).rowcount
    conn.commit()
    return uncertain, released


def claim(conn: Any, owner: Owner, limit: int, *, up_to_night: date,
          lease_seconds: float = LEASE_SECONDS, live_only: bool = False) -> list[ClaimedBatch]:
    """Mark up to ``limit`` pending batches 'claimed' by ``owner``, oldest night first;
    ``live_only`` (a live run's slot): only batches live runs enqueued, never a night's backlog.

    The claim is always committed durably (even when the session runs with
    ``synchronous_commit = off``): a claim lost in a crash after its POST would resend the batch.
    """
    conn.execute("SET LOCAL synchronous_commit = on")
    # A users batch of a night older than the newest attribute refresh would overwrite newer
    # attributes, whichever way it came back to pending (a retry, a recovery, a requeue).
    # The watermark is read first so the scan is an index range over older nights only
    # (usually empty), not every pending batch at every claim.
    conn.execute(
        "WITH w AS (SELECT night FROM moengage_sync.attribute_watermark WHERE program_id = %(p)s) "
        "UPDATE moengage_sync.batches b SET state = 'superseded', updated_at = now(), "
        "error = 'superseded by the attribute refresh of night ' || (SELECT night FROM w) "
        "WHERE b.program_id = %(p)s AND b.state = 'pending' AND b.night < (SELECT night FROM w) "
        "AND b.kind = 'users'", {"p": owner.program_id})
    # A live run's batches go in the order they were written: an older attribute snapshot (a
    # users batch paying an owed update) never after a newer one beside events.
    order = "batch_id" if live_only else "night, kind, batch_id"
    rows = conn.execute(
        """
        UPDATE moengage_sync.batches b
        SET state = 'claimed', claimed_by = %(owner)s, claim_slot = %(slot)s, claim_try = %(try)s,
            lease_expires_at = now() + make_interval(secs => %(lease)s),
            attempts = attempts + 1, updated_at = now()
        FROM (
            SELECT batch_id FROM moengage_sync.batches
            WHERE program_id = %(program)s AND state = 'pending' AND night <= %(night)s
              AND (NOT %(live)s OR starts_with(run_id, %(prefix)s))
            ORDER BY """ + order + """
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) c
        WHERE b.batch_id = c.batch_id
        RETURNING b.batch_id, b.night, b.kind, b.body, b.users, b.events, b.attempts, b.lost_answers,
                  starts_with(b.run_id, %(prefix)s)
        """,
        {"owner": owner.token, "slot": owner.slot_key, "try": owner.try_number, "lease": lease_seconds,
         "program": owner.program_id, "limit": limit, "night": up_to_night, "live": live_only,
         "prefix": LIVE_RUN_PREFIX},
    ).fetchall()
    conn.commit()
    batches = [ClaimedBatch(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows]
    batches.sort(key=(lambda b: b.batch_id) if live_only else (lambda b: (b.night, b.kind, b.batch_id)))
    return batches


def start_sending(conn: Any, batch_id: int, owner: Owner, *, lease_seconds: float = LEASE_SECONDS,
                  carrier: str | None = None, token: str | None = None) -> None:
    """Durably mark the one batch about to be POSTed, with its receipt (carrier and token, taken
    in this transaction): the only state a crash turns uncertain. Raises :class:`ClaimLost`
    (nothing is sent) when the claim is no longer ours, or its lease ran out (the renewals
    failed: another run may already count it as an orphan)."""
    moved = conn.execute(
        "UPDATE moengage_sync.batches SET state = 'sending', updated_at = now(), posted_at = now(), "
        "receipt_carrier = %s, receipt_token = %s, lease_expires_at = now() + make_interval(secs => %s) "
        "WHERE batch_id = %s AND state = 'claimed' AND claimed_by = %s AND lease_expires_at > now()",
        (carrier, token, lease_seconds, batch_id, owner.token)).rowcount
    if moved != 1:
        conn.rollback()
        raise ClaimLost(f"batch {batch_id} is no longer claimed by {owner.token}")
    conn.execute("SET LOCAL synchronous_commit = on")
    conn.commit()


def mark_attempt(conn: Any, batch_id: int, owner: Owner, *, lease_seconds: float = LEASE_SECONDS) -> None:
    """Right before each HTTP request of a POST leaves (after pacing, 429 waits and backoff): the
    batch is still ours, ``sending``, under a live lease, and ``posted_at`` says when this request
    left, which is when a receipt's wait starts. Durable before the request leaves; raises
    :class:`ClaimLost` (nothing is sent) when a recovery took the batch while we waited."""
    moved = conn.execute(
        "UPDATE moengage_sync.batches SET posted_at = now(), updated_at = now(), "
        "lease_expires_at = now() + make_interval(secs => %s) "
        "WHERE batch_id = %s AND state = 'sending' AND claimed_by = %s AND lease_expires_at > now()",
        (lease_seconds, batch_id, owner.token)).rowcount
    if moved != 1:
        conn.rollback()
        raise ClaimLost(f"batch {batch_id} is no longer being sent by {owner.token} (its lease ran out while "
                        "the request waited): not sent")
    conn.execute("SET LOCAL synchronous_commit = on")
    conn.commit()


def keep_in_doubt(conn: Any, batch_id: int, owner: Owner, *, carrier: str | None, token: str | None,
                  posted_at: Any, outcome: str) -> bool:
    """An answer we got could not be recorded where it belongs (the row no longer shows our
    ``sending`` mark: a failover lost it, or a recovery moved it): whatever the row says now, it
    becomes ``uncertain`` with the receipt this POST carried, so it is settled by that receipt and
    never posted again on the strength of a state that forgot our POST. Batches already final are
    left alone. False when nothing could be marked."""
    return conn.execute(
        "UPDATE moengage_sync.batches SET state = 'uncertain', claimed_by = %(owner)s, lease_expires_at = NULL, "
        "receipt_carrier = %(carrier)s, receipt_token = %(token)s, posted_at = coalesce(%(posted)s, posted_at), "
        "lost_answers = lost_answers + 1, updated_at = now(), "
        "error = 'MoEngage answered (' || %(outcome)s || ') but the state database no longer showed this POST; "
        "settled by its receipt' "
        "WHERE batch_id = %(id)s AND state NOT IN ('sent', 'rejected', 'superseded')",
        {"owner": owner.token, "carrier": carrier, "token": token, "posted": posted_at, "outcome": outcome,
         "id": batch_id}).rowcount == 1


def finish(conn: Any, batch_id: int, owner: Owner, state: str, *, request_id: str | None = None,
           http_status: int | None = None, error: str | None = None, lost: bool = False) -> bool:
    """Record the outcome of our POST (``sent``, ``rejected``, ``uncertain``, or ``pending``
    after a transient failure; ``lost``: the answer was lost). A recovery that took the batch from us mid-POST made it
    ``uncertain`` but kept our name on it, so our answer still settles it; False when it moved
    on since (re-queued or claimed by another owner): the caller must not count it."""
    assert state in OUTCOMES, state
    return conn.execute(
        "UPDATE moengage_sync.batches SET state = %(state)s, request_id = %(rid)s, http_status = %(status)s, "
        "error = %(error)s, updated_at = now(), lease_expires_at = NULL, "
        "lost_answers = lost_answers + %(lost)s, "
        "settled_by = CASE WHEN %(lost)s = 1 AND kind = 'users' THEN 'resend' ELSE settled_by END, "
        "claimed_by = CASE WHEN %(state)s = 'pending' THEN NULL ELSE claimed_by END, "
        "sent_at = CASE WHEN %(state)s = 'sent' THEN now() ELSE sent_at END, "
        "sent_by_run = CASE WHEN %(state)s = 'sent' THEN %(run)s ELSE sent_by_run END "
        "WHERE batch_id = %(id)s AND claimed_by = %(owner)s AND (state = 'sending' OR state = 'uncertain')",
        {"state": state, "rid": request_id, "status": http_status, "error": error, "run": owner.run_id,
         "lost": int(lost),
         "id": batch_id, "owner": owner.token},
    ).rowcount == 1


def release(conn: Any, batch_ids: list[int], owner: Owner, *, error: str) -> int:
    """Give back claimed batches this owner will not post."""
    if not batch_ids:
        return 0
    return conn.execute(
        "UPDATE moengage_sync.batches SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL, "
        "updated_at = now(), error = %s WHERE batch_id = ANY(%s) AND state = 'claimed' AND claimed_by = %s",
        (error, batch_ids, owner.token)).rowcount


#: A slot whose main thread shows no sign of life this long stops having its lease renewed.
MAX_SILENCE_SECONDS = 900.0


def release_unposted(conn: Any, batch_id: int, owner: Owner,
                     error: str = "not sent: the claim was lost while the request waited") -> int:
    """Our POST never left (only 429s or failed connects came before the claim was found gone):
    the batch goes back to pending if it is still ours, whether still 'sending' or already made
    'uncertain' by a recovery; if someone else holds it now, they settle it."""
    return conn.execute(
        "UPDATE moengage_sync.batches SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL, "
        "updated_at = now(), error = %s "
        "WHERE batch_id = %s AND claimed_by = %s AND state IN ('sending', 'uncertain')",
        (error, batch_id, owner.token)).rowcount


class LeaseKeeper:
    """Renews an owner's lease from a thread of its own while the slot works (a POST, a 429
    wait or a pacing sleep can outlast the lease). If the process dies, renewal stops and the
    claims become orphans when the lease runs out. Renewal also stops when the slot's main thread
    has not called :meth:`beat` for ``max_silence`` seconds (hung): a hung slot must not hold its
    batches for ever. Its next request then finds the claim gone (``mark_attempt``) and sends nothing."""

    def __init__(self, dsn: str, owner: Owner, *, lease_seconds: float = LEASE_SECONDS,
                 every: float | None = None, max_silence: float = MAX_SILENCE_SECONDS) -> None:
        self.dsn, self.owner, self.lease_seconds = dsn, owner, lease_seconds
        self.every = every or lease_seconds / 4
        self.max_silence = max_silence
        self.last_beat = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease {owner.token}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def beat(self) -> None:
        """The main thread is alive and working (called before each request and claim)."""
        self.last_beat = time.monotonic()

    def _run(self) -> None:
        from loyalty_moengage.db import connect

        conn = None
        while not self._stop.wait(self.every):
            if time.monotonic() - self.last_beat > self.max_silence:
                log.warning("the load slot %s has shown no progress for %.0f s: its lease is no longer renewed",
                            self.owner.token, time.monotonic() - self.last_beat)
                continue
            try:
                if conn is None or conn.closed:
                    conn = connect(self.dsn, autocommit=True, application_name="loyalty_moengage lease")
                conn.execute(
                    "UPDATE moengage_sync.batches SET lease_expires_at = now() + make_interval(secs => %s) "
                    "WHERE claimed_by = %s AND state IN ('claimed', 'sending')",
                    (self.lease_seconds, self.owner.token))
            except Exception as exc:  # the next beat retries; an expired lease only makes claims recoverable
                log.warning("could not renew the lease of %s: %s", self.owner.token, type(exc).__name__)
                conn = None
        if conn is not None:
            conn.close()


def requeue_batch(conn: Any, batch_id: int, owner: Owner) -> int:
    """Policy ``resend``: the batch we just marked uncertain goes back to pending at once."""
    return conn.execute(
        "UPDATE moengage_sync.batches SET state = 'pending', claimed_by = NULL, updated_at = now() "
        "WHERE batch_id = %s AND state = 'uncertain' AND claimed_by = %s", (batch_id, owner.token)).rowcount


def requeue_uncertain(conn: Any, program_id: str) -> int:
    cur = conn.execute(
        "UPDATE moengage_sync.batches SET state = 'pending', claimed_by = NULL, updated_at = now() "
        "WHERE program_id = %s AND state = 'uncertain' AND body IS NOT NULL",
        (program_id,),
    )
    conn.commit()
    return cur.rowcount


def wait_for_in_flight(conn: Any, program_id: str, night: date, *, timeout: float = 600.0, poll: float = 1.0,
                       sleep: Callable[[float], None] = time.sleep,
                       clock: Callable[[], float] = time.monotonic) -> int:
    """Wait while live owners (another run's load slots) are posting batches of this night, so
    the outcome judges finished work; returns how many are still in flight at the timeout."""
    deadline = clock() + timeout
    while True:
        n = conn.execute(
            "SELECT count(*) FROM moengage_sync.batches WHERE program_id = %s AND night = %s "
            "AND state IN ('claimed', 'sending') AND lease_expires_at >= now()", (program_id, night)).fetchone()[0]
        conn.commit()
        if not n or clock() >= deadline:
            return n
        sleep(poll)
