"""Deliver pending outbox batches through the MoEngage hook, one load slot per mapped task.

Slots claim a few batches at a time with SKIP LOCKED ('claimed'), each claim owned by one
attempt of one slot of one run and kept alive by a lease, so any number of slots of any number
of runs (on any executor) share the outbox without sending a batch twice. Just before its POST
a batch is durably marked 'sending' (compare-and-set: an attempt that lost its claim stops
without sending), and its outcome is recorded right after: after a crash, only the one batch
that was mid-POST is 'uncertain'; claimed batches never posted go back to 'pending'.
"""

from __future__ import annotations

import logging
import time
from datetime import date
from typing import Any

log = logging.getLogger(__name__)

CLAIM_SIZE = 8
CONFIG_STATUSES = (401, 403, 409)   # the connection is wrong, not the batch: keep it pending


class LoadError(RuntimeError):
    pass


def _quarantine_batch(conn: Any, batch: Any, *, program_id: str, run_id: str, reason: str) -> None:
    """A batch MoEngage refused: each of its elements goes to the quarantine with the reason."""
    import orjson

    from loyalty_moengage.sync.outbox import insert_quarantine

    elements = orjson.loads(batch.body)["elements"]
    insert_quarantine(conn, program_id=program_id, night=batch.night, run_id=run_id, rows=(
        (f"(batch {batch.batch_id})", reason, el.get("customer_id"), orjson.dumps(el)) for el in elements))


def load_slot(*, program_id: str, slot: int, night: date, run_id: str, state_dsn: str,
              hook: Any, uncertain_policy: str = "hold", claim_size: int = CLAIM_SIZE,
              attempt: int = 1, lease_seconds: float | None = None) -> dict[str, Any]:
    """Send every pending batch this slot can claim (nights up to ``night``, oldest first)."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync import outbox
    from loyalty_moengage.sync.report import record_stats

    owner = outbox.Owner(program_id=program_id, run_id=run_id, slot=slot, try_number=attempt)
    lease = lease_seconds or outbox.LEASE_SECONDS
    stats = {"slot": slot, "owner": owner.token, "batches_sent": 0, "batches_rejected": 0, "batches_uncertain": 0,
             "batches_failed": 0, "orphans_uncertain": 0, "requeued_uncertain": 0, "claims_lost": 0,
             "users_sent": 0, "events_sent": 0}
    started = time.perf_counter()
    failure: Exception | None = None
    # Credentials and the data centre are proven before anything is claimed, so a failure
    # there leaves no batch 'sending' that was never posted.
    if callable(getattr(hook, "preflight", None)):
        hook.preflight()
    with connect(state_dsn) as conn:
        # Outcome marks need not wait for a WAL flush: a mark lost in a database crash leaves its
        # batch 'sending', which a later try turns 'uncertain'. Claims and 'sending' marks stay
        # synchronous, and each such flush makes earlier marks durable.
        conn.execute("SET synchronous_commit = off")
        conn.commit()
        stats["orphans_uncertain"], released = outbox.recover_orphans(conn, program_id, owner)
        if released:
            log.info("%d batch(es) claimed by a stopped load attempt were never posted: pending again", released)
        if stats["orphans_uncertain"]:
            log.warning("%d batch(es) were mid-POST when their load attempt stopped: marked uncertain",
                        stats["orphans_uncertain"])
        if uncertain_policy == "resend" and slot == 0:
            stats["requeued_uncertain"] = outbox.requeue_uncertain(conn, program_id)
        with outbox.LeaseKeeper(state_dsn, owner, lease_seconds=lease):
            while failure is None:
                claimed = outbox.claim(conn, owner, claim_size, up_to_night=night, lease_seconds=lease)
                if not claimed:
                    break
                for i, batch in enumerate(claimed):
                    try:
                        outbox.start_sending(conn, batch.batch_id, owner, lease_seconds=lease)
                    except outbox.ClaimLost as exc:
                        stats["claims_lost"] += 1
                        failure = exc
                    else:
                        failure = _send_one(conn, state_dsn, hook, batch, owner, stats, program_id=program_id,
                                            run_id=run_id, uncertain_policy=uncertain_policy)
                        conn.commit()
                    if failure is not None:
                        outbox.release(conn, [b.batch_id for b in claimed[i + 1:]], owner,
                                       error="not attempted: the slot stopped")
                        conn.commit()
                        break
        hook_stats = getattr(hook, "stats", None)
        if hook_stats is not None:
            stats.update({k: getattr(hook_stats, k) for k in ("requests", "throttled", "retries", "bytes_sent",
                                                               "throttle_seconds", "pacing_seconds")})
        stats["seconds"] = round(time.perf_counter() - started, 4)
        record_stats(conn, program_id=program_id, night=night, run_id=run_id, stage="load",
                     key=f"{program_id}:slot-{slot}:try-{attempt}", stats=stats)
        conn.commit()
    if failure is not None:
        raise LoadError(
            f"load slot {slot} stopped: {failure}. Unsent batches stay pending and are retried by the "
            "next attempt of this task or by the next night."
        ) from failure
    log.info("slot %d: %s", slot, stats)
    return stats


#: An uncertain batch is resent by policy ``resend`` at most this many times in a row.
RESEND_ATTEMPTS = 3


def _send_one(conn: Any, state_dsn: str, hook: Any, batch: Any, owner: Any, stats: dict[str, Any], *,
              program_id: str, run_id: str, uncertain_policy: str) -> Exception | None:
    """POST one batch we hold as 'sending' and record its outcome; returns the error that
    must stop the slot, if any."""
    from loyalty_moengage.moengage.errors import (
        MoEngageConfigError,
        MoEngagePermanentError,
        MoEngageTransientError,
        MoEngageUncertainError,
    )
    from loyalty_moengage.sync import outbox

    def settle(state: str, **kw: Any) -> bool:
        if _finish_durably(conn, state_dsn, batch.batch_id, owner, state, **kw):
            return True
        stats["claims_lost"] += 1
        log.warning("batch %d was taken from this slot during its POST (outcome %s not recorded by us)",
                    batch.batch_id, state)
        return False

    try:
        result = hook.send_transition(batch.body, users=batch.users, events=batch.events)
    except MoEngageUncertainError as exc:
        if settle("uncertain", request_id=exc.request_id, http_status=exc.status, error=str(exc)):
            stats["batches_uncertain"] += 1
            if uncertain_policy == "resend" and batch.attempts < RESEND_ATTEMPTS:
                # Visible, unlike a silent client retry: the report counts it as a possible duplicate.
                stats["requeued_uncertain"] += outbox.requeue_batch(conn, batch.batch_id, owner)
    except MoEngageConfigError as exc:  # the connection cannot be read: nothing was posted
        settle("pending", error=str(exc))
        return exc
    except MoEngagePermanentError as exc:
        if exc.status in CONFIG_STATUSES:
            settle("pending", request_id=exc.request_id, http_status=exc.status, error=str(exc))
            return exc
        if settle("rejected", request_id=exc.request_id, http_status=exc.status, error=str(exc)):
            _quarantine_batch(conn, batch, program_id=program_id, run_id=run_id,
                              reason=f"MoEngage refused the batch: {exc.status} {exc.cause}")
            stats["batches_rejected"] += 1
    except MoEngageTransientError as exc:
        settle("pending", request_id=exc.request_id, http_status=exc.status, error=str(exc))
        stats["batches_failed"] += 1
        return exc
    else:
        if settle("sent", request_id=result.request_id, http_status=result.status):
            stats["batches_sent"] += 1
            stats["users_sent"] += batch.users
            stats["events_sent"] += batch.events
    return None


def _finish_durably(conn: Any, state_dsn: str, batch_id: int, owner: Any, state: str, **kw: Any) -> bool:
    """Record an answer MoEngage gave even if the state database went away meanwhile: retried on
    fresh connections for about half a lease (the compare-and-set makes a retry safe), so a
    restart does not turn a known outcome into 'uncertain'. The slot then stops: its connection
    is gone, and the next try takes over the rest."""
    import psycopg

    from loyalty_moengage.sync import outbox

    try:
        done = outbox.finish(conn, batch_id, owner, state, **kw)
        conn.commit()
        return done
    except psycopg.OperationalError as lost:
        _finish_on_fresh_connection(state_dsn, batch_id, owner, state, **kw)
        log.warning("the state database was lost after batch %d's POST; its outcome (%s) is recorded", batch_id, state)
        raise StateDatabaseLost(f"the state database connection was lost ({lost}); batch {batch_id}'s outcome "
                                "was recorded on a new connection") from lost


def _finish_on_fresh_connection(state_dsn: str, batch_id: int, owner: Any, state: str, **kw: Any) -> None:
    import psycopg

    from loyalty_moengage.db import connect
    from loyalty_moengage.sync import outbox

    deadline = time.monotonic() + outbox.LEASE_SECONDS / 2
    wait = 0.5
    while True:
        time.sleep(wait)
        try:
            with connect(state_dsn) as fresh:
                outbox.finish(fresh, batch_id, owner, state, **kw)
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            wait = min(wait * 2, 8.0)


class StateDatabaseLost(LoadError):
    """The slot's connection to the state database died; the next try goes on."""
