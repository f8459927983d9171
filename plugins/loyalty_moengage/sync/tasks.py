"""What each task of the nightly sync does, given the program and Airflow's context.

The DAG file only wires these together; everything here can be called (and is tested)
without a scheduler. Imports of pandas, pyarrow and psycopg happen inside the functions so
DAG parsing stays cheap.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from loyalty_moengage.config.programs import Program

log = logging.getLogger(__name__)

TRANSFORM_CONCURRENCY = 2   # mapped transform tasks at once per run; they share the lookup budget


def now() -> datetime:
    """The one reading of the wall clock. It decides only whether a night may run (it has ended,
    it is within the audit retention, it is the newest for attributes); payloads never see it."""
    return datetime.now(timezone.utc)


def _fail(message: str) -> Exception:
    """An error no retry can mend: the task fails at once, saying what to do."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(message)


def _permanent_cause(exc: BaseException) -> str | None:
    """The message of an error no retry can mend (configuration, a broken template, data that
    fails a template, credentials MoEngage refuses), else None."""
    from loyalty_moengage.moengage.errors import MoEngageConfigError, MoEngagePermanentError
    from loyalty_moengage.sync.contract import ContractError, TemplateDataError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ContractError, TemplateDataError, MoEngageConfigError)):
            return str(seen)
        if isinstance(seen, MoEngagePermanentError) and seen.status in (401, 403, 409):
            return str(exc)
        seen = seen.__cause__
    return None


def _note_failure(program: Program, context: dict[str, Any], stage: str, message: str | None) -> None:
    """Keep the task's last error (or clear it after a success) for the run report."""
    ti = context.get("ti")
    map_index = getattr(ti, "map_index", -1)
    key = stage if map_index in (None, -1) else f"{stage}[{map_index}]"
    try:
        from loyalty_moengage.db import connect

        _, state = dsns(program)
        with connect(state) as conn:
            if conn.execute("SELECT to_regclass('moengage_sync.task_stats')").fetchone()[0] is None:
                return
            if message is None:
                conn.execute("DELETE FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s "
                             "AND stage = 'error' AND task_key = %s", (program.id, context["run_id"], key))
            else:
                from loyalty_moengage.sync.report import record_stats

                record_stats(conn, program_id=program.id, night=window(program, context).night,
                             run_id=context["run_id"], stage="error", key=key, stats={"message": message[:2000]})
    except Exception as exc:  # the task's own error is what matters; this is only its echo
        log.warning("could not record the failure of %s for the report: %s", key, type(exc).__name__)


def fails_fast(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Errors no retry can mend fail the task at once (no retries, saying what to fix); every
    failure is kept for the run report, which names it."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(program: Program, *args: Any) -> Any:
            from airflow.sdk.exceptions import AirflowFailException

            context = args[-1]
            try:
                result = fn(program, *args)
            except AirflowFailException as exc:
                _note_failure(program, context, stage, str(exc))
                raise
            except Exception as exc:
                cause = _permanent_cause(exc)
                _note_failure(program, context, stage, cause or f"{type(exc).__name__}: {exc}")
                if cause:
                    raise _fail(cause) from exc
                raise
            _note_failure(program, context, stage, None)
            return result
        return run
    return wrap


def _ensure_night_over(program: Program, w: Any) -> None:
    from loyalty_moengage.sync.plan import NightNotOverError, ensure_night_over

    try:
        ensure_night_over(w.night, w.end, program.time_zone, now())
    except NightNotOverError as exc:
        raise _fail(str(exc)) from None


def window(program: Program, context: dict[str, Any]) -> Any:
    """The night's recorded_at window: the run's data interval, in UTC."""
    from zoneinfo import ZoneInfo

    from loyalty_moengage.sync.transform import Window

    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is None or end is None or start == end:
        # A manual run without an interval syncs the newest night complete when it was created;
        # run_after is fixed per run, so every task and retry of the run sees the same night.
        tz = ZoneInfo(program.time_zone)
        dag_run = context.get("dag_run")
        ref = context.get("logical_date") or getattr(dag_run, "run_after", None) or now()
        local_midnight = datetime.combine(ref.astimezone(tz).date(), datetime.min.time(), tz)
        start, end = local_midnight - timedelta(days=1), local_midnight
    start = datetime.fromtimestamp(start.timestamp(), timezone.utc)
    end = datetime.fromtimestamp(end.timestamp(), timezone.utc)
    return Window.for_interval(start, end, program.time_zone)


def dsns(program: Program) -> tuple[str, str]:
    from loyalty_moengage.db import loyalty_dsn

    loyalty = loyalty_dsn(program.loyalty_conn_id)
    state = loyalty if program.state_conn == program.loyalty_conn_id else loyalty_dsn(program.state_conn)
    return loyalty, state


def _record(state_dsn: str, program: Program, night: Any, run_id: str, stage: str, key: str, stats: dict) -> None:
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.report import record_stats

    with connect(state_dsn) as conn:
        record_stats(conn, program_id=program.id, night=night, run_id=run_id, stage=stage, key=key, stats=stats)


@fails_fast("preflight")
def preflight(program: Program, context: dict[str, Any]) -> dict[str, Any]:
    """Prove the MoEngage credentials on the configured data centre and the templates' columns."""
    from loyalty_moengage.db import connect, ensure_state_schema
    from loyalty_moengage.sync.contract import load_templates
    from loyalty_moengage.sync.extract import SESSION_SETTINGS, describe
    from loyalty_moengage.moengage.hook import MoEngageHook

    w = window(program, context)
    _ensure_night_over(program, w)
    loyalty, state = dsns(program)
    ensure_state_schema(state)
    MoEngageHook(moengage_conn_id=program.moengage_conn_id).preflight()
    with connect(loyalty) as conn:
        conn.execute(SESSION_SETTINGS)
        for template in load_templates():
            describe(conn, template, w.params(program.id, 0, 1))
    return {"night": w.night.isoformat()}


@fails_fast("plan")
def plan(program: Program, context: dict[str, Any]) -> list[dict[str, Any]]:
    from loyalty_moengage.sync import dry_run

    if dry_run.is_dry_run(context):  # extract and transform into a throwaway area: sync/dry_run.py
        return dry_run.plan_task(program, context)
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.outbox import recover_orphans
    from loyalty_moengage.sync.plan import decide_attribute_refresh, latest_complete_night, plan_chunks

    started = time.perf_counter()
    w = window(program, context)
    _ensure_night_over(program, w)
    run_id = context["run_id"]
    params = context.get("params") or {}
    loyalty, state = dsns(program)
    newest = latest_complete_night(now(), program.time_zone)
    retention_floor = newest - timedelta(days=program.audit_retention_days)
    if w.night < retention_floor:
        raise _fail(
            f"night {w.night} is older than the audit retention ({program.audit_retention_days} days): the "
            "record of which events were sent is gone, so syncing it could send duplicates. Raise "
            "audit_retention_days in the programs file if this night must be synced."
        )
    with connect(loyalty) as conn:
        chunks = plan_chunks(conn, program.id, chunk_members=program.chunk_members)
    with connect(state) as conn:
        # Only claims whose lease ran out: other runs of this program may be sending right now.
        orphans, released = recover_orphans(conn, program.id)
        if orphans:
            log.warning("%d batch(es) were mid-POST when their load attempt stopped: marked uncertain", orphans)
        # A cleared run plans again; its earlier chunk stats are redone.
        conn.execute("DELETE FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s "
                     "AND stage IN ('transform', 'guard')", (program.id, run_id))
        conn.commit()
        refresh, why = decide_attribute_refresh(conn, program_id=program.id, night=w.night, run_id=run_id,
                                                latest_night=newest, force=bool(params.get("force_attributes")))
    if not refresh:
        log.warning("Skipping the attribute refresh for night %s: %s. This night's events are still sent.", w.night, why)
    _record(state, program, w.night, run_id, "plan", "plan", {
        "chunks": len(chunks), "send_users": refresh, "skip_reason": why, "orphans_uncertain": orphans,
        "seconds": round(time.perf_counter() - started, 4)})
    log.info("night %s (%s .. %s UTC): %d chunk(s)", w.night, w.start, w.end, len(chunks))
    return [{**c, "send_users": refresh} for c in chunks]


@fails_fast("transform")
def transform(program: Program, chunk: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    from loyalty_moengage.sync import dry_run
    from loyalty_moengage.sync.transform import transform_chunk

    if dry_run.is_dry_run(context):
        return dry_run.transform_task(program, chunk, context)

    w = window(program, context)
    loyalty, state = dsns(program)
    lookup = None
    if program.verify_customers:
        from loyalty_moengage.moengage.hook import MoEngageHook

        lookup = MoEngageHook(moengage_conn_id=program.moengage_conn_id, share=1 / TRANSFORM_CONCURRENCY).existing_customers
    stats = transform_chunk(lookup=lookup, program_id=program.id, window=w, lo=chunk["lo"], hi=chunk["hi"], label=chunk["label"],
                            run_id=context["run_id"], send_users=chunk["send_users"],
                            loyalty_dsn=loyalty, state_dsn=state)
    log.info("%s: %s", chunk["label"], stats)
    return {k: stats[k] for k in ("label", "events_enqueued", "members_enqueued", "batches")}


@fails_fast("guard")
def guard(program: Program, context: dict[str, Any]) -> dict[str, Any]:
    from loyalty_moengage.sync import dry_run, guard as anomaly
    from loyalty_moengage.db import connect

    if dry_run.is_dry_run(context):  # nothing was enqueued: nothing to release or withdraw
        return {"dry_run": True}

    w = window(program, context)
    _, state = dsns(program)
    params = context.get("params") or {}
    with connect(state) as conn:
        totals = anomaly.check(conn, program=program, night=w.night, run_id=context["run_id"])
        problems = totals["problems"]
        if problems and params.get("skip_anomaly_guard"):
            log.warning("anomaly guard overridden by the run's params: %s", problems)
            totals["overridden"] = True
        elif problems:
            withdrawn = anomaly.withdraw_night(conn, program.id, w.night, context["run_id"])
            totals["withdrawn_batches"] = withdrawn
            _record(state, program, w.night, context["run_id"], "guard", "guard", totals)
            raise anomaly.AnomalyError(
                f"Night {w.night} of program {program.id} held before sending anything: " + "; ".join(problems)
                + f". {withdrawn} batch(es) withdrawn. Fix the cause and clear this run, or trigger it with "
                "params {\"skip_anomaly_guard\": true} if the night is genuinely unusual."
            )
        totals["released_batches"] = anomaly.release_night(conn, program.id, w.night)
    _record(state, program, w.night, context["run_id"], "guard", "guard", totals)
    return {k: v for k, v in totals.items() if k != "problems"}


@fails_fast("load")
def load(program: Program, slot: int, context: dict[str, Any]) -> dict[str, Any]:
    from loyalty_moengage.sync import dry_run

    if dry_run.is_dry_run(context):  # a dry run sends nothing
        return {"slot": slot, "dry_run": True, "batches_sent": 0, "batches_rejected": 0, "batches_uncertain": 0}
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.load import load_slot

    w = window(program, context)
    _, state = dsns(program)
    # Never retry_uncertain: under policy resend the outbox records the batch uncertain first and
    # re-queues it where the report counts it (load._send_one), so no resend goes unreported.
    hook = MoEngageHook(moengage_conn_id=program.moengage_conn_id, share=program.load_share)
    ti = context.get("ti")
    stats = load_slot(program_id=program.id, slot=slot, night=w.night, run_id=context["run_id"], state_dsn=state,
                      hook=hook, uncertain_policy=program.uncertain_policy,
                      attempt=getattr(ti, "try_number", 1) or 1, claim_size=_claim_size(hook))
    return {k: stats[k] for k in ("slot", "batches_sent", "batches_rejected", "batches_uncertain")}


def _claim_size(hook: Any) -> int:
    """Paced, a slot claims one batch at a time: a slot holding 8 claimed batches (tens of seconds at
    its share of the budget) while the other slots have run out leaves their share unspent at the end
    of the night. Unpaced, 8 at a time saves round-trips."""
    from loyalty_moengage.sync.load import CLAIM_SIZE

    return 1 if hook.config.pacing else CLAIM_SIZE


def report(program: Program, context: dict[str, Any]) -> dict[str, Any]:
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync import dry_run, run_note, report as rep

    if dry_run.is_dry_run(context):  # no run report: the dry run's own, in moengage_sync.dry_runs
        return dry_run.report_task(program, context)
    from loyalty_moengage.sync.outbox import recover_orphans

    started = time.perf_counter()
    w = window(program, context)
    run_id = context["run_id"]
    _, state = dsns(program)
    with connect(state) as conn:
        in_flight = rep.wait_for_in_flight(conn, program.id, w.night)
        # After the wait: a batch whose owner died mid-POST is counted uncertain, not unsent.
        recover_orphans(conn, program.id)
        stages = rep.stage_summary(conn, program.id, run_id)
        outcome, notes = rep.assess(
            program_id=program.id, night=w.night, plan_info=stages.plan, chunks_done=stages.chunks_done,
            guard_info=stages.guard, night_batches=rep.batch_states(conn, program.id, w.night),
            attention=rep.needs_attention(conn, program.id, w.night), uncertain_policy=program.uncertain_policy,
            errors=stages.errors)
        if in_flight:
            notes.append(f"{in_flight} batch(es) of this night were still being sent by another run when "
                         "this report was written")
        if stages.requeued_uncertain:
            notes.append(f"{stages.requeued_uncertain} uncertain batch(es) were resent by policy: possible duplicates")
        stages.seconds["report"] = time.perf_counter() - started
        body = rep.build(conn, program_id=program.id, night=w.night, run_id=run_id, window_start=w.start,
                         window_end=w.end, outcome=outcome, stage_seconds=stages.seconds,
                         attributes_skipped=bool(stages.plan.get("skip_reason")), notes=notes)
        rep.write(conn, body)
        retention = rep.enforce_retention(conn, program_id=program.id, night=w.night,
                                          retention_days=program.audit_retention_days,
                                          keep_sent_bodies=program.keep_sent_bodies)
        # The row is written before retention (so a failure there still leaves it); the report
        # stage's time, retention included, is filled in afterwards.
        body["stage_seconds"]["report"] = round(time.perf_counter() - started, 3)
        rep.write(conn, body)
    log.info("\n%s", rep.render(body))
    log.info("retention: %s", retention)
    run_note.push(context, run_note.text(body, program.time_zone))  # the DAG run's note (run_note.py)
    if outcome != "success":
        # Not green in the grid, and the DAG's failure callbacks alert.
        raise _fail(f"night {w.night} of program {program.id} is {outcome}: " + "; ".join(notes))
    return {"outcome": outcome, "events_sent": body["events_sent"], "members_updated": body["members_updated"]}
