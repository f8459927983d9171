"""Deliver pending outbox batches through the MoEngage hook, one load slot per mapped task.

Slots claim a few batches at a time with SKIP LOCKED ('claimed'), each claim owned by one
attempt of one slot of one run and kept alive by a lease, so any number of slots of any number
of runs (on any executor) share the outbox without sending a batch twice. Just before its POST
a batch is durably marked 'sending' (compare-and-set: an attempt that lost its claim stops
without sending), with the receipt an events batch carries (``receipts.py``), and its outcome
is recorded right after. Before each HTTP request of a POST leaves (pacing, 429 waits and backoff
come first) the claim is checked again and ``posted_at`` stamped (``delivery.mark_attempt``): a
slot that lost its lease while it waited sends nothing, and a receipt's wait counts from when the
request left. Any answer that does not name the request (5xx, 408, no answer) leaves an events
batch 'uncertain', for ``settle.py`` to settle by its receipt; a users batch is simply sent again
(attributes are last-write-wins). An answer that cannot be recorded where it belongs leaves the
batch 'uncertain' with its receipt (``delivery.keep_in_doubt``), never 'pending'. Claimed batches
never posted go back to 'pending'.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, Callable

from loyalty_moengage.sync.outbox.delivery import ClaimedBatch, Owner
from loyalty_moengage.sync.outbox.receipts import ReceiptSettings

if TYPE_CHECKING:
    from loyalty_moengage.moengage.hook import MoEngageHook

log = logging.getLogger(__name__)

CLAIM_SIZE = 8


class LoadError(RuntimeError):
    pass


class StateDatabaseLost(LoadError):
    """The slot's connection to the state database died; the next try goes on."""


def claim_size(hook: MoEngageHook) -> int:
    """Paced, a slot claims one batch at a time: a slot holding 8 claimed batches (tens of seconds at
    its share of the budget) while the other slots have run out leaves their share unspent at the end
    of the night. Unpaced, 8 at a time saves round-trips."""
    return 1 if hook.config.pacing else CLAIM_SIZE


@dataclass
class Slot:
    """One attempt of one load slot: who it is, where it sends, what it counted."""

    owner: Owner
    night: date
    state_dsn: str
    hook: MoEngageHook
    uncertain_policy: str
    claim_size: int
    lease: float
    receipts: ReceiptSettings | None = None
    keeper: Any = None              # the slot's LeaseKeeper: beaten before each request
    live_only: bool = False         # a live run's slot: live runs' batches only (delivery.claim)
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stats = {"slot": self.owner.slot, "owner": self.owner.token, "batches_sent": 0, "batches_rejected": 0,
                      "batches_uncertain": 0, "batches_failed": 0, "orphans_uncertain": 0, "requeued_uncertain": 0,
                      "users_resent": 0, "receipts": 0, "claims_lost": 0, "users_sent": 0, "events_sent": 0}


def _quarantine_batch(conn: Any, batch: ClaimedBatch, *, program_id: str, run_id: str, reason: str) -> None:
    """A batch MoEngage refused: each of its elements goes to the quarantine with the reason."""
    import orjson

    from loyalty_moengage.sync.outbox.enqueue import insert_quarantine

    elements = orjson.loads(batch.body)["elements"]
    insert_quarantine(conn, program_id=program_id, night=batch.night, run_id=run_id, rows=(
        (f"(batch {batch.batch_id})", reason, el.get("customer_id"), orjson.dumps(el)) for el in elements))


def load_slot(*, program_id: str, slot: int, night: date, run_id: str, state_dsn: str,
              hook: MoEngageHook, uncertain_policy: str = "hold", claim_size: int = CLAIM_SIZE,
              attempt: int = 1, lease_seconds: float | None = None,
              receipts: ReceiptSettings | None = None,
              lookup: Callable[[list[str]], set[str]] | None = None, lookup_group: int = 20,
              live_only: bool = False) -> dict[str, Any]:
    """Send every pending batch this slot can claim (nights up to ``night``, oldest first;
    ``live_only``: live runs' only)."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.outbox.delivery import LEASE_SECONDS, LeaseKeeper
    from loyalty_moengage.sync.report.stats import record_stats

    me = Slot(owner=Owner(program_id=program_id, run_id=run_id, slot=slot, try_number=attempt), night=night,
              state_dsn=state_dsn, hook=hook, uncertain_policy=uncertain_policy, claim_size=claim_size,
              lease=lease_seconds or LEASE_SECONDS, receipts=receipts, live_only=live_only)
    started = time.perf_counter()
    # Credentials and the data centre are proven before anything is claimed, so a failure
    # there leaves no batch 'sending' that was never posted.
    if callable(getattr(hook, "preflight", None)):
        hook.preflight()
    with connect(state_dsn) as conn:
        _take_over(conn, me)
        with LeaseKeeper(state_dsn, me.owner, lease_seconds=me.lease) as keeper, \
                _lookups(me, lookup, lookup_group) as worker:
            me.keeper = keeper
            failure = _send_all(conn, me, worker)
        if worker is not None and worker.error is not None and failure is None:
            failure = worker.error
        hook_stats = getattr(hook, "stats", None)
        if hook_stats is not None:
            me.stats.update({k: getattr(hook_stats, k) for k in ("requests", "throttled", "retries", "bytes_sent",
                                                                  "throttle_seconds", "pacing_seconds")})
        me.stats["seconds"] = round(time.perf_counter() - started, 4)
        record_stats(conn, program_id=program_id, night=night, run_id=run_id, stage="load",
                     key=f"{program_id}:slot-{slot}:try-{attempt}", stats=me.stats)
        conn.commit()
    if failure is not None:
        raise LoadError(
            f"load slot {slot} stopped: {failure}. Unsent batches stay pending and are retried by the "
            "next attempt of this task or by the next night."
        ) from failure
    log.info("slot %d: %s", slot, me.stats)
    return me.stats


def _lookups(me: Slot, lookup: Callable[[list[str]], set[str]] | None, customers: int) -> Any:
    """The slot's presence lookups, beside its sends (``lookups.py``); nothing without ``lookup``."""
    from contextlib import nullcontext

    from loyalty_moengage.sync.send.lookups import LookupWorker

    if lookup is None:
        return nullcontext(None)
    return LookupWorker(me.state_dsn, program_id=me.owner.program_id, up_to_night=me.night, run_id=me.owner.run_id,
                        key=f"presence-slot-{me.owner.slot}-try-{me.owner.try_number}", lookup=lookup,
                        customers=customers)


def _take_over(conn: Any, me: Slot) -> None:
    """What earlier attempts left: their claims, and (policy resend, slot 0) uncertain batches."""
    from loyalty_moengage.sync.outbox.delivery import recover_orphans, requeue_uncertain

    # Outcome marks need not wait for a WAL flush: a mark lost in a database crash leaves its
    # batch 'sending', which a later try turns 'uncertain'. Claims and 'sending' marks stay
    # synchronous, and each such flush makes earlier marks durable.
    conn.execute("SET synchronous_commit = off")
    conn.commit()
    me.stats["orphans_uncertain"], released = recover_orphans(conn, me.owner.program_id, me.owner)
    if released:
        log.info("%d batch(es) claimed by a stopped load attempt were never posted: pending again", released)
    if me.stats["orphans_uncertain"]:
        log.warning("%d batch(es) were mid-POST when their load attempt stopped: marked uncertain",
                    me.stats["orphans_uncertain"])
    if me.uncertain_policy == "resend" and me.owner.slot == 0:
        me.stats["requeued_uncertain"] = requeue_uncertain(conn, me.owner.program_id)


#: A slot waits for other slots' lookups while they make progress, at most this long without.
LOOKUP_STALL_SECONDS = 120.0


def _send_all(conn: Any, me: Slot, worker: Any = None) -> Exception | None:
    """Claim and send until nothing is pending and no event awaits its customer's check (the
    slots' lookup workers enqueue those meanwhile); the error that stopped the slot, if any."""
    from loyalty_moengage.sync.outbox.delivery import claim, release
    from loyalty_moengage.sync.send.lookups import pending_lookups

    waiting, progress_at = None, time.monotonic()
    while True:
        # Counted before the claim: a group enqueued after the count is in the claim's snapshot.
        left = 0 if me.live_only else pending_lookups(conn, me.owner.program_id, me.night)
        if me.keeper is not None:
            me.keeper.beat()
        claimed = claim(conn, me.owner, me.claim_size, up_to_night=me.night, lease_seconds=me.lease,
                        live_only=me.live_only)
        if not claimed:
            if worker is not None and worker.error is not None:
                return None   # load_slot fails the try with the worker's error
            mine = worker is not None and worker.alive
            if not left or (not mine and time.monotonic() - progress_at > LOOKUP_STALL_SECONDS):
                if left:
                    log.warning("%d event(s) still await their customer's check: the next run enqueues them", left)
                return None
            if left != waiting:
                waiting, progress_at = left, time.monotonic()
            time.sleep(0.5)
            continue
        progress_at = time.monotonic()
        for i, batch in enumerate(claimed):
            failure = _post_claimed(conn, me, batch)
            if failure is not None:
                release(conn, [b.batch_id for b in claimed[i + 1:]], me.owner, error="not attempted: the slot stopped")
                conn.commit()
                return failure


def _post_claimed(conn: Any, me: Slot, batch: ClaimedBatch) -> Exception | None:
    from loyalty_moengage.sync.outbox.delivery import ClaimLost, start_sending
    from loyalty_moengage.sync.outbox.owed import before_resend, stale_attributes
    from loyalty_moengage.sync.outbox.receipts import stamp

    why = stale_attributes(conn, batch, me.owner.program_id)
    if why:
        # Its snapshot may be older than one sent since: the events go alone and the members are
        # owed (outbox/owed.py); after a lost answer, once the lost write can no longer land.
        wait = (me.receipts.wait_seconds if me.receipts else None) if batch.lost_answers else 0.0
        resend = before_resend(conn, batch, program_id=me.owner.program_id, claimed_by=me.owner.token,
                               wait_seconds=wait, why=why)
        if resend is None:
            me.stats["live_updates_owed_instead"] = me.stats.get("live_updates_owed_instead", 0) + 1
            return None
        batch = resend
    stamped = None
    if me.receipts is not None and batch.kind == "events":
        stamped = stamp(conn, program_id=me.owner.program_id, batch_id=batch.batch_id, attempt=batch.attempts,
                        body=batch.body, settings=me.receipts)
    try:
        start_sending(conn, batch.batch_id, me.owner, lease_seconds=me.lease,
                      carrier=stamped.carrier if stamped else None, token=stamped.token if stamped else None)
    except ClaimLost as exc:
        me.stats["claims_lost"] += 1
        return exc
    if stamped is not None:
        me.stats["receipts"] += 1
    failure = _send_one(conn, me, batch, body=stamped.body if stamped else batch.body, stamped=stamped)
    conn.commit()
    return failure


def _before_post(conn: Any, me: Slot, batch: ClaimedBatch) -> Callable[[], None]:
    """Run right before each HTTP request of this POST leaves: the slot is alive, the claim is
    still ours (else nothing is sent) and ``posted_at`` is when this request left."""
    from loyalty_moengage.sync.outbox.delivery import mark_attempt
    from loyalty_moengage.sync.outbox.owed import check_not_covered

    def check() -> None:
        if me.keeper is not None:
            me.keeper.beat()
        check_not_covered(conn, batch, me.owner.program_id)
        mark_attempt(conn, batch.batch_id, me.owner, lease_seconds=me.lease)

    return check


#: An uncertain batch is resent by policy ``resend`` at most this many times in a row.
RESEND_ATTEMPTS = 3
#: A users batch whose answers keep being lost stops the slot after this many (it stays pending).
USERS_LOST_ANSWERS = 5


def _send_one(conn: Any, me: Slot, batch: ClaimedBatch, *, body: bytes, stamped: Any = None) -> Exception | None:
    """POST one batch we hold as 'sending' (``body``: with its receipt ``stamped``, if any) and record
    its outcome; returns the error that must stop the slot, if any."""
    from loyalty_moengage.moengage.errors import (
        MoEngageConfigError,
        MoEngageError,
        MoEngagePermanentError,
        MoEngageTransientError,
        MoEngageUncertainError,
        is_config_failure,
    )
    from loyalty_moengage.sync.outbox.delivery import ClaimLost
    from loyalty_moengage.sync.outbox.owed import RefreshDecided

    stats = me.stats

    def record(state: str, exc: MoEngageError | None = None, **kw: Any) -> bool:
        if exc is not None:
            kw.update(request_id=exc.request_id, http_status=exc.status, error=str(exc))
        if _finish_durably(conn, me, batch, state, stamped, **kw):
            return True
        stats["claims_lost"] += 1
        log.warning("batch %d was taken from this slot during its POST (outcome %s not recorded by us)",
                    batch.batch_id, state)
        return False

    try:
        result = me.hook.send_transition(body, users=batch.users + (1 if stamped else 0), events=batch.events,
                                         before_post=_before_post(conn, me, batch))
    except (ClaimLost, RefreshDecided) as exc:
        return _not_posted(conn, me, batch, exc)
    except MoEngageUncertainError as exc:
        return _lost_answer(conn, me, batch, exc, record)
    except (MoEngageConfigError, MoEngagePermanentError) as exc:
        if is_config_failure(exc):  # the connection is wrong, not the batch: it stays pending
            record("pending", exc)
            return exc
        if record("rejected", exc):
            _quarantine_batch(conn, batch, program_id=me.owner.program_id, run_id=me.owner.run_id,
                              reason=f"MoEngage refused the batch: {exc.status} {exc.cause}")
            stats["batches_rejected"] += 1
    except MoEngageTransientError as exc:
        record("pending", exc)
        stats["batches_failed"] += 1
        return exc
    else:
        if record("sent", request_id=result.request_id, http_status=result.status):
            stats["batches_sent"] += 1
            stats["users_sent"] += batch.users
            stats["events_sent"] += batch.events
    return None


def _not_posted(conn: Any, me: Slot, batch: ClaimedBatch, exc: Exception) -> Exception | None:
    """Nothing of this POST left: pending again if still ours. A lost claim stops the slot; a
    refresh decided while a live write waited does not (taken again, it goes without its attributes)."""
    from loyalty_moengage.sync.outbox.delivery import release_unposted
    from loyalty_moengage.sync.outbox.owed import RefreshDecided

    conn.rollback()
    release_unposted(conn, batch.batch_id, me.owner, error=f"not sent: {exc}")
    conn.commit()
    if isinstance(exc, RefreshDecided):
        me.stats["live_refreshed_while_waiting"] = me.stats.get("live_refreshed_while_waiting", 0) + 1
        return None
    me.stats["claims_lost"] += 1
    return exc


def _lost_answer(conn: Any, me: Slot, batch: ClaimedBatch, exc: Exception, record: Callable[..., bool]
                 ) -> Exception | None:
    """An answer that does not say whether MoEngage applied the request."""
    from loyalty_moengage.sync.outbox.delivery import requeue_batch

    stats = me.stats
    if batch.kind == "users":
        # Last-write-wins: sending it again duplicates nothing (claim() supersedes it if a newer
        # night's refresh came meanwhile).
        if record("pending", exc, lost=True):
            stats["users_resent"] += 1
        return exc if batch.lost_answers + 1 >= USERS_LOST_ANSWERS else None
    if record("uncertain", exc, lost=True):
        stats["batches_uncertain"] += 1
        if me.uncertain_policy == "resend" and batch.attempts < RESEND_ATTEMPTS:
            # Visible, unlike a silent client retry: the report counts it as a possible duplicate.
            stats["requeued_uncertain"] += requeue_batch(conn, batch.batch_id, me.owner)
    return None


def _finish_or_doubt(conn: Any, me: Slot, batch: ClaimedBatch, state: str, stamped: Any, **kw: Any) -> bool:
    """Record our POST's outcome; if the row no longer shows our POST (a failover lost the 'sending'
    mark, or a recovery moved it), an events batch MoEngage may have applied is kept in doubt with
    this POST's receipt rather than left to be sent again on the strength of a state that forgot it."""
    from loyalty_moengage.sync.outbox.delivery import finish, keep_in_doubt

    if finish(conn, batch.batch_id, me.owner, state, **kw):
        if state == "uncertain":
            _owe_in_doubt(conn, me, batch)
        return True
    if batch.kind == "events" and state in ("sent", "uncertain") and keep_in_doubt(
            conn, batch.batch_id, me.owner, carrier=stamped.carrier if stamped else None,
            token=stamped.token if stamped else None, posted_at=None, outcome=state):
        log.warning("batch %d: MoEngage answered (%s) but the state no longer showed this POST: kept uncertain "
                    "with its receipt", batch.batch_id, state)
        _owe_in_doubt(conn, me, batch)
    return False


def _owe_in_doubt(conn: Any, me: Slot, batch: ClaimedBatch) -> None:
    """Live attributes in doubt: MoEngage may apply them after a newer write, so their members are
    owed (outbox/owed.py), in the transaction that records the doubt: no crash between the two."""
    if batch.kind == "events" and batch.users:
        from loyalty_moengage.sync.outbox.owed import owe_in_doubt

        owe_in_doubt(conn, me.owner.program_id, [batch.body], me.receipts.wait_seconds if me.receipts else None)


def _finish_durably(conn: Any, me: Slot, batch: ClaimedBatch, state: str, stamped: Any, **kw: Any) -> bool:
    """Record an answer MoEngage gave even if the state database went away meanwhile: retried on
    fresh connections for about half a lease (the compare-and-set makes a retry safe), so a
    restart does not turn a known outcome into 'uncertain'. The slot then stops: its connection
    is gone, and the next try takes over the rest."""
    import psycopg

    try:
        done = _finish_or_doubt(conn, me, batch, state, stamped, **kw)
        conn.commit()
        return done
    except psycopg.OperationalError as lost:
        recorded = _finish_on_fresh_connection(me, batch, state, stamped, **kw)
        log.warning("the state database was lost after batch %d's POST; its outcome (%s) %s", batch.batch_id,
                    state, "is recorded" if recorded else "could not be recorded as such: kept uncertain")
        raise StateDatabaseLost(f"the state database connection was lost ({lost}); batch {batch.batch_id}'s "
                                "outcome was dealt with on a new connection") from lost


def _finish_on_fresh_connection(me: Slot, batch: ClaimedBatch, state: str, stamped: Any, **kw: Any) -> bool:
    import psycopg

    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.outbox.delivery import LEASE_SECONDS

    deadline = time.monotonic() + LEASE_SECONDS / 2
    wait = 0.5
    while True:
        time.sleep(wait)
        try:
            with connect(me.state_dsn) as fresh:
                done = _finish_or_doubt(fresh, me, batch, state, stamped, **kw)
            return done
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            wait = min(wait * 2, 8.0)
