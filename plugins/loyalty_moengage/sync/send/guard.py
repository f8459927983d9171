"""The anomaly guard: stop a night before anything is sent when its extract looks broken.

A broken template must not fire an empty or wrong campaign, so the guard runs after every
chunk is enqueued and before any load. Transforms enqueue batches as ``staged``; only a
passing guard makes a night's batches ``pending`` (sendable), so no path (a failed chunk, the
next night's load) can send a night the guard has not approved. A passing guard releases the
night's staged batches of every run (a crashed run's leftovers included); a failing one
withdraws its own run's staged batches with their event keys, so a corrected rerun enqueues
them again: all but those another run relies on (below).

**Judged once.** A night is judged once: once a guard released it (``night_verdicts``), a later
run of it is not held, whatever history a backfill added since (it records its totals and the
problems it saw, and says the night was released before); a held night is judged afresh by the
next run. Guards of one night take its advisory lock and decide in one transaction: two cannot
both decide at once, and one that fails midway (a database blip) leaves nothing decided, so the
task's retry judges from the start.

**Reliance.** Two runs of a night overlap: run B's chunk finds events already keyed to run A's
*staged* batch and leaves them to it. If A's guard then withdrew that batch, B's passing guard
would release nothing of them and report success. So B's chunk transaction records that it relies
on the batch (``batch_reliance``; ``awaiting_reliance`` for A's events still awaiting their
customer's check), and A's withdrawal keeps what another run relies on, ``staged``, for a passing
guard of B to release. Lock order, the same everywhere: batches, then awaiting rows, each in key
order. B's chunk (``enqueue.rely_on``), after its own inserts, locks the batches its gate read
``FOR SHARE`` and records its rows in the same transaction; :func:`withdraw_night` first locks A's
staged batches, then A's awaiting rows, ``FOR UPDATE`` (statements of their own) and deletes in
later statements. Either B's lock on a row comes first: the withdrawal waits for B's commit, and
its deletes (a new snapshot each, READ COMMITTED) see B's reliance rows and keep the row. Or the
withdrawal's lock comes first: B waits for it, finds the deleted row gone, and its chunk reads what
is known again (``Collision``) and enqueues those events itself. Neither waits for the other while
holding a lock the other wants out of this order (B takes no share lock before its inserts, which
may wait for the withdrawal's key deletes), and a release locks in the same order, so none of
them deadlocks; a guard takes the night's advisory lock before any row lock.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

log = logging.getLogger(__name__)


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


def release_night(conn: Any, program_id: str, night: Any, run_id: str | None = None) -> int:
    """The guard passed: the night's staged batches (this and any earlier run) may be sent, and so
    may what this run relies on of other nights' (its events were keyed there first). In the
    caller's transaction; locks in the order :func:`withdraw_night` does (module docstring)."""
    return _release(conn, program_id, run_id, "night = %s", night)


def release_run(conn: Any, program_id: str, run_id: str) -> int:
    """A live run's release (sync/live/), under the program's live lock: every staged live batch
    becomes sendable, whatever night it belongs to: its own, and those of a live run that died
    between its enqueue and its release (no other live run can be running). Never a night's
    batch, not even one the live run left events to: those follow their night's guard (a held
    night keeps them staged, ``withdraw_night`` keeps what another run relies on). No anomaly
    guard of its own: a few minutes of events have no history to be judged against. Same locks,
    same order as :func:`release_night`, in the caller's transaction."""
    from loyalty_moengage.sync.outbox.states import LIVE_RUN_PREFIX

    return _release(conn, program_id, run_id, "starts_with(run_id, %s)", LIVE_RUN_PREFIX, only_prefix=LIVE_RUN_PREFIX)


def _release(conn: Any, program_id: str, run_id: str | None, where: str, value: Any,
             only_prefix: str | None = None) -> int:
    """Staged batches and awaiting events matching ``where`` (one parameter, ``value``), or that
    ``run_id`` relies on; with ``only_prefix``, only those of runs whose id starts with it."""
    released = [r[0] for r in conn.execute(
        f"SELECT batch_id FROM moengage_sync.batches WHERE program_id = %s AND state = 'staged' AND ({where} "
        "OR batch_id IN (SELECT batch_id FROM moengage_sync.batch_reliance WHERE program_id = %s AND run_id = %s)) "
        "AND (%s::text IS NULL OR starts_with(run_id, %s)) "
        "ORDER BY batch_id FOR UPDATE", (program_id, value, program_id, run_id, only_prefix, only_prefix))]
    conn.execute("UPDATE moengage_sync.batches SET state = 'pending', updated_at = now() WHERE batch_id = ANY(%s)",
                 (released,))
    # Events waiting for their customer's check may now be checked by the load slots (lookups.py).
    waiting = [r[0] for r in conn.execute(
        f"SELECT event_id FROM moengage_sync.awaiting_presence WHERE program_id = %s AND NOT released AND ({where} "
        "OR event_id IN (SELECT event_id FROM moengage_sync.awaiting_reliance WHERE program_id = %s AND run_id = %s)) "
        "AND (%s::text IS NULL OR starts_with(run_id, %s)) "
        "ORDER BY event_id FOR UPDATE", (program_id, value, program_id, run_id, only_prefix, only_prefix))]
    conn.execute("UPDATE moengage_sync.awaiting_presence SET released = true WHERE program_id = %s "
                 "AND event_id = ANY(%s)", (program_id, waiting))
    # Released: no withdrawal can take them any more, so whoever relied on them need not.
    conn.execute("DELETE FROM moengage_sync.batch_reliance WHERE batch_id = ANY(%s)", (released,))
    conn.execute("DELETE FROM moengage_sync.awaiting_reliance WHERE program_id = %s AND event_id = ANY(%s)",
                 (program_id, waiting))
    return len(released)


def withdraw_night(conn: Any, program_id: str, night: Any, run_id: str) -> int:
    """The guard failed: remove this run's staged batches of the night, their event keys and
    their claims on the attribute refresh (none was sent), so a corrected rerun enqueues them
    again; but never a batch or an awaiting event another run relies on (its chunk left those
    events to it): they stay staged for that run's guard. In the caller's transaction. The lock
    comes first, in its own statement; the deletes after it see every reliance row committed by
    the chunks it waited for (module docstring). Only batches actually deleted lose their keys:
    one a concurrent guard released meanwhile keeps them, and what this run relied on is let go."""
    mine = [r[0] for r in conn.execute(
        "SELECT batch_id FROM moengage_sync.batches WHERE program_id = %s AND night = %s AND run_id = %s "
        "AND state = 'staged' ORDER BY batch_id FOR UPDATE", (program_id, night, run_id))]
    waiting = [r[0] for r in conn.execute(
        "SELECT event_id FROM moengage_sync.awaiting_presence WHERE program_id = %s AND night = %s AND run_id = %s "
        "AND NOT released ORDER BY event_id FOR UPDATE", (program_id, night, run_id))]
    withdrawn = [r[0] for r in conn.execute(
        "DELETE FROM moengage_sync.batches b WHERE b.batch_id = ANY(%s) AND b.state = 'staged' AND NOT EXISTS "
        "(SELECT 1 FROM moengage_sync.batch_reliance r WHERE r.batch_id = b.batch_id AND r.run_id <> %s) "
        "RETURNING batch_id", (mine, run_id))]
    conn.execute("DELETE FROM moengage_sync.event_keys WHERE program_id = %s AND batch_id = ANY(%s)",
                 (program_id, withdrawn))
    gone = [r[0] for r in conn.execute(
        "DELETE FROM moengage_sync.awaiting_presence a WHERE a.program_id = %s AND a.event_id = ANY(%s) "
        "AND NOT a.released AND NOT EXISTS (SELECT 1 FROM moengage_sync.awaiting_reliance r "
        "WHERE r.program_id = a.program_id AND r.event_id = a.event_id AND r.run_id <> %s) RETURNING event_id",
        (program_id, waiting, run_id))]
    conn.execute("DELETE FROM moengage_sync.event_keys WHERE program_id = %s AND event_id = ANY(%s) "
                 "AND batch_id IS NULL", (program_id, gone))
    for table in ("batch_reliance", "awaiting_reliance"):
        conn.execute(f"DELETE FROM moengage_sync.{table} WHERE program_id = %s AND run_id = %s", (program_id, run_id))
    conn.execute(
        "DELETE FROM moengage_sync.attribute_chunks a WHERE a.program_id = %s AND a.night = %s AND a.run_id = %s "
        "AND NOT EXISTS (SELECT 1 FROM moengage_sync.batches b WHERE b.program_id = a.program_id "
        "AND b.night = a.night AND b.run_id = a.run_id AND b.kind = 'users')",
        (program_id, night, run_id),
    )
    return len(withdrawn)


def released_before(conn: Any, program_id: str, night: date) -> tuple[str, Any] | None:
    """(run, when) of the first guard that released this night, or None: it is judged once."""
    return conn.execute(
        "SELECT run_id, decided_at FROM moengage_sync.night_verdicts WHERE program_id = %s AND night = %s "
        "AND verdict = 'released' ORDER BY decided_at, run_id LIMIT 1", (program_id, night)).fetchone()


def record_verdict(conn: Any, *, program_id: str, night: date, run_id: str, released: bool,
                   overridden: bool) -> None:
    conn.execute(
        "INSERT INTO moengage_sync.night_verdicts (program_id, night, run_id, verdict, overridden) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (program_id, night, run_id) DO UPDATE SET "
        "verdict = EXCLUDED.verdict, overridden = EXCLUDED.overridden, decided_at = now()",
        (program_id, night, run_id, "released" if released else "held", overridden))


def decide(conn: Any, *, program: Any, night: date, run_id: str, override: bool) -> tuple[dict[str, Any], list[str]]:
    """Judge the run's totals and act on the verdict, in the caller's transaction: (the guard's
    stats, the problems that hold the night; empty: released)."""
    from loyalty_moengage.sync.report.stats import record_stats

    totals = check(conn, program=program, night=night, run_id=run_id)
    problems = totals.pop("problems")
    before = released_before(conn, program.id, night)
    if before:
        totals["released_before"] = {"run_id": before[0], "at": before[1].isoformat()}
        if problems:
            log.warning("night %s was released by run %s before: not held again, though %s", night, before[0],
                        problems)
            totals["problems_after_release"], problems = problems, []
    if problems and override:
        log.warning("anomaly guard overridden by the run's params: %s", problems)
        totals["overridden"] = True
    held = bool(problems and not override)
    if held:
        totals["withdrawn_batches"] = withdraw_night(conn, program.id, night, run_id)
        totals["kept_batches"] = conn.execute(
            "SELECT count(*) FROM moengage_sync.batches WHERE program_id = %s AND night = %s AND run_id = %s "
            "AND state = 'staged'", (program.id, night, run_id)).fetchone()[0]
    else:
        totals["released_batches"] = release_night(conn, program.id, night, run_id)
    record_verdict(conn, program_id=program.id, night=night, run_id=run_id, released=not held,
                   overridden=bool(problems and override))
    record_stats(conn, program_id=program.id, night=night, run_id=run_id, stage="guard", key="guard",
                 stats={**totals, "problems": problems})
    return totals, problems if held else []


def guard_night(state_dsn: str, *, program: Any, night: date, run_id: str, override: bool) -> dict[str, Any]:
    """Release the night's staged batches, or withdraw this run's and raise :class:`AnomalyError`
    (unless ``override``: the run's params said the night is genuinely unusual; or a run released
    the night before). One transaction under the night's advisory lock (module docstring)."""
    from psycopg import IsolationLevel

    from loyalty_moengage.db import connect

    with connect(state_dsn) as conn:
        # Whatever the server's default: each statement must see what committed before it (withdraw_night).
        conn.isolation_level = IsolationLevel.READ_COMMITTED
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('moengage_sync guard'), hashtext(%s))",
                     (f"{program.id} {night.isoformat()}",))
        totals, problems = decide(conn, program=program, night=night, run_id=run_id, override=override)
        conn.commit()
    if problems:
        raise AnomalyError(
            f"Night {night} of program {program.id} held before sending anything: " + "; ".join(problems)
            + f". {totals['withdrawn_batches']} batch(es) withdrawn"
            + (f", {totals['kept_batches']} kept: another run's chunks left their events to them, and its passing "
               "guard releases them" if totals["kept_batches"] else "")
            + ". Fix the cause and clear this run, or trigger "
            "it with params {\"skip_anomaly_guard\": true} if the night is genuinely unusual.")
    return totals
