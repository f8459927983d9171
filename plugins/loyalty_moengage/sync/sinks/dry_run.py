"""The dry run's sink: a night through the real pipeline into a throwaway area, nothing sendable.

Triggered with params ``{"dry_run": true}``, or ``loyalty-moengage plan`` (the same DAG run,
in-process). Every chunk runs the real extract, checks, gate and packing (``chunk.py``); this
sink keeps only its stats and a few sample payloads in ``moengage_sync.dry_runs``:

- nothing is written to ``batches`` (so there is nothing a load could send), ``event_keys`` (no
  event key is consumed), ``quarantine``, ``task_stats``, ``attribute_chunks`` or the attribute
  watermark: what a real run would decide there is only read;
- with ``verify_customers``, customers are checked with MoEngage exactly as a real run does (the
  Get User API only reads) and the answers are cached, so the real run spends none of that
  budget again;
- the anomaly guard and the load do nothing, and no run report is written.

The summary gives counts by event type, the late rows the lookback would send (``late_rows_found``,
the nights it re-read and their rows), quarantine by reason, three sample payloads per event
type, the requests (bodies of at most 100,000 bytes) and the minutes the night needs at the
workspace's budget: max(members / users_per_minute, events / events_per_minute).
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import date, timedelta
from typing import Any

import orjson

from loyalty_moengage.night import Window
from loyalty_moengage.sync.chunk.check import NOT_IN_MOENGAGE, Checked
from loyalty_moengage.sync.chunk.job import ChunkJob
from loyalty_moengage.sync.chunk.pack import Packed
from loyalty_moengage.sync.report.stats import chunk_stats

log = logging.getLogger(__name__)

SAMPLES_PER_TYPE = 3
KEEP_DAYS = 7   # dry-run rows older than this are deleted by the next dry run


class DryRunSink:
    defers_lookups = False   # its summary is what a real run would send: customers are looked up inline

    def __init__(self, state_dsn: str) -> None:
        self.state_dsn = state_dsn

    def start_night(self, conn: Any, *, program: Any, window: Window, run_id: str) -> dict[str, Any]:
        conn.execute("DELETE FROM moengage_sync.dry_runs WHERE program_id = %s AND (run_id = %s OR created_at < now() - %s)",
                     (program.id, run_id, timedelta(days=KEEP_DAYS)))
        conn.commit()
        log.info("DRY RUN night %s: nothing will be enqueued or sent", window.night)
        return {}

    def decide_refresh(self, conn: Any, *, program_id: str, night: date, run_id: str, latest_night: date,
                       force: bool) -> tuple[bool, str | None]:
        from loyalty_moengage.sync.chunk.plan import decide_attribute_refresh

        return decide_attribute_refresh(conn, program_id=program_id, night=night, run_id=run_id,
                                        latest_night=latest_night, force=force, apply=False)

    def record(self, *, program_id: str, night: date, run_id: str, stage: str, key: str,
               stats: dict[str, Any]) -> None:
        from loyalty_moengage.db import connect

        with connect(self.state_dsn) as conn:
            conn.execute(
                "INSERT INTO moengage_sync.dry_runs (program_id, night, run_id, task_key, stats) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (program_id, run_id, task_key) "
                "DO UPDATE SET stats = EXCLUDED.stats, created_at = now()",
                (program_id, night, run_id, key if stage in ("plan", "report") else f"{stage} {key}",
                 orjson.dumps(stats).decode()))
            conn.commit()

    def done_before(self, job: ChunkJob) -> dict[str, Any] | None:
        return None   # a retried dry chunk is simply redone: it wrote nothing that matters

    def write(self, job: ChunkJob, checked: Checked, packed: Packed, seconds: Counter[str]) -> dict[str, Any]:
        stats = {**chunk_stats(job, checked, packed, seconds), "samples": samples(packed)}
        self.record(program_id=job.program_id, night=job.window.night, run_id=job.run_id, stage="chunk",
                    key=job.label, stats=stats)
        log.info("DRY RUN %s: %s", job.label, {k: v for k, v in stats.items() if k != "samples"})
        return stats

    def release(self, *, program: Any, window: Window, run_id: str, override: bool) -> dict[str, Any]:
        return {"dry_run": True}   # nothing was enqueued: nothing to release or withdraw

    def deliver(self, *, program: Any, slot: int, window: Window, run_id: str, attempt: int,
                share: float) -> dict[str, Any]:
        return {"slot": slot, "dry_run": True, "batches_sent": 0, "batches_rejected": 0, "batches_uncertain": 0}

    def settle(self, *, program: Any, window: Window, run_id: str, attempt: int, share: float) -> dict[str, Any]:
        return {"dry_run": True, "settled_by_receipt": 0, "resent_after_absence": 0, "uncertain_left": 0}

    def report(self, *, program: Any, window: Window, run_id: str) -> tuple[dict[str, Any], str, str | None]:
        from loyalty_moengage.db import connect
        from loyalty_moengage.sync.report.render import dry_run_note, render_dry_run

        from loyalty_moengage.sync.report.stats import run_records, stage_summary

        with connect(self.state_dsn) as conn:
            rows = conn.execute("SELECT task_key, stats FROM moengage_sync.dry_runs WHERE program_id = %s "
                                "AND run_id = %s", (program.id, run_id)).fetchall()
            errors = stage_summary(run_records(conn, program.id, run_id)).errors   # fails_fast keeps them
        plan = next((s for k, s in rows if k == "plan"), {})
        chunks = [s for k, s in rows if k.startswith("chunk ")]
        upm, epm, source = budget(program.moengage_conn_id)
        summary = summarise(chunks, program_id=program.id, night=window.night, time_zone=program.time_zone,
                            plan=plan, users_per_minute=upm, events_per_minute=epm, budget_source=source)
        summary["notes"] = [f"{task} failed: {message}" for task, message in errors.items()]
        finished = bool(plan) and summary["chunks"] >= summary["chunks_planned"] and not errors
        summary["outcome"] = "success" if finished else "failed"
        if not finished:
            summary["notes"].append(f"dry run of night {window.night} did not finish: {summary['chunks']} of "
                                    f"{summary['chunks_planned']} chunk(s) transformed")
        self.record(program_id=program.id, night=window.night, run_id=run_id, stage="report", key="report",
                    stats=summary)
        return summary, render_dry_run(summary), dry_run_note(summary)


def samples(packed: Packed) -> dict[str, list[Any]]:
    """A few payloads of each event type and of the member updates, as MoEngage would get them."""
    out: dict[str, list[Any]] = {}
    events = packed.events
    if events is not None and events.num_rows:
        for name, element in zip(events.column("event_name").to_pylist(), events.column("element").to_pylist()):
            bucket = out.setdefault(name, [])
            if len(bucket) < SAMPLES_PER_TYPE:
                bucket.append(orjson.loads(element))
    if packed.user_batches:
        out["(member attributes)"] = orjson.loads(packed.user_batches[0].body)["elements"][:SAMPLES_PER_TYPE]
    return out


def summarise(chunks: list[dict[str, Any]], *, program_id: str, night: date, time_zone: str, plan: dict[str, Any],
              users_per_minute: float, events_per_minute: float, budget_source: str) -> dict[str, Any]:
    """The chunks folded as the report folds them (``stats.fold_chunks``), with what a real run adds."""
    from loyalty_moengage.sync.report.stats import fold_chunks

    folded = fold_chunks(chunks)
    counts = folded.counts
    quarantined = Counter(folded.quarantined)
    quarantined[NOT_IN_MOENGAGE] += counts["not_in_moengage"]
    quarantined = +quarantined
    merged: dict[str, list[Any]] = {}
    for c in chunks:
        for name, items in c.get("samples", {}).items():
            bucket = merged.setdefault(name, [])
            bucket.extend(items[:SAMPLES_PER_TYPE - len(bucket)])
    minutes = max(counts["members_enqueued"] / users_per_minute if users_per_minute else 0.0,
                  counts["events_enqueued"] / events_per_minute if events_per_minute else 0.0)
    return {
        "dry_run": True, "program_id": program_id, "night": night.isoformat(), "time_zone": time_zone,
        "chunks": folded.chunks, "chunks_planned": plan.get("chunks", folded.chunks),
        "events_by_type": dict(sorted(folded.events_by_type.items())), "events": counts["events_enqueued"],
        "events_extracted": counts["events_extracted"], "events_already_sent": counts["events_already_sent"],
        "late_rows_found": counts["late_rows_found"], "lookback_rows_read": counts["lookback_rows_read"],
        "lookback_nights": plan.get("lookback_nights", []),
        "members_extracted": counts["members_extracted"], "members": counts["members_enqueued"],
        "attributes_refresh": bool(plan.get("send_users")), "attributes_skip_reason": plan.get("skip_reason"),
        "attributes_taken": next((c["attributes_skip_reason"] for c in chunks if c.get("attributes_skip_reason")), None),
        "quarantined_by_reason": dict(sorted(quarantined.items())), "quarantined": sum(quarantined.values()),
        "requests": counts["batches"], "event_requests": counts["event_requests"],
        "user_requests": counts["user_requests"], "bytes": counts["bytes"],
        "customer_lookups": counts["customer_lookups"],
        "users_per_minute": users_per_minute, "events_per_minute": events_per_minute, "budget_source": budget_source,
        "minutes_at_budget": round(minutes, 2), "samples": dict(sorted(merged.items())),
    }


def budget(moengage_conn_id: str) -> tuple[float, float, str]:
    """The workspace's users/min and events/min from the MoEngage connection (defaults if unreadable)."""
    from loyalty_moengage.moengage.connection import DEFAULT_EVENTS_PER_MINUTE, DEFAULT_USERS_PER_MINUTE

    try:
        from airflow.sdk import BaseHook

        from loyalty_moengage.moengage.connection import config_from_connection

        cfg = config_from_connection(BaseHook.get_connection(moengage_conn_id), moengage_conn_id)
        return cfg.users_per_minute, cfg.events_per_minute, f"connection {moengage_conn_id!r}"
    except Exception as exc:  # a dry run still reports; it says which budget it used
        return (float(DEFAULT_USERS_PER_MINUTE), float(DEFAULT_EVENTS_PER_MINUTE),
                f"MoEngage defaults (connection {moengage_conn_id!r} unreadable: {type(exc).__name__})")
