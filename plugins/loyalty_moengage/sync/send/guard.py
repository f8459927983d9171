"""The anomaly guard: stop a night before anything is sent when its extract looks broken.

A broken template must not fire an empty or wrong campaign, so the guard runs after every
chunk is enqueued and before any load. Transforms enqueue batches as ``staged``; only a
passing guard makes a night's batches ``pending`` (sendable), so no path (a failed chunk, the
next night's load) can send a night the guard has not approved. A passing guard releases the
night's staged batches of every run (a crashed run's leftovers included); a failing one
withdraws only its own run's staged batches with their event keys, so a corrected rerun
enqueues them again.
"""

from __future__ import annotations

from datetime import date
from typing import Any


class AnomalyError(RuntimeError):
    pass


def run_totals(conn: Any, program_id: str, run_id: str) -> dict[str, Any]:
    """The run's chunks folded (``stats.fold_chunks``): what the guard judges."""
    from loyalty_moengage.sync.report.stats import fold_chunks

    folded = fold_chunks(stats for (stats,) in conn.execute(
        "SELECT stats FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s AND stage = 'transform'",
        (program_id, run_id)))
    totals: dict[str, Any] = {k: folded.counts[k] for k in (
        "rows_extracted", "members_extracted", "events_enqueued", "events_already_sent", "events_extracted")}
    totals.update(quarantined=sum(folded.quarantined.values()), chunks=folded.chunks)
    return totals


def recent_event_average(conn: Any, program_id: str, night: date, lookback: int) -> float | None:
    rows = conn.execute(
        "SELECT DISTINCT ON (night) events_extracted FROM moengage_sync.run_reports "
        "WHERE program_id = %s AND night < %s AND night >= %s::date - %s AND outcome = 'success' "
        "ORDER BY night, reported_at DESC",
        (program_id, night, night, lookback),
    ).fetchall()
    if not rows:
        return None
    return sum(r[0] for r in rows) / len(rows)


def check(conn: Any, *, program: Any, night: date, run_id: str) -> dict[str, Any]:
    """The run's totals, with ``problems``: what looks wrong and where to look (empty: none)."""
    totals = run_totals(conn, program.id, run_id)
    problems = []
    where = (f"SELECT reason, count(*) FROM moengage_sync.quarantine WHERE program_id = '{program.id}' "
             f"AND run_id = '{run_id}' GROUP BY reason")
    if totals["members_extracted"] < program.min_members:
        problems.append(
            f"{totals['members_extracted']} members extracted (min_members is {program.min_members}); "
            "check include/sql/members/ and the loyalty_db connection"
        )
    if totals["rows_extracted"]:
        share = totals["quarantined"] / totals["rows_extracted"]
        if share > program.reject_threshold:
            problems.append(
                f"{totals['quarantined']} of {totals['rows_extracted']} rows ({share:.1%}) were quarantined, "
                f"over reject_threshold {program.reject_threshold:.1%}; see: {where}"
            )
    # Events the templates produced (before the MoEngage presence check and the sent-before
    # filter), so a dip on MoEngage's side or a rerun never looks like a broken template.
    events = totals["events_extracted"]
    average = recent_event_average(conn, program.id, night, program.anomaly_lookback_nights)
    if average and events < average * (1 - program.max_event_drop_pct / 100):
        problems.append(
            f"{events} events tonight vs an average of {average:.0f} over recent nights "
            f"(down more than max_event_drop_pct {program.max_event_drop_pct:g}%); check include/sql/events/"
        )
    totals["problems"] = problems
    return totals


def release_night(conn: Any, program_id: str, night: Any) -> int:
    """The guard passed: the night's staged batches (this and any earlier run) may be sent."""
    cur = conn.execute(
        "UPDATE moengage_sync.batches SET state = 'pending', updated_at = now() "
        "WHERE program_id = %s AND night = %s AND state = 'staged'",
        (program_id, night),
    )
    # Events waiting for their customer's check may now be checked by the load slots (lookups.py).
    conn.execute("UPDATE moengage_sync.awaiting_presence SET released = true WHERE program_id = %s AND night = %s "
                 "AND NOT released", (program_id, night))
    conn.commit()
    return cur.rowcount


def withdraw_night(conn: Any, program_id: str, night: Any, run_id: str) -> int:
    """The guard failed: remove this run's staged batches of the night, their event keys and
    their claims on the attribute refresh (none was sent), so a corrected rerun enqueues them
    again. The batches go first and only those actually deleted lose their keys: a concurrent
    guard that released some meanwhile keeps them, keys included."""
    withdrawn = [r[0] for r in conn.execute(
        "DELETE FROM moengage_sync.batches WHERE program_id = %s AND night = %s AND run_id = %s AND state = 'staged' "
        "RETURNING batch_id", (program_id, night, run_id))]
    conn.execute("DELETE FROM moengage_sync.event_keys WHERE program_id = %s AND batch_id = ANY(%s)",
                  (program_id, withdrawn))
    waiting = [r[0] for r in conn.execute(
        "DELETE FROM moengage_sync.awaiting_presence WHERE program_id = %s AND night = %s AND run_id = %s "
        "AND NOT released RETURNING event_id", (program_id, night, run_id))]
    conn.execute("DELETE FROM moengage_sync.event_keys WHERE program_id = %s AND event_id = ANY(%s) "
                 "AND batch_id IS NULL", (program_id, waiting))
    conn.execute(
        "DELETE FROM moengage_sync.attribute_chunks a WHERE a.program_id = %s AND a.night = %s AND a.run_id = %s "
        "AND NOT EXISTS (SELECT 1 FROM moengage_sync.batches b WHERE b.program_id = a.program_id "
        "AND b.night = a.night AND b.run_id = a.run_id AND b.kind = 'users')",
        (program_id, night, run_id),
    )
    conn.commit()
    return len(withdrawn)


def guard_night(state_dsn: str, *, program: Any, night: date, run_id: str, override: bool) -> dict[str, Any]:
    """Release the night's staged batches, or withdraw this run's and raise :class:`AnomalyError`
    (unless ``override``: the run's params said the night is genuinely unusual)."""
    import logging

    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.report.stats import record_stats

    with connect(state_dsn) as conn:
        totals = check(conn, program=program, night=night, run_id=run_id)
        problems = totals.pop("problems")
        if problems and override:
            logging.getLogger(__name__).warning("anomaly guard overridden by the run's params: %s", problems)
            totals["overridden"] = True
        if problems and not override:
            totals["withdrawn_batches"] = withdraw_night(conn, program.id, night, run_id)
        else:
            totals["released_batches"] = release_night(conn, program.id, night)
        record_stats(conn, program_id=program.id, night=night, run_id=run_id, stage="guard", key="guard",
                     stats={**totals, "problems": problems})
        conn.commit()
    if problems and not override:
        raise AnomalyError(
            f"Night {night} of program {program.id} held before sending anything: " + "; ".join(problems)
            + f". {totals['withdrawn_batches']} batch(es) withdrawn. Fix the cause and clear this run, or trigger "
            "it with params {\"skip_anomaly_guard\": true} if the night is genuinely unusual.")
    return totals
