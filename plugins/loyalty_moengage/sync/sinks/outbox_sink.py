"""A real run's sink: the outbox MoEngage is sent from.

A chunk's batches (``staged``), event keys, quarantine rows and stats are one transaction, so
a retried chunk finds its work done or redoes all of it; the event keys' primary key is what
makes reruns and backfills send no event twice. Events a chunk leaves to another run's staged
work are relied on in the same transaction, so that run's failing guard keeps them
(``send/guard.py``). The guard makes a night's batches sendable, the load slots send them, the
report judges the night.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import date
from typing import Any

from loyalty_moengage.night import Window
from loyalty_moengage.sync.chunk.check import Checked
from loyalty_moengage.sync.chunk.job import ChunkJob
from loyalty_moengage.sync.chunk.pack import Packed
from loyalty_moengage.sync.chunk.sink import Collision
from loyalty_moengage.sync.report.stats import chunk_stats

log = logging.getLogger(__name__)

#: The settle task's own load slot (its resends), and how many settle-and-resend rounds it runs.
SETTLE_SLOT = -1
SETTLE_ROUNDS = 3


class OutboxSink:
    defers_lookups = True

    def __init__(self, state_dsn: str) -> None:
        self.state_dsn = state_dsn

    # -- the plan ------------------------------------------------------------------------------
    def start_night(self, conn: Any, *, program: Any, window: Window, run_id: str) -> dict[str, Any]:
        from loyalty_moengage.sync.outbox.delivery import recover_orphans

        # Only claims whose lease ran out: other runs of this program may be sending right now.
        orphans, _released = recover_orphans(conn, program.id)
        if orphans:
            log.warning("%d batch(es) were mid-POST when their load attempt stopped: marked uncertain", orphans)
        # A cleared run plans again; its earlier chunk stats are redone.
        conn.execute("DELETE FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s "
                     "AND stage IN ('transform', 'guard')", (program.id, run_id))
        conn.commit()
        return {"orphans_uncertain": orphans}

    def decide_refresh(self, conn: Any, *, program_id: str, night: date, run_id: str, latest_night: date,
                       force: bool) -> tuple[bool, str | None]:
        from loyalty_moengage.sync.chunk.plan import decide_attribute_refresh

        return decide_attribute_refresh(conn, program_id=program_id, night=night, run_id=run_id,
                                        latest_night=latest_night, force=force)

    def record(self, *, program_id: str, night: date, run_id: str, stage: str, key: str,
               stats: dict[str, Any]) -> None:
        from loyalty_moengage.db import connect
        from loyalty_moengage.sync.report.stats import record_stats

        with connect(self.state_dsn) as conn:
            record_stats(conn, program_id=program_id, night=night, run_id=run_id, stage=stage, key=key, stats=stats)

    # -- the chunks ----------------------------------------------------------------------------
    def done_before(self, job: ChunkJob) -> dict[str, Any] | None:
        """The stats of an attempt of this run's chunk that committed (a worker died after its
        commit, or a zombie attempt finished first)."""
        from loyalty_moengage.db import connect

        with connect(job.state_dsn) as conn:
            done = conn.execute(
                "SELECT stats FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s "
                "AND stage = 'transform' AND task_key = %s", (job.program_id, job.run_id, job.label)).fetchone()
        if done:
            log.info("%s already enqueued by an earlier attempt of this run", job.label)
        return done[0] if done else None

    def write(self, job: ChunkJob, checked: Checked, packed: Packed, seconds: Counter[str]) -> dict[str, Any]:
        import psycopg

        from loyalty_moengage.db import connect

        try:
            with connect(job.state_dsn) as conn:
                return self._enqueue(conn, job, checked, packed, seconds)
        except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected) as exc:
            raise Collision(f"{job.label}: {type(exc).__name__}") from exc

    def _enqueue(self, conn: Any, job: ChunkJob, checked: Checked, packed: Packed,
                 seconds: Counter[str]) -> dict[str, Any]:
        from loyalty_moengage.sync.outbox import enqueue
        from loyalty_moengage.sync.report.stats import record_stats

        started = time.perf_counter()
        night = job.window.night
        if packed.user_batches:
            why_not = enqueue.claim_attribute_chunk(conn, program_id=job.program_id, night=night, lo=job.lo,
                                                    hi=job.hi, run_id=job.run_id, chunk_label=job.label)
            if why_not:
                log.info("attribute refresh of %s not enqueued: %s", job.label, why_not)
                packed = packed.without_users(why_not)
            elif checked.users is not None:
                from loyalty_moengage.sync.outbox.owed import owe_refreshed

                # Members the live lane updated after this night's end get this older snapshot after it.
                owe_refreshed(conn, job.program_id, night, checked.users.column("customer_id").to_pylist())
        batches = packed.batches
        batch_ids = enqueue.allocate_batch_ids(conn, len(batches))
        enqueue.insert_batches(conn, program_id=job.program_id, night=night, run_id=job.run_id,
                               chunk_label=job.label, batch_ids=batch_ids, batches=batches)
        if packed.keys is not None:
            enqueue.insert_event_keys(conn, enqueue.event_key_rows(packed.keys, batch_ids, program_id=job.program_id,
                                                                   night=night))
        if packed.awaiting is not None and packed.awaiting.num_rows:
            enqueue.insert_awaiting(conn, program_id=job.program_id, night=night, run_id=job.run_id,
                                    events=packed.awaiting)
        enqueue.insert_quarantine(conn, program_id=job.program_id, night=night, run_id=job.run_id,
                                  rows=packed.rejects.rows)
        for earlier, rejects in checked.lookback.rejects.items():
            # The lookback's bad rows are kept by their own night, once: what that night's run
            # recorded is not recorded again; only a late bad row is new (never counted tonight).
            enqueue.insert_quarantine(conn, program_id=job.program_id, night=earlier, run_id=job.run_id,
                                      rows=rejects.rows)
        self._also_enqueue(conn, job, packed)
        # Last, so its share locks are held briefly and taken after any wait on another run's keys.
        if enqueue.rely_on(conn, program_id=job.program_id, run_id=job.run_id, reliance=packed.reliance):
            raise Collision(f"{job.label}: another run withdrew events this chunk had left to it")
        seconds["outbox"] += time.perf_counter() - started
        stats = chunk_stats(job, checked, packed, seconds)
        record_stats(conn, program_id=job.program_id, night=night, run_id=job.run_id, stage="transform",
                     key=job.label, stats=stats)
        conn.commit()
        return stats

    def _also_enqueue(self, conn: Any, job: ChunkJob, packed: Packed) -> None:
        """What a sink of this kind also writes in the chunk's transaction (nothing here)."""

    # -- after the chunks ----------------------------------------------------------------------
    def release(self, *, program: Any, window: Window, run_id: str, override: bool) -> dict[str, Any]:
        from loyalty_moengage.sync.send.guard import guard_night

        return guard_night(self.state_dsn, program=program, night=window.night, run_id=run_id, override=override)

    def deliver(self, *, program: Any, slot: int, window: Window, run_id: str, attempt: int,
                share: float) -> dict[str, Any]:
        from loyalty_moengage.moengage.hook import MoEngageHook
        from loyalty_moengage.sync.send.load import claim_size, load_slot
        from loyalty_moengage.sync.send.lookups import group_customers
        from loyalty_moengage.sync.outbox.receipts import ReceiptSettings

        # Never retry_uncertain: the outbox records a lost answer first (load.py), so no resend
        # goes unrecorded.
        hook = MoEngageHook(moengage_conn_id=program.moengage_conn_id, share=share)
        # Its own hook (a session per thread): the slot's lookups run beside its sends (lookups.py).
        lookups = MoEngageHook(moengage_conn_id=program.moengage_conn_id, share=share)
        lookup = lookups.existing_customers if program.verify_customers else None
        stats = load_slot(program_id=program.id, slot=slot, night=window.night, run_id=run_id,
                          state_dsn=self.state_dsn, hook=hook, uncertain_policy=program.uncertain_policy,
                          attempt=attempt, claim_size=claim_size(hook), receipts=ReceiptSettings.of(program, hook.config),
                          lookup=lookup, lookup_group=group_customers(lookups.config.lookups_per_minute, share))
        return {k: stats[k] for k in ("slot", "batches_sent", "batches_rejected", "batches_uncertain")}

    def settle(self, *, program: Any, window: Window, run_id: str, attempt: int, share: float) -> dict[str, Any]:
        from loyalty_moengage.db import connect
        from loyalty_moengage.moengage.hook import MoEngageHook
        from loyalty_moengage.sync.send.load import load_slot
        from loyalty_moengage.sync.outbox.receipts import ReceiptSettings
        from loyalty_moengage.sync.send.settle import Settled, settle
        from loyalty_moengage.sync.report.stats import record_stats

        started = time.perf_counter()
        hook = MoEngageHook(moengage_conn_id=program.moengage_conn_id, share=share)
        receipts = ReceiptSettings.of(program, hook.config)
        total = Settled()
        # A resend can lose its answer too: a few rounds, each settled by its own receipts.
        for round_ in range(SETTLE_ROUNDS):
            with connect(self.state_dsn) as conn:
                settled = settle(conn, program_id=program.id, hook=hook, settings=receipts, up_to_night=window.night,
                                 run_id=run_id)
            total.add(settled)
            if not (settled.absent or settled.users_requeued):
                break
            load_slot(program_id=program.id, slot=SETTLE_SLOT, night=window.night, run_id=run_id,
                      state_dsn=self.state_dsn, hook=hook, uncertain_policy=program.uncertain_policy,
                      attempt=attempt * SETTLE_ROUNDS + round_, claim_size=1, receipts=receipts)
        stats = {**total.as_stats(), "seconds": round(time.perf_counter() - started, 4)}
        with connect(self.state_dsn) as conn:
            record_stats(conn, program_id=program.id, night=window.night, run_id=run_id, stage="settle",
                         key=f"settle-try-{attempt}", stats=stats)
            conn.commit()
        log.info("settle: %s", stats)
        return {k: v for k, v in stats.items() if k != "notes"}

    def report(self, *, program: Any, window: Window, run_id: str) -> tuple[dict[str, Any], str, str | None]:
        from loyalty_moengage.db import connect
        from loyalty_moengage.sync.report.render import note, render
        from loyalty_moengage.sync.report.report import report_night

        with connect(self.state_dsn) as conn:
            body, retention = report_night(conn, program=program, window=window, run_id=run_id)
        log.info("retention: %s", retention)
        return body, render(body), note(body, program.time_zone)


class LiveOutboxSink(OutboxSink):
    """The live lane's sink (sync/live/): the same outbox, transaction and event keys. Events of
    customers the presence cache does not confirm are not enqueued at all (no key, no awaiting
    row): the live run looks those customers up after the write and records only the ones
    MoEngage has, so a later read (its own second pass, the next run's lookback, or the night)
    sends their events. An absence found minutes after a member enrolled is never cached: the
    night, hours later, asks again."""

    def __init__(self, state_dsn: str, *, attributes: bool = False, settle_seconds: float = 900.0) -> None:
        super().__init__(state_dsn)
        self.attributes = attributes         # live.attributes: members' attributes beside their events
        self.settle_seconds = settle_seconds  # how long after its 200 a refresh may still be applied
        self.attribute_errors: list[str] = []  # members' rows the template could not read (their events went alone)
        self.event_times: list[str] = []     # current_time of each event enqueued, for the latency figures
        self.unconfirmed: set[str] = set()   # customers whose events were left for a later read
        self._beside: set[str] = set()       # customers whose attributes the chunk being written carries
        self._unread: set[str] = set()       # customers whose attributes it could not read

    def write(self, job: ChunkJob, checked: Checked, packed: Packed, seconds: Counter[str]) -> dict[str, Any]:
        import dataclasses

        import pyarrow.compute as pc

        if packed.awaiting is not None and packed.awaiting.num_rows:
            self.unconfirmed |= set(packed.awaiting.column("customer_id").to_pylist())
            packed = dataclasses.replace(packed, awaiting=None)
        self._beside, self._unread = set(), set()
        if self.attributes and packed.keys is not None and packed.keys.num_rows:
            packed = self._with_attributes(job, packed)
        stats = super().write(job, checked, packed, seconds)
        if packed.events is not None and packed.events.num_rows:
            found = pc.extract_regex(packed.events.column("element"), r'"current_time":"(?P<t>[^"]+)"')
            self.event_times += [t for t in pc.struct_field(found, [0]).to_pylist() if t]
        return stats

    def _with_attributes(self, job: ChunkJob, packed: Packed) -> Packed:
        """The touched members' attributes as of the read's cut, packed beside their events. Rows
        the template cannot compute (bad data) do not hold the events back: they go alone, and
        the members are owed their update (paid when the data is mended)."""
        import pyarrow.compute as pc

        from loyalty_moengage.sync.chunk.attributes import attributes_sparing_bad_rows
        from loyalty_moengage.sync.chunk.pack import with_attributes

        sent = pc.is_in(packed.events.column("event_id"), value_set=packed.keys.column("event_id"))
        customers = set(packed.events.filter(sent).column("customer_id").to_pylist())
        spared = attributes_sparing_bad_rows(job.loyalty_dsn, job.window, job.program_id, customers)
        members = spared.checked
        if spared.failed:
            log.warning("%s: %d member(s)' attributes not read, their events go without them: %s", job.label,
                        len(spared.failed), spared.error)
            self.attribute_errors.append(str(spared.error))
            self._unread = set(spared.failed)
        if members.users is not None:
            self._beside = set(members.users.column("customer_id").to_pylist())
        return with_attributes(packed, members)

    def _also_enqueue(self, conn: Any, job: ChunkJob, packed: Packed) -> None:
        """The live attribute writes, recorded so a later night's refresh chunks owe them; owed now
        if a refresh may still land after them (outbox/owed.py)."""
        from loyalty_moengage.sync.outbox import owed

        if not self.attributes:
            return
        owed.hold_refresh_decision(conn, job.program_id)
        owed.owe(conn, job.program_id, self._unread, not_before_seconds=owed.BAD_ROW_RETRY_SECONDS)
        if self._beside:
            owed.written(conn, job.program_id, self._beside, job.window.night)
            if owed.in_flight(conn, job.program_id, self.settle_seconds):
                owed.owe(conn, job.program_id, self._beside)
