"""The run's ledger of measurements: each task records what it did (``task_stats``), and the
guard, the report and the dry run fold the same records the same way."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Iterable

import orjson

from loyalty_moengage.sync.chunk.check import NOT_IN_MOENGAGE, Checked
from loyalty_moengage.sync.chunk.job import ChunkJob
from loyalty_moengage.sync.chunk.pack import Packed

#: The per-chunk counts that add up over a night (:func:`chunk_stats` writes them).
CHUNK_COUNTS = ("rows_extracted", "events_extracted", "events_enqueued", "events_already_sent", "not_in_moengage",
                "customer_lookups", "members_extracted", "members_enqueued", "batches", "event_requests",
                "user_requests", "bytes", "events_awaiting_presence", "late_rows_found", "lookback_rows_read")
#: What the deferred presence lookups add to the night's chunk counts (``lookups.py``).
PRESENCE_COUNTS = ("events_enqueued", "not_in_moengage", "customer_lookups", "batches", "event_requests", "bytes")
#: The per-slot counts that add up over a night's loads.
LOAD_COUNTS = ("requests", "throttled", "retries", "bytes_sent")


def chunk_stats(job: ChunkJob, checked: Checked, packed: Packed, seconds: Counter[str]) -> dict[str, Any]:
    """The chunk's measurements, as the guard, the report and the dry run's summary fold them.

    The night's counts are the night's own: the lookback's rows (``checked.lookback``) are in
    ``lookback_rows_read``, its new events in ``late_rows_found`` (and, being in this run's
    batches, in ``events_enqueued`` and ``events_by_type``), its already-enqueued ones nowhere."""
    late = late_rows(checked, packed)
    stats: dict[str, Any] = {
        "label": job.label,
        "rows_extracted": checked.rows_extracted,
        "events_by_type": dict(packed.events_by_type),
        "events_extracted": checked.night_event_count,
        "events_enqueued": sum(packed.events_by_type.values()),
        "events_already_sent": packed.events_already_sent - (checked.lookback.events - late),
        "late_rows_found": late,
        "lookback_rows_read": checked.lookback.rows_read,
        "not_in_moengage": packed.not_in_moengage,
        "customer_lookups": packed.customer_lookups,
        "events_awaiting_presence": packed.awaiting.num_rows if packed.awaiting is not None else 0,
        "members_extracted": checked.members_extracted,
        "members_enqueued": sum(b.users for b in packed.user_batches),
        # The live lane's attribute updates in the same request as their events (live.attributes).
        "attributes_beside": sum(b.users for b in packed.event_batches),
        "quarantined": dict(packed.rejects.reasons),
        "batches": len(packed.batches),
        "event_requests": len(packed.event_batches),
        "user_requests": len(packed.user_batches),
        "bytes": sum(len(b.body) for b in packed.batches),
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
    }
    if packed.attributes_skip_reason:
        stats["attributes_skip_reason"] = packed.attributes_skip_reason
    return stats


def late_rows(checked: Checked, packed: Packed) -> int:
    """The lookback's events no run had enqueued: the pack kept them, left them to their
    customer's check, or found their customer unknown to MoEngage (the rest it dropped as already
    enqueued). The same count whether the lookups are deferred (a real run) or not (a dry run)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = checked.lookback.event_ids
    if ids is None or not len(ids):
        return 0
    new = [t.column("event_id").combine_chunks() for t in (packed.events, packed.awaiting)
           if t is not None and t.num_rows]
    absent = [key for _, reason, key, _ in packed.rejects.rows if reason == NOT_IN_MOENGAGE and key is not None]
    new.append(pa.array(absent, pa.string()))
    found = pc.is_in(ids, value_set=pa.concat_arrays([a.cast(pa.string()) for a in new]))
    return int(pc.sum(found.cast(pa.int64())).as_py() or 0)


def record_stats(conn: Any, *, program_id: str, night: date, run_id: str, stage: str, key: str,
                 stats: dict[str, Any]) -> None:
    """Keep one task's measurements (a chunk, a load slot attempt, the plan) for the report."""
    conn.execute(
        "INSERT INTO moengage_sync.task_stats (program_id, night, run_id, stage, task_key, stats) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (program_id, run_id, stage, task_key) "
        "DO UPDATE SET stats = EXCLUDED.stats, recorded_at = now()",
        (program_id, night, run_id, stage, key, orjson.dumps(stats).decode()),
    )


def run_records(conn: Any, program_id: str, run_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(stage, task key, stats) of every task of the run, oldest first."""
    return conn.execute(
        "SELECT stage, task_key, stats FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s "
        "ORDER BY recorded_at", (program_id, run_id)).fetchall()


@dataclass
class ChunkTotals:
    chunks: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    events_by_type: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)   # rows the templates' data is to blame for

    def add(self, stats: dict[str, Any]) -> None:
        self.chunks += 1
        self.counts.update({k: int(stats.get(k, 0) or 0) for k in CHUNK_COUNTS})
        self.events_by_type.update(stats.get("events_by_type", {}))
        self.quarantined.update(stats.get("quarantined", {}))


def fold_chunks(records: Iterable[dict[str, Any]]) -> ChunkTotals:
    totals = ChunkTotals()
    for stats in records:
        totals.add(stats)
    return totals


@dataclass
class StageSummary:
    """What the run's tasks recorded, folded for the report."""

    plan: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] = field(default_factory=dict)
    chunks: ChunkTotals = field(default_factory=ChunkTotals)
    loads: Counter[str] = field(default_factory=Counter)
    requeued_uncertain: int = 0
    settle: dict[str, Any] = field(default_factory=dict)   # the settle task's counts and notes
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)   # task -> its last error, if it failed

    @property
    def chunks_done(self) -> int:
        return self.chunks.chunks


def stage_summary(records: Iterable[tuple[str, str, dict[str, Any]]], night: date | None = None) -> StageSummary:
    """The run's records summed; presence lookups only where they served ``night`` (a run's
    slots also check older nights' customers, counted in those nights' reports)."""
    summary = StageSummary()
    seconds = summary.seconds
    for stage, key, stats in records:
        if stage == "error":
            summary.errors[key] = stats["message"]
        elif stage == "plan":
            summary.plan = stats
            seconds["plan"] = stats["seconds"]
        elif stage == "transform":
            summary.chunks.add(stats)
            for k, v in stats["seconds"].items():
                seconds[k] = seconds.get(k, 0.0) + v
        elif stage == "load":
            # Slots run side by side: the stage lasts as long as the slowest.
            seconds["load"] = max(seconds.get("load", 0.0), stats.get("seconds", 0.0))
            summary.requeued_uncertain += stats.get("requeued_uncertain", 0)
            summary.settle["users_resent"] = summary.settle.get("users_resent", 0) + stats.get("users_resent", 0)
            summary.loads.update({k: int(stats.get(k, 0) or 0) for k in LOAD_COUNTS})
        elif stage == "guard":
            summary.guard = stats
        elif stage == "presence":
            if night is not None and stats.get("night", night.isoformat()) != night.isoformat():
                continue
            summary.chunks.counts.update({k: int(stats.get(k, 0) or 0) for k in PRESENCE_COUNTS})
            summary.chunks.events_by_type.update(stats.get("events_by_type", {}))
            seconds["presence"] = seconds.get("presence", 0.0) + stats.get("seconds", 0.0)
        elif stage == "settle":
            summary.settle = {**stats, "users_resent": summary.settle.get("users_resent", 0)
                              + stats.get("users_requeued", 0)}
            seconds["settle"] = seconds.get("settle", 0.0) + stats.get("seconds", 0.0)
    return summary
