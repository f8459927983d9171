"""The run report: one row per run in moengage_sync.run_reports, printed in the task log.

Written even when the run failed (the report task runs on all_done), then retention runs
(``retention.py``): payload bodies of sent batches are dropped at once (unless
keep_sent_bodies), and the audit older than audit_retention_days is deleted.

What a report counts: the night, whichever run sent it (events sent and members updated are
the night's sent batches, so a backfill delivered by a later run's load slots still counts for
its own night), the run's own transform work (events it enqueued, skipped as already sent),
and what the run's slots sent of *other* nights (``events_sent_other_nights``, with a note).
Late rows (``late_rows_found``, with a note) are events of the earlier nights the run re-read
(``plan.lookback_nights``) that no run had enqueued: they go out in this night's batches, so
they are in its events enqueued and sent, never in its events extracted.
When a run sends or settles an older night's batches, that night's latest report is brought
up to date too (:func:`refresh_nights`). The outcome (``outcome.py``) is ``success`` only when
every batch of the night is settled; batches only a person can settle are listed under "needs
attention" in every report of the program until they are.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from loyalty_moengage.night import Window
from loyalty_moengage.sync.report.stats import StageSummary

#: run_reports' columns a report writes, in order; the JSON ones are encoded.
COLUMNS = ("program_id", "night", "run_id", "outcome", "window_start", "window_end", "events_by_type",
           "events_enqueued", "events_already_sent", "events_sent", "events_extracted", "uncertain_batches",
           "members_extracted", "members_enqueued", "members_updated", "needs_attention", "events_sent_other_nights",
           "attributes_skipped", "quarantined_by_reason", "batches_by_state", "requests", "throttled", "retries",
           "bytes_sent", "stage_seconds", "notes", "late_rows_found", "events_sent_live")
JSON_COLUMNS = ("events_by_type", "quarantined_by_reason", "batches_by_state", "stage_seconds", "needs_attention")
KEY = ("program_id", "night", "run_id")

def stored(conn: Any, program_id: str, run_id: str) -> dict[str, Any] | None:
    """The run's report as written (JSON types: the night as ISO text), or None when it wrote none."""
    row = conn.execute("SELECT to_jsonb(r) FROM moengage_sync.run_reports r WHERE program_id = %s AND run_id = %s "
                       "ORDER BY reported_at DESC LIMIT 1", (program_id, run_id)).fetchone()
    return None if row is None else row[0]


_UPSERT = (
    f"INSERT INTO moengage_sync.run_reports ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'%({c})s' for c in COLUMNS)}) "
    f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c not in KEY + ("window_start", "window_end"))
    + ", reported_at = now()"
)


def build(conn: Any, *, program_id: str, window: Window, run_id: str, outcome: str, stages: StageSummary,
          notes: list[str]) -> dict[str, Any]:
    from loyalty_moengage.sync.report.outcome import batch_states, needs_attention

    night = window.night
    quarantined = dict(conn.execute(
        "SELECT reason, count(*) FROM moengage_sync.quarantine WHERE program_id = %s AND night = %s GROUP BY reason",
        (program_id, night)).fetchall())
    batches = batch_states(conn, program_id, night)
    sent_events, sent_users = night_sent(conn, program_id, night)
    sent_live = night_sent_live(conn, program_id, night)
    other_events, other_nights = conn.execute(
        "SELECT coalesce(sum(events), 0), count(DISTINCT night) FILTER (WHERE events > 0) FROM moengage_sync.batches "
        "WHERE program_id = %s AND sent_by_run = %s AND night <> %s AND state = 'sent'",
        (program_id, run_id, night)).fetchone()
    if other_events:
        notes = [*notes, f"this run also sent {int(other_events):,} events of {other_nights} other night(s)"]
    counts, loads = stages.chunks.counts, stages.loads
    if counts["late_rows_found"]:
        notes = [*notes, late_rows_note(counts["late_rows_found"], stages.plan.get("lookback_nights", []))]
    return {
        "program_id": program_id, "night": night.isoformat(), "run_id": run_id, "outcome": outcome,
        "window_start": window.start.isoformat(), "window_end": window.end.isoformat(),
        "events_by_type": dict(sorted(stages.chunks.events_by_type.items())),
        "events_enqueued": counts["events_enqueued"], "events_already_sent": counts["events_already_sent"],
        "events_sent": sent_events, "events_sent_other_nights": int(other_events),
        "events_extracted": counts["events_extracted"], "uncertain_batches": batches.get("uncertain", 0),
        "late_rows_found": counts["late_rows_found"], "events_sent_live": sent_live,
        "members_extracted": counts["members_extracted"], "members_enqueued": counts["members_enqueued"],
        "members_updated": sent_users,
        "attributes_skipped": bool(stages.plan.get("skip_reason")),
        "quarantined_by_reason": dict(sorted(quarantined.items())),
        "batches_by_state": dict(sorted(batches.items())),
        "requests": loads["requests"], "throttled": loads["throttled"], "retries": loads["retries"],
        "customer_lookups": counts["customer_lookups"],
        "bytes_sent": loads["bytes_sent"],
        "stage_seconds": {k: round(v, 3) for k, v in stages.seconds.items()},
        "needs_attention": needs_attention(conn, program_id, night),
        "notes": notes,
    }


def late_rows_note(late: int, nights: list[str]) -> str:
    """Why a night's report counts events of earlier nights (``late_rows_found``)."""
    return (f"{late:,} late row(s): events recorded in the window of night(s) {', '.join(nights) or '?'} but "
            "committed after that night's run read it, found by this run's lookback and enqueued with this night")


def night_sent(conn: Any, program_id: str, night: Any) -> tuple[int, int]:
    """(events, member updates) of the night that MoEngage has, whichever run sent them; the
    updates are the night's refresh (the live lane's beside its events are counted by its runs)."""
    from loyalty_moengage.sync.outbox.states import LIVE_RUN_PREFIX

    events, users = conn.execute(
        "SELECT coalesce(sum(events), 0), coalesce(sum(users) FILTER (WHERE NOT starts_with(run_id, %s)), 0) "
        "FROM moengage_sync.batches WHERE program_id = %s AND night = %s AND state = 'sent'",
        (LIVE_RUN_PREFIX, program_id, night)).fetchone()
    return int(events), int(users)


def night_sent_live(conn: Any, program_id: str, night: Any) -> int:
    """Events of the night the live lane sent during the day (sync/live/): in ``events_sent`` too."""
    from loyalty_moengage.sync.outbox.states import LIVE_RUN_PREFIX

    return int(conn.execute(
        "SELECT coalesce(sum(events), 0) FROM moengage_sync.batches WHERE program_id = %s AND night = %s "
        "AND state = 'sent' AND starts_with(run_id, %s)", (program_id, night, LIVE_RUN_PREFIX)).fetchone()[0])


def refresh_nights(conn: Any, *, program_id: str, run_id: str, night: Any) -> list[str]:
    """Bring the latest report of each other night whose batches this run sent or settled up to
    date: its counts, its batches, and ``success`` once nothing of it is left unsettled."""
    from loyalty_moengage.sync.report.outcome import batch_states
    from loyalty_moengage.sync.outbox.states import UNSETTLED

    nights = [r[0] for r in conn.execute(
        "SELECT DISTINCT night FROM moengage_sync.batches WHERE program_id = %s AND sent_by_run = %s AND night <> %s",
        (program_id, run_id, night))]
    refreshed = []
    for other in nights:
        latest = conn.execute(
            "SELECT run_id, outcome FROM moengage_sync.run_reports WHERE program_id = %s AND night = %s "
            "ORDER BY reported_at DESC LIMIT 1", (program_id, other)).fetchone()
        if latest is None:
            continue
        states = batch_states(conn, program_id, other)
        events, users = night_sent(conn, program_id, other)
        settled = not any(states.get(s, 0) for s in (*UNSETTLED, "uncertain"))
        outcome = "success" if settled and latest[1] in ("uncertain", "incomplete") else latest[1]
        note = [f"brought up to date by run {run_id}: " + ("every batch is settled" if settled else "still unsettled")]
        conn.execute(
            "UPDATE moengage_sync.run_reports SET events_sent = %s, members_updated = %s, batches_by_state = %s, "
            "uncertain_batches = %s, outcome = %s, notes = notes || %s::text[], events_sent_live = %s "
            "WHERE program_id = %s AND night = %s AND run_id = %s",
            (events, users, orjson.dumps(dict(sorted(states.items()))).decode(), states.get("uncertain", 0),
             outcome, note, night_sent_live(conn, program_id, other), program_id, other, latest[0]))
        refreshed.append(other.isoformat())
    conn.commit()
    return refreshed


def write(conn: Any, report: dict[str, Any]) -> None:
    conn.execute(_UPSERT, {**report, **{k: orjson.dumps(report[k]).decode() for k in JSON_COLUMNS}})
    conn.commit()


def report_night(conn: Any, *, program: Any, window: Window, run_id: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Judge the night once its in-flight batches settle, write the run's report, apply retention;
    returns the report and what retention deleted."""
    from loyalty_moengage.sync.outbox.delivery import recover_orphans, wait_for_in_flight
    from loyalty_moengage.sync.report.outcome import judge
    from loyalty_moengage.sync.report.retention import enforce_retention
    from loyalty_moengage.sync.report.stats import run_records, stage_summary

    started = time.perf_counter()
    in_flight = wait_for_in_flight(conn, program.id, window.night)
    # After the wait: a batch whose owner died mid-POST is counted uncertain, not unsent.
    recover_orphans(conn, program.id)
    stages = stage_summary(run_records(conn, program.id, run_id), window.night)
    outcome, notes = judge(conn, program=program, night=window.night, stages=stages)
    if in_flight:
        notes.append(f"{in_flight} batch(es) of this night were still being sent by another run when "
                     "this report was written")
    awaiting = conn.execute("SELECT count(*) FROM moengage_sync.awaiting_presence WHERE program_id = %s "
                            "AND night = %s", (program.id, window.night)).fetchone()[0]
    if awaiting:
        outcome = "incomplete" if outcome == "success" else outcome
        notes.append(f"{awaiting} event(s) of this night still await their customer's Get User API check (the "
                     "load slots did not finish checking): the next run checks and sends them")
    if stages.requeued_uncertain:
        notes.append(f"{stages.requeued_uncertain} uncertain events batch(es) were resent by policy resend: "
                     "possible duplicates")
    notes.extend(_settle_notes(stages))
    stages.seconds["report"] = time.perf_counter() - started
    body = build(conn, program_id=program.id, window=window, run_id=run_id, outcome=outcome, stages=stages,
                 notes=notes)
    write(conn, body)
    refresh_nights(conn, program_id=program.id, run_id=run_id, night=window.night)
    retention = enforce_retention(conn, program_id=program.id, night=window.night,
                                  retention_days=program.audit_retention_days,
                                  keep_sent_bodies=program.keep_sent_bodies)
    # The row is written before retention (so a failure there still leaves it); the report
    # stage's time, retention included, is filled in afterwards.
    body["stage_seconds"]["report"] = round(time.perf_counter() - started, 3)
    write(conn, body)
    return body, retention


def _settle_notes(stages: StageSummary) -> list[str]:
    s = stages.settle
    notes = []
    if s.get("users_resent"):
        notes.append(f"{s['users_resent']} users batch(es) whose answer was lost were sent again (attributes are "
                     "last-write-wins: nothing duplicated)")
    if s.get("settled_by_receipt"):
        notes.append(f"{s['settled_by_receipt']} events batch(es) whose answer was lost were settled by their "
                     "receipts in MoEngage: sent")
    if s.get("resent_after_absence"):
        notes.append(f"{s['resent_after_absence']} events batch(es) whose answer was lost were sent again: their "
                     "receipts were absent after the wait, so MoEngage had not applied them")
    return notes + list(s.get("notes", []))
