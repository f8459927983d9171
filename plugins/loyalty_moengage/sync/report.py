"""The run report: one row per run in moengage_sync.run_reports, printed in the task log.

Written even when the run failed (the report task runs on all_done), then retention runs
(``retention.py``): payload bodies of sent batches are dropped at once (unless
keep_sent_bodies), and the audit older than audit_retention_days is deleted.

What a report counts: the run's own work (events it enqueued; batches its load slots sent,
whichever night they belong to, so the reports of concurrent runs add up to what MoEngage
received) and the night's state (its batches by state, its quarantine, whatever any run did).
The outcome (``outcome.py``) is ``success`` only when every batch of the night is settled;
uncertain or unsent batches of any night are listed under "needs attention" in every report of
the program until an operator resolves them.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from loyalty_moengage.night import Window
from loyalty_moengage.sync.stats import StageSummary

#: run_reports' columns a report writes, in order; the JSON ones are encoded.
COLUMNS = ("program_id", "night", "run_id", "outcome", "window_start", "window_end", "events_by_type",
           "events_enqueued", "events_already_sent", "events_sent", "events_extracted", "uncertain_batches",
           "members_extracted", "members_updated", "needs_attention", "events_sent_other_nights",
           "attributes_skipped", "quarantined_by_reason", "batches_by_state", "requests", "throttled", "retries",
           "bytes_sent", "stage_seconds", "notes")
JSON_COLUMNS = ("events_by_type", "quarantined_by_reason", "batches_by_state", "stage_seconds", "needs_attention")
KEY = ("program_id", "night", "run_id")

_UPSERT = (
    f"INSERT INTO moengage_sync.run_reports ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'%({c})s' for c in COLUMNS)}) "
    f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c not in KEY + ("window_start", "window_end"))
    + ", reported_at = now()"
)


def build(conn: Any, *, program_id: str, window: Window, run_id: str, outcome: str, stages: StageSummary,
          notes: list[str]) -> dict[str, Any]:
    from loyalty_moengage.sync.outcome import batch_states, needs_attention

    night = window.night
    quarantined = dict(conn.execute(
        "SELECT reason, count(*) FROM moengage_sync.quarantine WHERE program_id = %s AND night = %s GROUP BY reason",
        (program_id, night)).fetchall())
    batches = batch_states(conn, program_id, night)
    sent = conn.execute(
        "SELECT coalesce(sum(events) FILTER (WHERE night = %(night)s), 0), "
        "coalesce(sum(events) FILTER (WHERE night <> %(night)s), 0), coalesce(sum(users), 0) "
        "FROM moengage_sync.batches WHERE program_id = %(program)s AND sent_by_run = %(run)s",
        {"program": program_id, "night": night, "run": run_id}).fetchone()
    counts, loads = stages.chunks.counts, stages.loads
    return {
        "program_id": program_id, "night": night.isoformat(), "run_id": run_id, "outcome": outcome,
        "window_start": window.start.isoformat(), "window_end": window.end.isoformat(),
        "events_by_type": dict(sorted(stages.chunks.events_by_type.items())),
        "events_enqueued": counts["events_enqueued"], "events_already_sent": counts["events_already_sent"],
        "events_sent": int(sent[0]) + int(sent[1]), "events_sent_other_nights": int(sent[1]),
        "events_extracted": counts["events_extracted"], "uncertain_batches": batches.get("uncertain", 0),
        "members_extracted": counts["members_extracted"], "members_updated": int(sent[2]),
        "attributes_skipped": bool(stages.plan.get("skip_reason")),
        "quarantined_by_reason": dict(sorted(quarantined.items())),
        "batches_by_state": dict(sorted(batches.items())),
        "requests": loads["requests"], "throttled": loads["throttled"], "retries": loads["retries"],
        "bytes_sent": loads["bytes_sent"],
        "stage_seconds": {k: round(v, 3) for k, v in stages.seconds.items()},
        "needs_attention": needs_attention(conn, program_id, night),
        "notes": notes,
    }


def write(conn: Any, report: dict[str, Any]) -> None:
    conn.execute(_UPSERT, {**report, **{k: orjson.dumps(report[k]).decode() for k in JSON_COLUMNS}})
    conn.commit()


def report_night(conn: Any, *, program: Any, window: Window, run_id: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Judge the night once its in-flight batches settle, write the run's report, apply retention;
    returns the report and what retention deleted."""
    from loyalty_moengage.sync.delivery import recover_orphans, wait_for_in_flight
    from loyalty_moengage.sync.outcome import judge
    from loyalty_moengage.sync.retention import enforce_retention
    from loyalty_moengage.sync.stats import run_records, stage_summary

    started = time.perf_counter()
    in_flight = wait_for_in_flight(conn, program.id, window.night)
    # After the wait: a batch whose owner died mid-POST is counted uncertain, not unsent.
    recover_orphans(conn, program.id)
    stages = stage_summary(run_records(conn, program.id, run_id))
    outcome, notes = judge(conn, program=program, night=window.night, stages=stages)
    if in_flight:
        notes.append(f"{in_flight} batch(es) of this night were still being sent by another run when "
                     "this report was written")
    if stages.requeued_uncertain:
        notes.append(f"{stages.requeued_uncertain} uncertain batch(es) were resent by policy: possible duplicates")
    stages.seconds["report"] = time.perf_counter() - started
    body = build(conn, program_id=program.id, window=window, run_id=run_id, outcome=outcome, stages=stages,
                 notes=notes)
    write(conn, body)
    retention = enforce_retention(conn, program_id=program.id, night=window.night,
                                  retention_days=program.audit_retention_days,
                                  keep_sent_bodies=program.keep_sent_bodies)
    # The row is written before retention (so a failure there still leaves it); the report
    # stage's time, retention included, is filled in afterwards.
    body["stage_seconds"]["report"] = round(time.perf_counter() - started, 3)
    write(conn, body)
    return body, retention
