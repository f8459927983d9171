"""Deliver pending outbox batches through the MoEngage hook, one load slot per mapped task.

Slots claim a few batches at a time with SKIP LOCKED ('claimed'), so any number of slots (on
any executor) share the outbox without sending a batch twice. Just before its POST a batch is
durably marked 'sending', and its outcome is recorded right after: after a crash, only the one
batch that was mid-POST is 'uncertain'; claimed batches never posted go back to 'pending'.
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

    elements = orjson.loads(batch.body)["elements"]
    with conn.cursor() as cur:
        with cur.copy(
            "COPY moengage_sync.quarantine (program_id, night, run_id, template, reason, row_key, row_data) FROM STDIN"
        ) as copy:
            for el in elements:
                key = None
                if el.get("type") == "event":
                    key = el.get("customer_id")
                copy.write_row((program_id, batch.night, run_id, f"(batch {batch.batch_id})", reason,
                                key or el.get("customer_id"), orjson.dumps(el).decode()))


def load_slot(*, program_id: str, slot: int, night: date, run_id: str, state_dsn: str,
              hook: Any, uncertain_policy: str = "hold", claim_size: int = CLAIM_SIZE,
              attempt: int = 1) -> dict[str, Any]:
    """Send every pending batch this slot can claim (nights up to ``night``, oldest first)."""
    from loyalty_moengage.sync import outbox
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.report import record_stats
    from loyalty_moengage.moengage.hook import (
        MoEngagePermanentError,
        MoEngageTransientError,
        MoEngageUncertainError,
    )

    slot_key = f"{program_id}:slot-{slot}"
    stats = {"slot": slot, "batches_sent": 0, "batches_rejected": 0, "batches_uncertain": 0,
             "batches_failed": 0, "orphans_uncertain": 0, "requeued_uncertain": 0,
             "users_sent": 0, "events_sent": 0}
    started = time.perf_counter()
    failure: Exception | None = None
    with connect(state_dsn) as conn:
        # Outcome marks need not wait for a WAL flush: a mark lost in a database crash leaves its
        # batch 'sending', which the next attempt turns 'uncertain' (held, never resent). Claims
        # and 'sending' marks stay synchronous, and each such flush makes earlier marks durable.
        conn.execute("SET synchronous_commit = off")
        conn.commit()
        stats["orphans_uncertain"], released = outbox.recover_orphans(conn, program_id, slot_key)
        if released:
            log.info("%d batch(es) claimed by a stopped attempt of %s were never posted: pending again",
                     released, slot_key)
        if stats["orphans_uncertain"]:
            log.warning("%d batch(es) of %s were mid-send when a worker stopped: marked uncertain",
                        stats["orphans_uncertain"], slot_key)
        if uncertain_policy == "resend" and slot == 0:
            stats["requeued_uncertain"] = outbox.requeue_uncertain(conn, program_id)
        while failure is None:
            claimed = outbox.claim(conn, program_id, slot_key, claim_size, up_to_night=night)
            if not claimed:
                break
            for i, batch in enumerate(claimed):
                if failure is not None:
                    outbox.mark(conn, batch.batch_id, "pending", error="not attempted: the slot stopped")
                    continue
                outbox.start_sending(conn, batch.batch_id)
                try:
                    result = hook.send_transition(batch.body, users=batch.users, events=batch.events)
                except MoEngageUncertainError as exc:
                    outbox.mark(conn, batch.batch_id, "uncertain", request_id=exc.request_id,
                                http_status=exc.status, error=str(exc))
                    stats["batches_uncertain"] += 1
                except MoEngagePermanentError as exc:
                    if exc.status in CONFIG_STATUSES:
                        outbox.mark(conn, batch.batch_id, "pending", request_id=exc.request_id,
                                    http_status=exc.status, error=str(exc))
                        failure = exc
                    else:
                        outbox.mark(conn, batch.batch_id, "rejected", request_id=exc.request_id,
                                    http_status=exc.status, error=str(exc))
                        _quarantine_batch(conn, batch, program_id=program_id, run_id=run_id,
                                          reason=f"MoEngage refused the batch: {exc.status} {exc.cause}")
                        stats["batches_rejected"] += 1
                except MoEngageTransientError as exc:
                    outbox.mark(conn, batch.batch_id, "pending", request_id=exc.request_id,
                                http_status=exc.status, error=str(exc))
                    stats["batches_failed"] += 1
                    failure = exc
                else:
                    outbox.mark(conn, batch.batch_id, "sent", request_id=result.request_id,
                                http_status=result.status)
                    stats["batches_sent"] += 1
                    stats["users_sent"] += batch.users
                    stats["events_sent"] += batch.events
                conn.commit()
        hook_stats = getattr(hook, "stats", None)
        if hook_stats is not None:
            stats.update({k: getattr(hook_stats, k) for k in ("requests", "throttled", "retries", "bytes_sent",
                                                               "throttle_seconds", "pacing_seconds")})
        stats["seconds"] = round(time.perf_counter() - started, 4)
        record_stats(conn, program_id=program_id, night=night, run_id=run_id, stage="load",
                     key=f"{slot_key}:try-{attempt}", stats=stats)
        conn.commit()
    if failure is not None:
        raise LoadError(
            f"load slot {slot} stopped: {failure}. Unsent batches stay pending and are retried by the "
            "next attempt of this task or by the next night."
        ) from failure
    log.info("slot %d: %s", slot, stats)
    return stats
