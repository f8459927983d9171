"""Drills of a rude world under real ``airflow scheduler`` processes, one per rude mode.

A MoEngage that applies a request and then answers an error (or drops the connection); one that
shows bulk writes late and out of order while it throttles; a state database that fails over to
a replica that had not seen a batch's 'sending' mark; a loyalty database whose rows commit after
their night was extracted (a transaction spanning the extract, a lagging reader); customers
erased in MoEngage; a run held by the anomaly guard overlapping one told to skip it. Each drill
runs through :func:`loyalty_moengage_devtools.drills.drill_setup` (a generated program, the
sandbox, a real Airflow stack) and ends with the event-by-event audit, whose figures go to
``bench/results/drills-latest.json`` beside the polite drills'. Development tool only.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

from loyalty_moengage_devtools.drills import (
    WORKSPACE,
    DrillContext,
    ProgramEnv,
    concurrency,
    concurrent_backfill,
    drain,
    drill_setup,
    finish_drill,
    scheduled_run,
    today_in,
    wait_backfill,
)

TZ = "Asia/Kolkata"
#: The sandbox shows bulk writes up to this late in the out-of-order drill (the connection says so).
LATE_VISIBILITY_SECONDS = 4.0


def _older_history() -> date:
    return today_in(TZ) - timedelta(days=2)


def drill_applied_errors(ctx: DrillContext) -> dict[str, Any]:
    """MoEngage applies 1 in 8 bulk requests, then a proxy answers 500, 502, 503, 504 or 408 or drops
    the connection, over the scheduled night and a three-night backfill overlapped by a rerun."""
    with drill_setup(ctx, "applied_errors", history_end=_older_history()) as (env, stack):
        env.sandbox.set_faults(applied_error_rate=0.125, endpoints=("transition",), latency=0.1, seed=7)
        ctx.notes["applied_errors"] = {"scheduled": scheduled_run(stack, env, timeout=300)}
        ctx.notes["applied_errors"].update(concurrent_backfill(stack, env, timeout=400))
        env.sandbox.set_faults()
        drain(stack, env, 240)
        return finish_drill(ctx, "applied_errors", env, stack)


def drill_throttled_out_of_order(ctx: DrillContext) -> dict[str, Any]:
    """429s (1 in 6 bulk requests) before answers lost after applying (1 in 10), while bulk writes
    show through the Get User API 0-4 s late, each its own delay, so a later probe may show before
    an earlier batch's receipt."""
    with drill_setup(ctx, "throttled_out_of_order", history_end=_older_history(),
                     visibility=LATE_VISIBILITY_SECONDS) as (env, stack):
        env.sandbox.set_faults(error_rate=0.16, error_statuses=(429,), retry_after=0.5,
                               applied_error_rate=0.1, applied_error_statuses=("drop", 502),
                               bulk_visibility_delay=[0.0, LATE_VISIBILITY_SECONDS], endpoints=("transition",), seed=9)
        ctx.notes["throttled_out_of_order"] = {"scheduled": scheduled_run(stack, env, timeout=300)}
        ctx.notes["throttled_out_of_order"].update(concurrent_backfill(stack, env, timeout=400))
        env.sandbox.set_faults()
        drain(stack, env, 240)
        return finish_drill(ctx, "throttled_out_of_order", env, stack)


def _lose_sending_marks(env: ProgramEnv, stop: threading.Event, limit: int, lost: list[int]) -> None:
    """Rewrite batches mid-POST as a promoted asynchronous replica shows them: claimed (the claim had
    replicated), the 'sending' mark and its receipt gone."""
    import psycopg

    while not stop.is_set() and len(lost) < limit:
        try:
            with psycopg.connect(env.dsn, autocommit=True, connect_timeout=5) as conn:
                rows = conn.execute(
                    "UPDATE moengage_sync.batches SET state = 'claimed', receipt_token = NULL, receipt_carrier = NULL "
                    "WHERE batch_id = (SELECT batch_id FROM moengage_sync.batches WHERE program_id = %s "
                    "AND state = 'sending' AND kind = 'events' AND updated_at < now() - interval '0.1 second' "
                    "ORDER BY batch_id LIMIT 1) RETURNING batch_id", (env.program_id,)).fetchall()
            lost.extend(r[0] for r in rows)
        except psycopg.OperationalError:
            pass
        time.sleep(0.05)


def drill_state_failover(ctx: DrillContext) -> dict[str, Any]:
    """The state database 'fails over' under five POSTs in flight: each batch reads 'claimed' again,
    its 'sending' mark lost, while MoEngage applies it (each bulk request takes 0.5 s)."""
    with drill_setup(ctx, "state_failover") as (env, stack):
        env.sandbox.set_faults(latency=0.5, endpoints=("transition",))
        stop, lost = threading.Event(), []
        replica = threading.Thread(target=_lose_sending_marks, args=(env, stop, 5, lost), daemon=True)
        replica.start()
        try:
            ctx.notes["state_failover"] = {"scheduled": scheduled_run(stack, env, timeout=300)}
        finally:
            stop.set()
            replica.join(timeout=10)
        ctx.notes["state_failover"]["sending_marks_lost"] = lost
        env.sandbox.set_faults()
        drain(stack, env, 240)
        return finish_drill(ctx, "state_failover", env, stack)


def _late_rows(env: ProgramEnv, night: date, count: int) -> list[tuple[Any, ...]]:
    """Earn rows of members MoEngage has, recorded inside ``night``'s window (what a transaction that
    began before midnight stamps with ``now()``)."""
    from loyalty_moengage.night import Window

    window = Window.of_night(night, TZ)
    at = window.end - timedelta(minutes=3)
    import psycopg

    with psycopg.connect(env.dsn) as conn:
        members = [r[0] for r in conn.execute(
            "SELECT member_id FROM loyalty.members WHERE program_id = %s ORDER BY member_id LIMIT %s",
            (env.program_id, count)).fetchall()]
    return [(env.program_id, m, 100 + i, "manual_bonus", night + timedelta(days=365), at, at)
            for i, m in enumerate(members)]


def _insert_late(conn: Any, rows: list[tuple[Any, ...]]) -> None:
    conn.cursor().executemany(
        "INSERT INTO loyalty.points_ledger (program_id, member_id, entry_type, points, earning_type, expires_on, "
        "occurred_at, recorded_at) VALUES (%s, %s, 'earn', %s, %s, %s, %s, %s)", rows)


def drill_late_commit(ctx: DrillContext) -> dict[str, Any]:
    """After the scheduled (newest) night: a loyalty transaction opened before the older night's
    backfill, its rows stamped inside that night, committed only after the backfill extracted
    (spanning the extract); and rows a lagging replica showed only after it. The next run (a rerun
    of the newest night) re-reads the older night (its lookback) and sends each once."""
    import psycopg

    with drill_setup(ctx, "late_commit", history_end=_older_history()) as (env, stack):
        older = env.nights[-2]
        notes = ctx.notes.setdefault("late_commit", {})
        notes["scheduled"] = scheduled_run(stack, env, timeout=300)
        spanning, lagging = _late_rows(env, older, 20), _late_rows(env, older, 40)[20:]
        open_tx = psycopg.connect(env.dsn)
        _insert_late(open_tx, spanning)                       # not committed: invisible to the extract
        started = datetime.now(timezone.utc)
        stack.backfill(env.dag_id, env.logical_start(older).isoformat(), env.logical_start(older).isoformat())
        stack.wait_for(lambda: _backfill_done(stack, env.dag_id, "transform", started), timeout=240,
                       what="the older night's transforms to finish", interval=0.5)
        open_tx.commit()
        open_tx.close()
        with psycopg.connect(env.dsn) as conn:                # what a lagging reader had not shown yet
            _insert_late(conn, lagging)
        wait_backfill(stack, env.dag_id, timeout=300)
        rerun = stack.trigger(env.dag_id, run_id=f"manual__next_run_{uuid.uuid4().hex[:6]}")
        stack.wait_runs(env.dag_id, [rerun], timeout=300)
        inserted = len(spanning) + len(lagging)
        notes.update(late_rows_inserted=inserted, late_events_received=_received_late(env, older, inserted))
        drain(stack, env, 240)
        result = finish_drill(ctx, "late_commit", env, stack)
        result["late_rows_inserted"] = inserted
        result["late_rows_received_once"] = notes["late_events_received"]["distinct"]
        return result


def _backfill_done(stack: Any, dag_id: str, task_id: str, since: datetime) -> bool:
    """The backfill's tries of ``task_id`` (started after ``since``) all ended."""
    tis = [t for t in stack.task_instances(dag_id) if t["task_id"] == task_id and t["start_date"]
           and t["start_date"] >= since]
    return bool(tis) and all(t["state"] in ("success", "failed", "upstream_failed") for t in tis)


def _received_late(env: ProgramEnv, night: date, inserted: int) -> dict[str, int]:
    """How often each late row's event reached MoEngage (its points 100.. identify it)."""
    from loyalty_moengage.night import Window

    at = (Window.of_night(night, TZ).end - timedelta(minutes=3)).astimezone(timezone.utc)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    hits = [e for e in env.events() if e["action"] == "loyalty_points_earned" and str(e["current_time"]) == stamp
            and e["attributes"].get("earning_type") == "manual_bonus" and 100 <= e["attributes"].get("points", 0)
            < 100 + inserted]
    points = [e["attributes"]["points"] for e in hits]
    return {"received": len(points), "distinct": len(set(points)), "expected": inserted}


def drill_erasure(ctx: DrillContext) -> dict[str, Any]:
    """25 customers with rows in the older night, confirmed by an earlier night, are erased in
    MoEngage, and every confirmation outlives the presence lifetime; the older night's backfill
    checks them first and sends none of their events, so no profile is recreated."""
    import psycopg

    with drill_setup(ctx, "erasure", history_end=_older_history()) as (env, stack):
        older = env.nights[-2]
        notes = ctx.notes.setdefault("erasure", {})
        notes["scheduled"] = scheduled_run(stack, env, timeout=300)
        with psycopg.connect(env.dsn) as conn:
            _insert_late(conn, _late_rows(env, older, 25))   # 25 customers surely active in the older night
            conn.commit()
            erased = [r[0] for r in conn.execute(_ACTIVE, {"p": env.program_id, **_window(older)}).fetchall()]
            # Confirmed by an earlier night (as the scheduled night confirmed its own customers)...
            conn.cursor().executemany(
                "INSERT INTO moengage_sync.customer_presence (program_id, customer_id, present) VALUES (%s, %s, true) "
                "ON CONFLICT (program_id, customer_id) DO UPDATE SET present = true",
                [(env.program_id, c) for c in erased])
            # ...then erased in MoEngage, and every confirmation is older than the presence lifetime.
            env.sandbox.erase(WORKSPACE, erased)
            conn.execute("UPDATE moengage_sync.customer_presence SET checked_at = checked_at - interval '31 days' "
                         "WHERE program_id = %s", (env.program_id,))
        notes["erased"] = len(erased)
        stack.backfill(env.dag_id, env.logical_start(older).isoformat(), env.logical_start(older).isoformat())
        wait_backfill(stack, env.dag_id, timeout=300)
        drain(stack, env, 240)
        result = finish_drill(ctx, "erasure", env, stack)
        result["customers_erased"] = len(erased)
        return result


def drill_held_overlap(ctx: DrillContext) -> dict[str, Any]:
    """The anomaly guard holds the newest night (min_members is out of reach); then a backfill of it
    (held too) and a manual run told to skip the guard run at once. Whatever a held run withdraws,
    the events the other run left to it are sent, once."""
    with drill_setup(ctx, "held_overlap", settings={"min_members": 10**9}) as (env, stack):
        notes = ctx.notes.setdefault("held_overlap", {})
        notes["scheduled"] = scheduled_run(stack, env, timeout=300)
        newest = env.logical_start(env.newest).isoformat()
        stack.backfill(env.dag_id, newest, newest, reprocess_behavior="failed")
        passing = stack.trigger(env.dag_id, run_id=f"manual__skip_guard_{uuid.uuid4().hex[:6]}",
                                conf={"skip_anomaly_guard": True})
        wait_backfill(stack, env.dag_id, timeout=300)
        stack.wait_runs(env.dag_id, [passing], timeout=300)
        notes["concurrency"] = concurrency(stack, env.dag_id)
        drain_with_skip(stack, env)
        return finish_drill(ctx, "held_overlap", env, stack)


def drain_with_skip(stack: Any, env: ProgramEnv) -> None:
    """What an operator does after a held night they judged genuine: a run told to skip the guard."""
    if env.batches("staged", "pending", "claimed", "sending"):
        run_id = stack.trigger(env.dag_id, run_id=f"manual__drain_{uuid.uuid4().hex[:6]}",
                               conf={"skip_anomaly_guard": True})
        stack.wait_runs(env.dag_id, [run_id], timeout=240)


#: Customers with loyalty rows in a night: erasing them matters to that night's events.
_ACTIVE = (
    "SELECT DISTINCT m.relation_reference FROM loyalty.points_ledger l JOIN loyalty.members m "
    "ON m.member_id = l.member_id WHERE l.program_id = %(p)s AND m.relation_reference IS NOT NULL "
    "AND l.recorded_at >= %(start)s AND l.recorded_at < %(end)s ORDER BY 1 LIMIT 25")


def _window(night: date) -> dict[str, Any]:
    from loyalty_moengage.night import Window

    window = Window.of_night(night, TZ)
    return {"start": window.start, "end": window.end}


RUDE_DRILLS: dict[str, Callable[[DrillContext], dict[str, Any]]] = {
    "applied_errors": drill_applied_errors,
    "throttled_out_of_order": drill_throttled_out_of_order,
    "state_failover": drill_state_failover,
    "late_commit": drill_late_commit,
    "erasure": drill_erasure,
    "held_overlap": drill_held_overlap,
}

