"""A dry run: a night's extract and transform into a throwaway area, nothing sendable.

Triggered with params ``{"dry_run": true}`` (the DAG's tasks hand over to the functions here)
or by ``python -m loyalty_moengage.cli plan``. Each chunk runs the real extract, row checks,
payload building and packing (``sync/transform.py``), then keeps only counts and a few sample
payloads in ``moengage_sync.dry_runs``:

- nothing is written to ``batches`` (so there is nothing a load could send), ``event_keys`` (no
  event key is consumed: the real run enqueues every event), ``quarantine``, ``task_stats``,
  ``attribute_chunks``, the attribute watermark or the presence cache;
- events already enqueued by earlier runs are counted as "already sent", read-only;
- with ``verify_customers``, customers are judged from the presence cache only (no Get User API
  call): cached absences are counted under the quarantine reason, uncached ones are counted
  as lookups the real run would make (and assumed present);
- the anomaly guard and the load are skipped, and no run report is written.

The report gives counts by event type, quarantine by reason, three sample payloads per event
type, the number of requests (bodies of at most 100,000 bytes) and the minutes the night needs
at the workspace's budget: max(members / users_per_minute, events / events_per_minute).
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import date, timedelta
from typing import Any

import orjson

log = logging.getLogger(__name__)

SAMPLES_PER_TYPE = 3
KEEP_DAYS = 7   # dry-run rows older than this are deleted by the next dry run

DDL = """
CREATE TABLE IF NOT EXISTS moengage_sync.dry_runs (
    program_id  text NOT NULL,
    night       date NOT NULL,
    run_id      text NOT NULL,
    task_key    text NOT NULL,
    stats       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program_id, run_id, task_key)
)
"""


def ensure_table(conn: Any) -> None:
    conn.execute("CREATE SCHEMA IF NOT EXISTS moengage_sync")
    conn.execute(DDL)
    conn.commit()


def is_dry_run(context: dict[str, Any]) -> bool:
    params = context.get("params") or {}
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    return bool(params.get("dry_run") or conf.get("dry_run"))


def _store(state_dsn: str, *, program_id: str, night: date, run_id: str, key: str, stats: dict[str, Any]) -> None:
    from loyalty_moengage.db import connect

    with connect(state_dsn) as conn:
        ensure_table(conn)
        conn.execute(
            "INSERT INTO moengage_sync.dry_runs (program_id, night, run_id, task_key, stats) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (program_id, run_id, task_key) DO UPDATE SET stats = EXCLUDED.stats, created_at = now()",
            (program_id, night, run_id, key, orjson.dumps(stats).decode()))
        conn.commit()


# ---- the night's pieces -----------------------------------------------------------------------

def would_refresh_attributes(state_conn: Any, *, program_id: str, night: date, latest_night: date) -> tuple[bool, str | None]:
    """``plan.decide_attribute_refresh`` without moving anything: would this night refresh attributes?"""
    row = state_conn.execute("SELECT night FROM moengage_sync.attribute_watermark WHERE program_id = %s",
                             (program_id,)).fetchone()
    if row and row[0] > night:
        return False, f"a newer night ({row[0]}) already sent the attribute refresh"
    if night < latest_night:
        return False, f"night {night} is older than the newest complete night ({latest_night}), which refreshes attributes"
    return True, None


def _cached_presence(state_conn: Any, program_id: str, customer_ids: list[str]) -> tuple[set[str], set[str]]:
    """(known present, known absent and fresh) from the presence cache; read only."""
    from loyalty_moengage.moengage.presence import ABSENT_RECHECK

    if not customer_ids:
        return set(), set()
    rows = state_conn.execute(
        "SELECT customer_id, present, checked_at > now() - %s::interval FROM moengage_sync.customer_presence "
        "WHERE program_id = %s AND customer_id = ANY(%s)", (ABSENT_RECHECK, program_id, customer_ids)).fetchall()
    return {c for c, p, _ in rows if p}, {c for c, p, fresh in rows if not p and fresh}


def dry_chunk(*, program_id: str, window: Any, lo: int, hi: int, label: str, send_users: bool,
              loyalty_dsn: str, state_dsn: str, verify_customers: bool) -> dict[str, Any]:
    """One member-id range through extract, checks, payloads and packing; nothing enqueued."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from loyalty_moengage.db import connect
    from loyalty_moengage.sync import outbox, transform as tr

    extracts = tr._extract(loyalty_dsn, window.params(program_id, lo, hi))
    checked = tr._check(extracts, window)
    rejects = checked.rejects.copy()
    events = checked.events
    already = to_look_up = absent = 0
    with connect(state_dsn) as sconn:
        if events is not None and events.num_rows:
            existing = outbox.existing_event_ids(sconn, program_id, events.column("event_id").to_pylist())
            if existing:
                keep = pc.invert(pc.is_in(events.column("event_id"), value_set=pa.array(sorted(existing), pa.string())))
                events = events.filter(keep)
                already = len(existing)
            if verify_customers and events.num_rows:
                cids = sorted(set(events.column("customer_id").to_pylist()))
                present, gone = _cached_presence(sconn, program_id, cids)
                to_look_up = len(set(cids) - present - gone)
                if gone:
                    missing = pc.is_in(events.column("customer_id"), value_set=pa.array(sorted(gone), pa.string()))
                    absent = pc.sum(missing.cast(pa.int64())).as_py() or 0
                    events = events.filter(pc.invert(missing))
        sconn.rollback()   # the temp tables of the read-only checks
    if absent:
        rejects.reasons[tr.NOT_IN_MOENGAGE] += absent
    event_batches, _keys, by_type = tr._pack_events(events, rejects)
    user_batches = tr._pack_users(checked, rejects) if send_users and checked.users is not None and checked.users.num_rows else []
    samples: dict[str, list[Any]] = {}
    if events is not None and events.num_rows:
        for name, element in zip(events.column("event_name").to_pylist(), events.column("element").to_pylist()):
            bucket = samples.setdefault(name, [])
            if len(bucket) < SAMPLES_PER_TYPE:
                bucket.append(orjson.loads(element))
    if user_batches:
        body = orjson.loads(user_batches[0].body)
        samples["(member attributes)"] = body["elements"][:SAMPLES_PER_TYPE]
    return {
        "label": label,
        "rows_extracted": checked.rows_extracted,
        "events_extracted": 0 if checked.events is None else checked.events.num_rows,
        "events_by_type": dict(by_type),
        "events": sum(by_type.values()),
        "events_already_sent": already,
        "members_extracted": checked.members_extracted,
        "members": sum(b.users for b in user_batches),
        "quarantined": dict(rejects.reasons),
        "event_requests": len(event_batches),
        "user_requests": len(user_batches),
        "bytes": sum(len(b.body) for b in event_batches + user_batches),
        "customer_lookups_needed": to_look_up,
        "samples": samples,
    }


def summarise(chunks: list[dict[str, Any]], *, program_id: str, night: date, time_zone: str, plan: dict[str, Any],
              users_per_minute: float, events_per_minute: float, budget_source: str) -> dict[str, Any]:
    by_type: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    samples: dict[str, list[Any]] = {}
    for c in chunks:
        by_type.update(c["events_by_type"])
        quarantined.update(c["quarantined"])
        for k in ("rows_extracted", "events_extracted", "events", "events_already_sent", "members_extracted", "members",
                  "event_requests", "user_requests", "bytes", "customer_lookups_needed"):
            totals[k] += c.get(k, 0)
        for name, items in c["samples"].items():
            bucket = samples.setdefault(name, [])
            bucket.extend(items[:SAMPLES_PER_TYPE - len(bucket)])
    minutes = max(totals["members"] / users_per_minute if users_per_minute else 0.0,
                  totals["events"] / events_per_minute if events_per_minute else 0.0)
    return {
        "dry_run": True, "program_id": program_id, "night": night.isoformat(), "time_zone": time_zone,
        "chunks": len(chunks), "chunks_planned": plan.get("chunks", len(chunks)),
        "events_by_type": dict(sorted(by_type.items())), "events": totals["events"],
        "events_extracted": totals["events_extracted"], "events_already_sent": totals["events_already_sent"],
        "members_extracted": totals["members_extracted"], "members": totals["members"],
        "attributes_refresh": bool(plan.get("send_users")), "attributes_skip_reason": plan.get("skip_reason"),
        "quarantined_by_reason": dict(sorted(quarantined.items())), "quarantined": sum(quarantined.values()),
        "requests": totals["event_requests"] + totals["user_requests"],
        "event_requests": totals["event_requests"], "user_requests": totals["user_requests"],
        "bytes": totals["bytes"], "customer_lookups_needed": totals["customer_lookups_needed"],
        "users_per_minute": users_per_minute, "events_per_minute": events_per_minute, "budget_source": budget_source,
        "minutes_at_budget": round(minutes, 2),
        "samples": dict(sorted(samples.items())),
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


def render(summary: dict[str, Any]) -> str:
    s = summary
    lines = [f"MoEngage sync DRY RUN: program {s['program_id']}, night {s['night']} ({s['time_zone']}): nothing sent, "
             "nothing enqueued, no event key consumed",
             f"  events that would be sent {s['events']:,} (extracted {s['events_extracted']:,}, already sent by "
             f"earlier runs {s['events_already_sent']:,})"]
    for name, n in s["events_by_type"].items():
        lines.append(f"    {name:<32} {n:>10,}")
    refresh = "yes" if s["attributes_refresh"] else f"no ({s['attributes_skip_reason']})"
    lines.append(f"  members extracted {s['members_extracted']:,}, attribute updates {s['members']:,} (refresh: {refresh})")
    if s["quarantined_by_reason"]:
        lines.append(f"  would be quarantined, by reason ({s['quarantined']:,}):")
        for reason, n in s["quarantined_by_reason"].items():
            lines.append(f"    {reason:<48} {n:>8,}")
    else:
        lines.append("  would be quarantined: none")
    lines.append(f"  requests {s['requests']:,} ({s['event_requests']:,} events, {s['user_requests']:,} members), "
                 f"{s['bytes']:,} bytes")
    if s["customer_lookups_needed"]:
        lines.append(f"  Get User API lookups the real run would make first: {s['customer_lookups_needed']:,}")
    lines.append(f"  minutes at the workspace budget: {s['minutes_at_budget']:.2f} "
                 f"({s['users_per_minute']:,.0f} users/min, {s['events_per_minute']:,.0f} events/min, {s['budget_source']})")
    for name, items in s["samples"].items():
        lines.append(f"  sample payloads, {name}:")
        for item in items:
            lines.append("    " + orjson.dumps(item).decode())
    return "\n".join(lines)


def note(summary: dict[str, Any]) -> str:
    s = summary
    return (f"DRY RUN night {s['night']} ({s['time_zone']}): {s['events']:,} events, {s['members']:,} members, "
            f"{s['quarantined']:,} quarantined, {s['requests']:,} requests, {s['minutes_at_budget']:.1f} min at budget: "
            "nothing sent")


# ---- the DAG's tasks in a dry run ---------------------------------------------------------------

def plan_task(program: Any, context: dict[str, Any]) -> list[dict[str, Any]]:
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync import tasks
    from loyalty_moengage.sync.plan import latest_complete_night, plan_chunks

    w = tasks.window(program, context)
    tasks._ensure_night_over(program, w)
    loyalty, state = tasks.dsns(program)
    with connect(loyalty) as conn:
        chunks = plan_chunks(conn, program.id, chunk_members=program.chunk_members)
    with connect(state) as conn:
        ensure_table(conn)
        conn.execute("DELETE FROM moengage_sync.dry_runs WHERE program_id = %s AND (run_id = %s OR created_at < now() - %s)",
                     (program.id, context["run_id"], timedelta(days=KEEP_DAYS)))
        conn.commit()
        refresh, why = would_refresh_attributes(conn, program_id=program.id, night=w.night,
                                                latest_night=latest_complete_night(tasks.now(), program.time_zone))
    _store(state, program_id=program.id, night=w.night, run_id=context["run_id"], key="plan",
           stats={"chunks": len(chunks), "send_users": refresh, "skip_reason": why})
    log.info("DRY RUN night %s: %d chunk(s); nothing will be enqueued or sent", w.night, len(chunks))
    return [{**c, "send_users": refresh} for c in chunks]


def transform_task(program: Any, chunk: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    from loyalty_moengage.sync import tasks

    w = tasks.window(program, context)
    loyalty, state = tasks.dsns(program)
    stats = dry_chunk(program_id=program.id, window=w, lo=chunk["lo"], hi=chunk["hi"], label=chunk["label"],
                      send_users=chunk["send_users"], loyalty_dsn=loyalty, state_dsn=state,
                      verify_customers=program.verify_customers)
    _store(state, program_id=program.id, night=w.night, run_id=context["run_id"], key=f"chunk {chunk['label']}", stats=stats)
    log.info("DRY RUN %s: %s", chunk["label"], {k: v for k, v in stats.items() if k != "samples"})
    return {"label": chunk["label"], "events": stats["events"], "members": stats["members"], "dry_run": True}


def report_task(program: Any, context: dict[str, Any]) -> dict[str, Any]:
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync import run_note, tasks

    w = tasks.window(program, context)
    _, state = tasks.dsns(program)
    with connect(state) as conn:
        ensure_table(conn)
        rows = conn.execute("SELECT task_key, stats FROM moengage_sync.dry_runs WHERE program_id = %s AND run_id = %s",
                            (program.id, context["run_id"])).fetchall()
    plan = next((s for k, s in rows if k == "plan"), {})
    chunks = [s for k, s in rows if k.startswith("chunk ")]
    upm, epm, source = budget(program.moengage_conn_id)
    summary = summarise(chunks, program_id=program.id, night=w.night, time_zone=program.time_zone, plan=plan,
                        users_per_minute=upm, events_per_minute=epm, budget_source=source)
    _store(state, program_id=program.id, night=w.night, run_id=context["run_id"], key="report", stats=summary)
    log.info("\n%s", render(summary))
    text = note(summary)
    if len(chunks) < summary["chunks_planned"]:
        text = f"{text} (only {len(chunks)} of {summary['chunks_planned']} chunks finished)"
    run_note.push(context, text)
    if not plan or len(chunks) < summary["chunks_planned"]:
        raise tasks._fail(f"dry run of night {w.night} did not finish: {len(chunks)} of "
                          f"{summary['chunks_planned']} chunk(s) transformed")
    return {"dry_run": True, "events": summary["events"], "members": summary["members"], "requests": summary["requests"]}


# ---- the CLI's plan command ---------------------------------------------------------------------

def plan_night(program: Any, night: date, *, run_id: str) -> dict[str, Any]:
    """Everything a dry-run DAG run does, in this process, for one night."""
    from loyalty_moengage.db import connect, ensure_state_schema
    from loyalty_moengage.sync import tasks
    from loyalty_moengage.sync.plan import latest_complete_night, plan_chunks
    from loyalty_moengage.sync.runner import night_end
    from loyalty_moengage.sync.transform import Window
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    end = night_end(night, program.time_zone)
    start = datetime.combine(night, datetime.min.time(), ZoneInfo(program.time_zone)).astimezone(timezone.utc)
    w = Window.for_interval(start, end, program.time_zone)
    loyalty, state = tasks.dsns(program)
    ensure_state_schema(state)
    with connect(loyalty) as conn:
        chunks = plan_chunks(conn, program.id, chunk_members=program.chunk_members)
    with connect(state) as conn:
        refresh, why = would_refresh_attributes(conn, program_id=program.id, night=night,
                                                latest_night=latest_complete_night(tasks.now(), program.time_zone))
    results = [dry_chunk(program_id=program.id, window=w, lo=c["lo"], hi=c["hi"], label=c["label"], send_users=refresh,
                         loyalty_dsn=loyalty, state_dsn=state, verify_customers=program.verify_customers) for c in chunks]
    upm, epm, source = budget(program.moengage_conn_id)
    summary = summarise(results, program_id=program.id, night=night, time_zone=program.time_zone,
                        plan={"chunks": len(chunks), "send_users": refresh, "skip_reason": why},
                        users_per_minute=upm, events_per_minute=epm, budget_source=source)
    _store(state, program_id=program.id, night=night, run_id=run_id, key="report", stats=summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m loyalty_moengage.cli plan --program P [--night N] [--json]``."""
    import argparse
    import sys
    import uuid

    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.sync.plan import NightNotOverError, ensure_night_over, latest_complete_night
    from loyalty_moengage.sync.runner import night_end
    from loyalty_moengage.sync.tasks import now

    parser = argparse.ArgumentParser(prog="loyalty-moengage plan",
                                     description="Dry run of one night: extract and transform, send nothing.")
    parser.add_argument("--program", default="demo")
    parser.add_argument("--night", help="YYYY-MM-DD (default: last night in the program's zone)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    program = get_program(args.program)
    night = date.fromisoformat(args.night) if args.night else latest_complete_night(now(), program.time_zone)
    try:
        ensure_night_over(night, night_end(night, program.time_zone), program.time_zone, now())
    except NightNotOverError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    summary = plan_night(program, night, run_id=f"cli_plan__{night}__{uuid.uuid4().hex[:8]}")
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() if args.json else render(summary))
    return 0
