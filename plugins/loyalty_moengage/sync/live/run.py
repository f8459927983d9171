"""One live run of a program: the events recorded since the last one, through the night's own
path (templates, row checks, presence gate, outbox, paced load), within minutes of their commit.

Exactly once with the nights, reruns and backfills: a live run's batches carry a ``live:`` run id
and its events their keys in ``moengage_sync.event_keys``, so a night (or a later live run, or a
backfill) that reads the same rows finds them enqueued and drops them. Two live runs of one
program never overlap: the DAG allows one active run, and each run holds a session advisory lock
on the state database for its whole length (a second scheduler, a cleared task running beside
a zombie): the loser skips. A live run releases only its own batches (``guard.release_run``) and
sends only live batches (``delivery.claim(live_only=True)``): the night's backlog is the night's.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

from loyalty_moengage.sync.live.window import LiveWindow
from loyalty_moengage.sync.outbox.states import LIVE_RUN_PREFIX

log = logging.getLogger(__name__)

#: The live lane's load slot number in leases and stats (the nights' are 0.., settle's -1).
LIVE_SLOT = -2
#: What the live run sums over its pieces (one per night its window touches).
SUMMED = ("rows_extracted", "events_extracted", "events_enqueued", "events_already_sent", "not_in_moengage",
          "customer_lookups", "batches", "bytes", "attributes_beside")


class LiveLagError(RuntimeError):
    """The live lag passed the program's ``live.alert_lag_minutes``: the run fails so the alert fires."""


@dataclass(frozen=True)
class LiveRun:
    program: Any
    run_id: str              # the lane's: LIVE_RUN_PREFIX + the Airflow run id
    attempt: int
    loyalty_dsn: str
    state_dsn: str

    @classmethod
    def of(cls, program: Any, airflow_run_id: str, attempt: int, loyalty_dsn: str, state_dsn: str) -> "LiveRun":
        return cls(program, LIVE_RUN_PREFIX + airflow_run_id, attempt, loyalty_dsn, state_dsn)

    @property
    def lock_key(self) -> str:
        return f"moengage_live:{self.program.id}"


def run_live(run: LiveRun, *, hook: Any, lookup: Callable[[list[str]], set[str]] | None,
             on_stats: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Read, enqueue, release, advance the watermark, send; returns the run's stats (given to
    ``on_stats`` too, the metrics, before a lag over the alert setting fails the run)."""
    from loyalty_moengage.db import connect

    started = time.perf_counter()
    with connect(run.state_dsn, autocommit=True) as lock_conn:
        got = lock_conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (run.lock_key,)).fetchone()[0]
        if not got:
            log.info("another live run of %s holds its lock: this one skips", run.program.id)
            stats: dict[str, Any] = {"skipped": "another live run of this program was running"}
            window = None
        else:
            try:
                window = _window(run)
                stats = _work(run, window, hook, lookup)
            finally:
                lock_conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (run.lock_key,))
    stats["lag_seconds"] = live_lag_seconds(run.state_dsn, run.program.id)
    stats["seconds"] = round(time.perf_counter() - started, 4)
    if window is not None:
        _record(run, window, stats)
    log.info("live %s: %s", run.program.id, stats)
    if on_stats is not None:
        on_stats(stats)
    limit = run.program.live.alert_lag_minutes * 60
    if stats["lag_seconds"] > limit:
        raise LiveLagError(f"live lag of {run.program.id} is {stats['lag_seconds']:.0f} s, over the "
                           f"live.alert_lag_minutes of {run.program.live.alert_lag_minutes}: events wait unsent "
                           "(see the live runs' logs and the MoEngage sync tab)")
    return stats


def _work(run: LiveRun, window: LiveWindow, hook: Any, lookup: Callable[[list[str]], set[str]] | None) -> dict[str, Any]:
    """Enqueue; confirm the customers the cache did not know and enqueue their events in a second
    pass; release and move the watermark; send."""
    from loyalty_moengage.sync.sinks.outbox_sink import LiveOutboxSink

    attributes = run.program.live.attributes
    if attributes:
        from loyalty_moengage.sync.chunk.attributes import check_takes_customer_ids

        check_takes_customer_ids()
    sink = LiveOutboxSink(run.state_dsn, attributes=attributes, settle_seconds=float(run.program.receipt_wait_seconds))
    stats = _enqueue(run, window, lookup, sink, 1)
    confirmed = _confirm(run, sink.unconfirmed, lookup, hook)
    if confirmed:
        sink.unconfirmed.clear()
        again = _enqueue(run, window, lookup, sink, 2)
        for k in ("events_enqueued", "batches", "bytes", "attributes_beside"):
            stats[k] += again[k]
    stats.update(customers_confirmed=confirmed, events_left_for_later_customers=len(sink.unconfirmed))
    if attributes and window.end > window.start:
        stats.update(_pay_owed(run, window))
    if sink.attribute_errors:
        stats["attribute_errors"] = sink.attribute_errors[:3]
    stats.update(_release_and_advance(run, window))
    stats.update(_settle(run, window, hook))
    stats.update(_send(run, window, hook))
    stats.update(_in_doubt(run))
    stats.update(latency(sink.event_times, datetime.now(timezone.utc)))
    return stats


def _confirm(run: LiveRun, customers: set[str], lookup: Callable[[list[str]], set[str]] | None, hook: Any) -> int:
    """Look up (Get User API, at most a minute's share of its budget) customers the presence cache
    did not confirm; record only those MoEngage has. How many it has."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.moengage.presence import record_answers

    if not customers or lookup is None:
        return 0
    per_minute = getattr(getattr(hook, "config", None), "lookups_per_minute", 1000) * getattr(hook, "share", 1.0)
    ask = sorted(customers)[:max(10, int(per_minute))]
    found = lookup(ask)
    if found:
        with connect(run.state_dsn) as conn:
            record_answers(conn, run.program.id, sorted(found), found)
            conn.commit()
    return len(found)


def _window(run: LiveRun) -> LiveWindow:
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.live.window import plan_window, read_clock, read_watermark

    policy = run.program.live
    with connect(run.loyalty_dsn) as conn:
        now, oldest = read_clock(conn, timedelta(minutes=policy.max_hold_minutes))
    with connect(run.state_dsn) as conn:
        previous = read_watermark(conn, run.program.id)
    return plan_window(now=now, oldest_writer=oldest, previous=previous, time_zone=run.program.time_zone,
                       lookback=timedelta(minutes=policy.lookback_minutes),
                       max_hold=timedelta(minutes=policy.max_hold_minutes))


def _enqueue(run: LiveRun, window: LiveWindow, lookup: Callable[[list[str]], set[str]] | None, sink: Any,
             pass_no: int) -> dict[str, Any]:
    """Each night's piece of the window through the chunk pipeline into the outbox (staged)."""
    from loyalty_moengage.sync.chunk.job import ChunkJob
    from loyalty_moengage.sync.chunk.pipeline import run_chunk

    totals: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    for piece in window.nights(run.program.time_zone):
        job = ChunkJob(program_id=run.program.id, window=piece, lo=-(2 ** 63), hi=2 ** 63 - 1,
                       label=f"live {piece.start:%Y-%m-%dT%H:%M:%S.%f}/{piece.end:%H:%M:%S.%f} #{pass_no}",
                       run_id=run.run_id,
                       send_users=False, loyalty_dsn=run.loyalty_dsn, state_dsn=run.state_dsn, lane="live")
        chunk = run_chunk(job, sink, lookup=lookup)
        totals.update({k: chunk.get(k, 0) for k in SUMMED})
        quarantined.update(chunk.get("quarantined", {}))
    return {**totals, "quarantined": dict(quarantined), "window_start": window.start.isoformat(),
            "window_end": window.end.isoformat(), "read_to": window.read_to.isoformat(),
            "held_by_open_transaction": window.held_by.isoformat() if window.held_by else None}


def _pay_owed(run: LiveRun, window: LiveWindow) -> dict[str, Any]:
    """The attribute updates owed (outbox/owed.py) whose refresh has landed, as of this run's cut,
    enqueued as users batches of this run with the debts deleted, in one transaction."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.chunk.attributes import attributes_sparing_bad_rows
    from loyalty_moengage.sync.chunk.pack import pack_users
    from loyalty_moengage.sync.outbox import enqueue, owed

    piece = window.nights(run.program.time_zone)[-1]
    with connect(run.state_dsn) as conn:
        owed.hold_refresh_decision(conn, run.program.id)
        customers = owed.due(conn, run.program.id, float(run.program.receipt_wait_seconds))
        if not customers:
            conn.rollback()
            return {"owed_attributes_enqueued": 0}
        spared = attributes_sparing_bad_rows(run.loyalty_dsn, piece, run.program.id, customers)
        members, failed = spared.checked, set(spared.failed)   # bad rows: their debts wait, the rest are paid
        customers = [c for c in customers if c not in failed]
        batches = pack_users(members) if members.users is not None else []
        found = members.users.column("customer_id").to_pylist() if members.users is not None else []
        ids = enqueue.allocate_batch_ids(conn, len(batches))
        enqueue.insert_batches(conn, program_id=run.program.id, night=piece.night, run_id=run.run_id,
                               chunk_label="live: attributes owed", batch_ids=ids, batches=batches)
        enqueue.insert_quarantine(conn, program_id=run.program.id, night=piece.night, run_id=run.run_id,
                                  rows=members.rejects.rows)
        owed.written(conn, run.program.id, found, piece.night)
        owed.paid(conn, run.program.id, customers)
        owed.defer(conn, run.program.id, sorted(failed))
        conn.commit()
    out = {"owed_attributes_enqueued": sum(b.users for b in batches),
           "owed_members_without_row": len(set(customers) - set(found))}
    if failed:
        log.warning("owed attributes of %d member(s) not read (tried again in %d s): %s", len(failed),
                    owed.BAD_ROW_RETRY_SECONDS, spared.error)
        out.update(owed_attributes_failed=len(failed), owed_attributes_error=str(spared.error)[:500])
    return out


def _release_and_advance(run: LiveRun, window: LiveWindow) -> dict[str, Any]:
    """The run's batches become sendable and the watermark moves, in one transaction: a run that
    dies before it leaves both as they were, and the next run reads the same rows again."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.live.window import advance
    from loyalty_moengage.sync.send.guard import release_run

    with connect(run.state_dsn) as conn:
        released = release_run(conn, run.program.id, run.run_id)
        moved = advance(conn, run.program.id, window, run.run_id)
        conn.commit()
    if not moved:
        log.warning("the live watermark of %s moved under this run: it stays where the other run left it",
                    run.program.id)
    return {"batches_released": released, "watermark_moved": moved}


def _settle(run: LiveRun, window: LiveWindow, hook: Any) -> dict[str, Any]:
    """The live lane's own doubts (answers lost), read once, without waiting: a receipt seen is
    ``sent``; one absent past the receipt wait while a later probe shows is ``pending`` again, and
    this run's send sends it (without its attributes: outbox/owed.py). The rest wait for the next
    run, a minute later, not for the night."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.outbox.receipts import ReceiptSettings
    from loyalty_moengage.moengage.errors import MoEngageError
    from loyalty_moengage.sync.send.settle import settle

    settings = ReceiptSettings.of(run.program, hook.config)
    if settings is None:
        return {}
    try:
        with connect(run.state_dsn) as conn:
            done = settle(conn, program_id=run.program.id, hook=hook, settings=settings, up_to_night=date.max,
                          run_id=run.run_id, timeout=0, live_only=True)
    except MoEngageError as exc:   # reading receipts failed: this run still sends; the next reads again
        log.warning("live %s: receipts not read this run (%s)", run.program.id, exc)
        return {"settle_error": str(exc)[:500]}
    return {"settled_by_receipt": done.by_receipt, "resent_after_absence": done.absent,
            **({"settle_notes": done.notes} if done.notes else {})}


def _in_doubt(run: LiveRun) -> dict[str, int]:
    """Live batches whose answer was lost and not yet settled, and (``live.attributes``) the owed
    attribute updates left, after this run's sends."""
    from loyalty_moengage.db import connect

    with connect(run.state_dsn) as conn:
        out = {"uncertain_live_batches": conn.execute(
            "SELECT count(*) FROM moengage_sync.batches WHERE program_id = %s AND state = 'uncertain' "
            "AND starts_with(run_id, %s)", (run.program.id, LIVE_RUN_PREFIX)).fetchone()[0]}
        if run.program.live.attributes:
            out["owed_attributes_left"] = conn.execute(
                "SELECT count(*) FROM moengage_sync.live_attributes_owed WHERE program_id = %s",
                (run.program.id,)).fetchone()[0]
        return out


def _send(run: LiveRun, window: LiveWindow, hook: Any) -> dict[str, Any]:
    from loyalty_moengage.sync.outbox.receipts import ReceiptSettings
    from loyalty_moengage.sync.send.load import claim_size, load_slot

    newest = window.nights(run.program.time_zone)[-1].night if window.end > window.start else None
    if newest is None:
        return {"batches_sent": 0, "events_sent": 0}
    sent = load_slot(program_id=run.program.id, slot=LIVE_SLOT, night=newest, run_id=run.run_id,
                     state_dsn=run.state_dsn, hook=hook, uncertain_policy=run.program.uncertain_policy,
                     attempt=run.attempt, claim_size=claim_size(hook),
                     receipts=ReceiptSettings.of(run.program, hook.config), live_only=True)
    return {k: sent.get(k, 0) for k in ("batches_sent", "batches_rejected", "batches_uncertain", "events_sent",
                                        "throttled", "pacing_seconds")}


#: Upper bounds (seconds) of the latency histogram each live run records: mergeable over a day.
LATENCY_BUCKETS = (15, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600)


def empty_buckets() -> dict[str, int]:
    """The latency histogram with every bucket at 0 (``LATENCY_BUCKETS`` and the overflow, "inf")."""
    return {str(b): 0 for b in LATENCY_BUCKETS} | {"inf": 0}


def latency(event_times: list[str], sent_by: datetime) -> dict[str, Any]:
    """Seconds from each enqueued event's time to the end of the run's sends (by then MoEngage
    had answered 200 for every batch the run sent): a histogram, and this run's p50/p95/max."""
    ages = sorted(max(0.0, (sent_by - datetime.fromisoformat(t.replace("Z", "+00:00"))).total_seconds())
                  for t in event_times)
    buckets = empty_buckets()
    for age in ages:
        buckets[next((str(b) for b in LATENCY_BUCKETS if age <= b), "inf")] += 1
    pick = (lambda q: round(ages[min(len(ages) - 1, int(q * len(ages)))], 1)) if ages else (lambda q: None)
    return {"latency_buckets": buckets, "latency_p50": pick(0.5), "latency_p95": pick(0.95),
            "latency_max": round(ages[-1], 1) if ages else None}


def live_share(state_dsn: str, program_ids: list[str], budget_share: float) -> float:
    """The live lane's share of the workspace budget for this run: ``budget_share`` while a night
    of any of ``program_ids`` (the programs sending to this workspace) has batches staged or
    unsent, so the night is slowed by at most that; the whole budget when no night is sending,
    so a burst drains at MoEngage's full rate. A night that starts during a live run's sends
    shares with it until that run ends (a minute or so)."""
    from loyalty_moengage.db import connect

    with connect(state_dsn) as conn:
        busy = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM moengage_sync.batches WHERE program_id = ANY(%s) "
            "AND state IN ('staged', 'pending', 'claimed', 'sending') AND NOT starts_with(run_id, %s))",
            (program_ids, LIVE_RUN_PREFIX)).fetchone()[0]
    return budget_share if busy else 1.0


def live_lag_seconds(state_dsn: str, program_id: str) -> float:
    """Age of the oldest live event not sent yet: its batch's age when one waits, else how far the
    watermark trails the database's now (an open transaction holding it, or no live run for a
    while). A batch in doubt (its answer lost) is not waiting: the next live runs read its
    receipt (``_settle``); ``uncertain_live_batches`` in the run's stats counts those."""
    from loyalty_moengage.db import connect

    with connect(state_dsn) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM now() - least("
            " (SELECT min(created_at) FROM moengage_sync.batches WHERE program_id = %s AND starts_with(run_id, %s) "
            "  AND state IN ('staged', 'pending', 'claimed', 'sending')),"
            " (SELECT read_to FROM moengage_sync.live_watermark WHERE program_id = %s)))",
            (program_id, LIVE_RUN_PREFIX, program_id)).fetchone()
    return round(max(float(row[0] or 0.0), 0.0), 3)


def _record(run: LiveRun, window: LiveWindow, stats: dict[str, Any]) -> None:
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.report.stats import record_stats

    night = window.nights(run.program.time_zone)[-1].night if window.end > window.start else window.end.date()
    with connect(run.state_dsn) as conn:
        record_stats(conn, program_id=run.program.id, night=night, run_id=run.run_id, stage="live",
                     key=f"try-{run.attempt}", stats=stats)
        conn.commit()
