"""The run report: one row per run in moengage_sync.run_reports, printed in the task log.

Written even when the run failed (the report task runs on all_done), then retention runs:
payload bodies of sent batches are dropped at once (unless keep_sent_bodies), and the audit
(batches, event keys, quarantine, stats) older than audit_retention_days is deleted.

What a report counts: the run's own work (events it enqueued; batches its load slots sent,
whichever night they belong to, so the reports of concurrent runs add up to what MoEngage
received) and the night's state (its batches by state, its quarantine, whatever any run did).
The outcome is ``success`` only when every batch of the night is settled (sent, or refused and
explained in the quarantine); uncertain or unsent batches of any night are listed under "needs
attention" in every report of the program until an operator resolves them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Callable

import orjson


def record_stats(conn: Any, *, program_id: str, night: date, run_id: str, stage: str, key: str,
                 stats: dict[str, Any]) -> None:
    """Keep one task's measurements (a chunk, a load slot attempt, the plan) for the report."""
    conn.execute(
        "INSERT INTO moengage_sync.task_stats (program_id, night, run_id, stage, task_key, stats) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (program_id, run_id, stage, task_key) "
        "DO UPDATE SET stats = EXCLUDED.stats, recorded_at = now()",
        (program_id, night, run_id, stage, key, orjson.dumps(stats).decode()),
    )


def build(conn: Any, *, program_id: str, night: date, run_id: str, window_start: datetime,
          window_end: datetime, outcome: str, stage_seconds: dict[str, float],
          attributes_skipped: bool, notes: list[str]) -> dict[str, Any]:
    events_by_type: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for stage, stats in conn.execute(
        "SELECT stage, stats FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s",
        (program_id, run_id),
    ):
        if stage == "transform":
            events_by_type.update(stats["events_by_type"])
            for key in ("events_enqueued", "events_already_sent", "members_extracted", "members_enqueued",
                        "events_extracted"):
                totals[key] += stats.get(key, 0)
        elif stage == "load":
            for key in ("requests", "throttled", "retries", "bytes_sent"):
                totals[key] += int(stats.get(key, 0) or 0)
    for reason, n in conn.execute(
        "SELECT reason, count(*) FROM moengage_sync.quarantine WHERE program_id = %s AND night = %s GROUP BY reason",
        (program_id, night),
    ):
        quarantined[reason] = n
    batches = batch_states(conn, program_id, night)
    sent = conn.execute(
        "SELECT coalesce(sum(events) FILTER (WHERE night = %(night)s), 0), "
        "coalesce(sum(events) FILTER (WHERE night <> %(night)s), 0), coalesce(sum(users), 0) "
        "FROM moengage_sync.batches WHERE program_id = %(program)s AND sent_by_run = %(run)s",
        {"program": program_id, "night": night, "run": run_id}).fetchone()
    attention = needs_attention(conn, program_id, night)
    return {
        "program_id": program_id,
        "night": night.isoformat(),
        "run_id": run_id,
        "outcome": outcome,
        "window_start": window_start.isoformat(),
        "window_end": window_end.isoformat(),
        "events_by_type": dict(sorted(events_by_type.items())),
        "events_enqueued": totals["events_enqueued"],
        "events_already_sent": totals["events_already_sent"],
        "events_sent": int(sent[0]) + int(sent[1]),
        "events_sent_other_nights": int(sent[1]),
        "events_extracted": totals["events_extracted"],
        "uncertain_batches": batches.get("uncertain", 0),
        "members_extracted": totals["members_extracted"],
        "members_updated": int(sent[2]),
        "attributes_skipped": attributes_skipped,
        "quarantined_by_reason": dict(sorted(quarantined.items())),
        "batches_by_state": dict(sorted(batches.items())),
        "requests": totals["requests"],
        "throttled": totals["throttled"],
        "retries": totals["retries"],
        "bytes_sent": totals["bytes_sent"],
        "stage_seconds": {k: round(v, 3) for k, v in stage_seconds.items()},
        "needs_attention": attention,
        "notes": notes,
    }


@dataclass
class StageSummary:
    """What the run's tasks recorded in task_stats, folded for the report."""

    plan: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] = field(default_factory=dict)
    chunks_done: int = 0
    requeued_uncertain: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)   # task -> its last error, if it failed


def stage_summary(conn: Any, program_id: str, run_id: str) -> StageSummary:
    summary = StageSummary()
    seconds = summary.seconds
    for stage, key, stats in conn.execute(
        "SELECT stage, task_key, stats FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s "
        "ORDER BY recorded_at", (program_id, run_id),
    ):
        if stage == "error":
            summary.errors[key] = stats["message"]
        elif stage == "plan":
            summary.plan = stats
            seconds["plan"] = stats["seconds"]
        elif stage == "transform":
            summary.chunks_done += 1
            for k, v in stats["seconds"].items():
                seconds[k] = seconds.get(k, 0.0) + v
        elif stage == "load":
            # Slots run side by side: the stage lasts as long as the slowest.
            seconds["load"] = max(seconds.get("load", 0.0), stats.get("seconds", 0.0))
            summary.requeued_uncertain += stats.get("requeued_uncertain", 0)
        elif stage == "guard":
            summary.guard = stats
    return summary


def batch_states(conn: Any, program_id: str, night: date) -> dict[str, int]:
    return {state: n for state, n in conn.execute(
        "SELECT state, count(*) FROM moengage_sync.batches WHERE program_id = %s AND night = %s GROUP BY state",
        (program_id, night))}


UNSETTLED = ("staged", "pending", "claimed", "sending")
RETENTION_GRACE_DAYS = 2


def needs_attention(conn: Any, program_id: str, night: date) -> list[dict[str, Any]]:
    """Batches of any night that are uncertain, and unsent batches of earlier nights."""
    rows = conn.execute(
        "SELECT night, state, count(*), coalesce(sum(events), 0), coalesce(sum(users), 0) "
        "FROM moengage_sync.batches WHERE program_id = %s AND "
        "(state = 'uncertain' OR (state = ANY(%s) AND night < %s)) GROUP BY night, state ORDER BY night, state",
        (program_id, list(UNSETTLED), night)).fetchall()
    return [{"night": n.isoformat(), "state": st, "batches": b, "events": int(e), "users": int(u)}
            for n, st, b, e, u in rows]


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


def assess(*, program_id: str, night: date, plan_info: dict[str, Any], chunks_done: int,
           guard_info: dict[str, Any], night_batches: dict[str, int], attention: list[dict[str, Any]],
           uncertain_policy: str, errors: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """The run's outcome and the notes that explain it: success, held, failed, incomplete or
    uncertain (the first that applies, in that order of gravity after failed and held)."""
    notes: list[str] = [f"{task} failed: {message}" for task, message in (errors or {}).items()
                        if not (task == "guard" and guard_info.get("problems"))]
    outcome = "failed" if notes else "success"
    if plan_info.get("skip_reason"):
        notes.append(f"attribute refresh skipped: {plan_info['skip_reason']}")
    if not plan_info:
        outcome = "failed"
        if not notes:
            notes.append("the plan task did not finish")
    elif chunks_done < plan_info.get("chunks", 0):
        outcome = "failed"
        notes.append(f"{plan_info['chunks'] - chunks_done} chunk(s) did not finish transforming")
    if guard_info.get("problems") and not guard_info.get("overridden"):
        outcome = "held"
        notes.extend(f"anomaly guard: {p}" for p in guard_info["problems"])
    unsent = sum(night_batches.get(s, 0) for s in UNSETTLED)
    if unsent and outcome == "success":
        outcome = "incomplete"
    if unsent and outcome != "held":
        notes.append(f"{unsent} batch(es) of night {night} not sent yet: the next attempt of the load task, a "
                     "rerun of this night or the next night sends them")
    uncertain = night_batches.get("uncertain", 0)
    if uncertain and outcome == "success":
        outcome = "uncertain"
    for item in attention:
        if item["state"] == "uncertain":
            notes.append(
                f"needs attention: {item['batches']} batch(es) of night {item['night']} ({item['events']} events, "
                f"{item['users']} members) are uncertain (policy {uncertain_policy}): MoEngage may or may not "
                f"have them. Check MoEngage, then `python -m loyalty_moengage.cli resend --program {program_id} "
                f"--night {item['night']} --reason ...` if they are missing, or `python -m loyalty_moengage.cli "
                f"resolve --program {program_id} --night {item['night']} --reason ...` if they arrived")
        else:
            notes.append(f"needs attention: {item['batches']} batch(es) of night {item['night']} are still "
                         f"{item['state']}: rerun that night (clear its run) to send them")
    return outcome, notes


def write(conn: Any, report: dict[str, Any]) -> None:
    conn.execute(
        """
        INSERT INTO moengage_sync.run_reports (program_id, night, run_id, outcome, window_start, window_end,
            events_by_type, events_enqueued, events_already_sent, events_sent, events_extracted,
            uncertain_batches, members_extracted, members_updated, needs_attention, events_sent_other_nights,
            attributes_skipped, quarantined_by_reason, batches_by_state, requests, throttled, retries,
            bytes_sent, stage_seconds, notes)
        VALUES (%(program_id)s, %(night)s, %(run_id)s, %(outcome)s, %(window_start)s, %(window_end)s,
            %(events_by_type)s, %(events_enqueued)s, %(events_already_sent)s, %(events_sent)s,
            %(events_extracted)s, %(uncertain_batches)s, %(members_extracted)s,
            %(members_updated)s, %(needs_attention)s, %(events_sent_other_nights)s, %(attributes_skipped)s, %(quarantined_by_reason)s, %(batches_by_state)s,
            %(requests)s, %(throttled)s, %(retries)s, %(bytes_sent)s, %(stage_seconds)s, %(notes)s)
        ON CONFLICT (program_id, night, run_id) DO UPDATE SET
            outcome = EXCLUDED.outcome, events_by_type = EXCLUDED.events_by_type,
            events_enqueued = EXCLUDED.events_enqueued, events_already_sent = EXCLUDED.events_already_sent,
            events_sent = EXCLUDED.events_sent, events_extracted = EXCLUDED.events_extracted,
            uncertain_batches = EXCLUDED.uncertain_batches,
            members_extracted = EXCLUDED.members_extracted, members_updated = EXCLUDED.members_updated,
            needs_attention = EXCLUDED.needs_attention, events_sent_other_nights = EXCLUDED.events_sent_other_nights,
            attributes_skipped = EXCLUDED.attributes_skipped,
            quarantined_by_reason = EXCLUDED.quarantined_by_reason, batches_by_state = EXCLUDED.batches_by_state,
            requests = EXCLUDED.requests, throttled = EXCLUDED.throttled, retries = EXCLUDED.retries,
            bytes_sent = EXCLUDED.bytes_sent, stage_seconds = EXCLUDED.stage_seconds, notes = EXCLUDED.notes,
            reported_at = now()
        """,
        {**report,
         **{k: orjson.dumps(report[k]).decode() for k in
            ("events_by_type", "quarantined_by_reason", "batches_by_state", "stage_seconds", "needs_attention")}},
    )
    conn.commit()


def render(report: dict[str, Any]) -> str:
    """A plain-text block for the task log and the demo."""
    lines = [
        f"MoEngage sync report: program {report['program_id']}, night {report['night']} ({report['outcome']})",
        f"  run {report['run_id']}",
        f"  events enqueued {report['events_enqueued']:,}, sent {report['events_sent']:,}, "
        f"skipped as already sent {report['events_already_sent']:,}",
    ]
    if report.get("events_sent_other_nights"):
        lines.append(f"    (of the events sent, {report['events_sent_other_nights']:,} belong to earlier nights)")
    for name, n in report["events_by_type"].items():
        lines.append(f"    {name:<32} {n:>10,}")
    skipped = " (attribute refresh skipped)" if report["attributes_skipped"] else ""
    lines.append(f"  members extracted {report['members_extracted']:,}, updated {report['members_updated']:,}{skipped}")
    if report["quarantined_by_reason"]:
        lines.append("  quarantined rows by reason:")
        for reason, n in report["quarantined_by_reason"].items():
            lines.append(f"    {reason:<48} {n:>8,}")
    else:
        lines.append("  quarantined rows: none")
    lines.append("  batches by state: " + (", ".join(f"{k} {v}" for k, v in report["batches_by_state"].items()) or "none"))
    if report.get("uncertain_batches"):
        lines.append(f"  uncertain batches (outcome unknown, possible duplicates): {report['uncertain_batches']}")
    lines.append(f"  requests {report['requests']:,}, 429s {report['throttled']:,}, retries {report['retries']:,}, "
                 f"bytes sent {report['bytes_sent']:,}")
    lines.append("  seconds by stage: " + ", ".join(f"{k} {v:.2f}" for k, v in report["stage_seconds"].items()))
    for note in report["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def enforce_retention(conn: Any, *, program_id: str, night: date, retention_days: int, keep_sent_bodies: bool) -> dict[str, int]:
    counts = {}
    if not keep_sent_bodies:
        cur = conn.execute(
            "UPDATE moengage_sync.batches SET body = NULL WHERE program_id = %s AND state = 'sent' AND body IS NOT NULL",
            (program_id,),
        )
        counts["bodies_dropped"] = cur.rowcount
    # Two days of grace: a run of the oldest night the plan still accepts may be going on while
    # a newer night's report runs (the plan refuses anything older than retention_days).
    cutoff = date.fromordinal(night.toordinal() - retention_days - RETENTION_GRACE_DAYS)
    for table in ("event_keys", "quarantine", "task_stats", "attribute_chunks"):
        cur = conn.execute(f"DELETE FROM moengage_sync.{table} WHERE program_id = %s AND night < %s", (program_id, cutoff))
        counts[f"{table}_deleted"] = cur.rowcount
    cur = conn.execute(
        "DELETE FROM moengage_sync.batches WHERE program_id = %s AND night < %s AND state IN ('sent', 'rejected')",
        (program_id, cutoff),
    )
    counts["batches_deleted"] = cur.rowcount
    conn.commit()
    return counts
