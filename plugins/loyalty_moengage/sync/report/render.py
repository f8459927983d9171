"""The text people read: the run report in the task log and the demo, the dry run's summary,
and each DAG run's note (``run_note.py`` puts it where Airflow lists runs)."""

from __future__ import annotations

from typing import Any

import orjson

from loyalty_moengage.sync.outbox.states import UNSETTLED


def render(report: dict[str, Any]) -> str:
    """A plain-text block for the task log and the demo."""
    lines = [
        f"MoEngage sync report: program {report['program_id']}, night {report['night']} ({report['outcome']})",
        f"  run {report['run_id']}",
        f"  events enqueued {report['events_enqueued']:,}, sent {report['events_sent']:,}, "
        f"skipped as already sent {report['events_already_sent']:,}",
    ]
    if report.get("events_sent_live"):
        lines.append(f"    (of the night's events sent, {report['events_sent_live']:,} went out live during the day)")
    if report.get("events_sent_other_nights"):
        lines.append(f"    (this run's load also sent {report['events_sent_other_nights']:,} events of other nights)")
    lines += _by_type_lines(report["events_by_type"])
    lines.append(f"  late rows found {report.get('late_rows_found', 0):,} (events of earlier nights committed after "
                 "their run read them: enqueued with this night, counted above)")
    skipped = " (attribute refresh skipped)" if report["attributes_skipped"] else ""
    lines.append(f"  members extracted {report['members_extracted']:,}, updated {report['members_updated']:,}{skipped}")
    if report["quarantined_by_reason"]:
        lines.append("  quarantined rows by reason:")
        lines += _reason_lines(report["quarantined_by_reason"])
    else:
        lines.append("  quarantined rows: none")
    lines.append("  batches by state: " + (", ".join(f"{k} {v}" for k, v in report["batches_by_state"].items()) or "none"))
    if report.get("uncertain_batches"):
        lines.append(f"  uncertain events batches (answer lost, not settled by their receipts): "
                     f"{report['uncertain_batches']}")
    lines.append(f"  requests {report['requests']:,}, 429s {report['throttled']:,}, retries {report['retries']:,}, "
                 f"bytes sent {report['bytes_sent']:,}")
    lines.append("  seconds by stage: " + ", ".join(f"{k} {v:.2f}" for k, v in report["stage_seconds"].items()))
    for note in report["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _by_type_lines(by_type: dict[str, int]) -> list[str]:
    return [f"    {name:<32} {n:>10,}" for name, n in by_type.items()]


def _reason_lines(by_reason: dict[str, int]) -> list[str]:
    return [f"    {reason:<48} {n:>8,}" for reason, n in by_reason.items()]


def render_dry_run(summary: dict[str, Any]) -> str:
    """The dry run's summary: what a real run of the night would send."""
    s = summary
    lines = [f"MoEngage sync DRY RUN: program {s['program_id']}, night {s['night']} ({s['time_zone']}): nothing sent, "
             "nothing enqueued, no event key consumed",
             f"  events that would be sent {s['events']:,} (extracted {s['events_extracted']:,}, already sent by "
             f"earlier runs {s['events_already_sent']:,})"]
    lines += _by_type_lines(s["events_by_type"])
    lines.append(f"  late rows that would be sent {s.get('late_rows_found', 0):,} (of them; lookback re-read "
                 f"{', '.join(s.get('lookback_nights', [])) or 'no night'}: {s.get('lookback_rows_read', 0):,} rows)")
    refresh = "yes" if s["attributes_refresh"] else f"no ({s['attributes_skip_reason']})"
    if s["attributes_refresh"] and s.get("attributes_taken"):
        refresh += f", but {s['attributes_taken']}"
    lines.append(f"  members extracted {s['members_extracted']:,}, attribute updates {s['members']:,} (refresh: {refresh})")
    if s["quarantined_by_reason"]:
        lines.append(f"  would be quarantined, by reason ({s['quarantined']:,}):")
        lines += _reason_lines(s["quarantined_by_reason"])
    else:
        lines.append("  would be quarantined: none")
    lines.append(f"  requests {s['requests']:,} ({s['event_requests']:,} events, {s['user_requests']:,} members), "
                 f"{s['bytes']:,} bytes")
    if s["customer_lookups"]:
        lines.append(f"  Get User API lookups made (answers cached for the real run): {s['customer_lookups']:,}")
    lines.append(f"  minutes at the workspace budget: {s['minutes_at_budget']:.2f} "
                 f"({s['users_per_minute']:,.0f} users/min, {s['events_per_minute']:,.0f} events/min, {s['budget_source']})")
    for name, items in s["samples"].items():
        lines.append(f"  sample payloads, {name}:")
        lines += ["    " + orjson.dumps(item).decode() for item in items]
    lines += [f"  note: {note}" for note in s.get("notes", [])]
    return "\n".join(lines)


def note(report: dict[str, Any], time_zone: str) -> str:
    """"night 2026-11-22 (Asia/Kolkata): 592 events, 10,000 members, 0 quarantined, 0 uncertain: success"."""
    unsent = sum(n for state, n in report.get("batches_by_state", {}).items() if state in UNSETTLED)
    parts = [f"{report['events_sent']:,} events", f"{report['members_updated']:,} members",
             f"{sum(report.get('quarantined_by_reason', {}).values()):,} quarantined",
             f"{report.get('uncertain_batches', 0):,} uncertain"]
    if report.get("events_already_sent"):
        parts.append(f"{report['events_already_sent']:,} already sent")
    if unsent:
        parts.append(f"{unsent:,} batches unsent")
    return f"night {report['night']} ({time_zone}): " + ", ".join(parts) + f": {report['outcome']}"


def dry_run_note(summary: dict[str, Any]) -> str:
    s = summary
    text = (f"DRY RUN night {s['night']} ({s['time_zone']}): {s['events']:,} events, {s['members']:,} members, "
            f"{s['quarantined']:,} quarantined, {s['requests']:,} requests, {s['minutes_at_budget']:.1f} min at "
            "budget: nothing sent")
    if s["chunks"] < s["chunks_planned"]:
        text = f"{text} (only {s['chunks']} of {s['chunks_planned']} chunks finished)"
    return text
