"""What each task of the nightly sync does, given the program and Airflow's context.

The DAG file only wires these together; everything here can be called (and is tested)
without a scheduler. Each task picks the night's sink once (:func:`sink_for`: the outbox, or
the dry run's area) and never asks which it is. Imports of pandas, pyarrow and psycopg happen
inside the functions so DAG parsing stays cheap.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import date, timedelta
from typing import Any, Callable

from loyalty_moengage.config.programs import Program
from loyalty_moengage.night import NightNotOverError, Window, ensure_over, from_context, latest_complete_night
from loyalty_moengage.sync.ops import lineage
from loyalty_moengage.sync.chunk.sink import Sink

log = logging.getLogger(__name__)

TRANSFORM_CONCURRENCY = 2   # mapped transform tasks at once per run; they share the lookup budget


def _fail(message: str) -> Exception:
    """An error no retry can mend: the task fails at once, saying what to do."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(message)


def _permanent_cause(exc: BaseException) -> str | None:
    """The message of an error no retry can mend (configuration, a broken template, data that
    fails a template, credentials MoEngage refuses), else None."""
    from loyalty_moengage.moengage.errors import MoEngageConfigError, is_config_failure
    from loyalty_moengage.sync.chunk.contract import ContractError, TemplateDataError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ContractError, TemplateDataError, MoEngageConfigError)):
            return str(seen)
        if is_config_failure(seen):
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

        from loyalty_moengage.sync.report.stats import record_stats

        _, state = dsns(program)
        with connect(state) as conn:
            if conn.execute("SELECT to_regclass('moengage_sync.task_stats')").fetchone()[0] is None:
                return
            if message is None:
                conn.execute("DELETE FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s "
                             "AND stage = 'error' AND task_key = %s", (program.id, context["run_id"], key))
            else:
                record_stats(conn, program_id=program.id, night=from_context(program.time_zone, context).night,
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


def _ensure_night_over(w: Window) -> None:
    try:
        ensure_over(w)
    except NightNotOverError as exc:
        raise _fail(str(exc)) from None


def dsns(program: Program) -> tuple[str, str]:
    from loyalty_moengage.db import loyalty_dsn

    loyalty = loyalty_dsn(program.loyalty_conn_id)
    state = loyalty if program.state_conn == program.loyalty_conn_id else loyalty_dsn(program.state_conn)
    return loyalty, state


def is_dry_run(context: dict[str, Any]) -> bool:
    params = context.get("params") or {}
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    return bool(params.get("dry_run") or conf.get("dry_run"))


def load_share(program: Program, context: dict[str, Any]) -> float:
    """A load slot's share of the workspace budget: 1/pool slots under a scheduler, where the
    slots send side by side; the whole budget in-process (``runner.run_night``), where they run
    one after another and a half-budget slot would take twice the floor."""
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    return 1.0 if conf.get("in_process") else program.load_share


def sink_for(program: Program, context: dict[str, Any]) -> Sink:
    """The run's sink: the dry run's area when the run was triggered with ``dry_run``, else the outbox."""
    from loyalty_moengage.sync.sinks.dry_run import DryRunSink
    from loyalty_moengage.sync.sinks.outbox_sink import OutboxSink

    _, state = dsns(program)
    return DryRunSink(state) if is_dry_run(context) else OutboxSink(state)


@fails_fast("preflight")
def preflight(program: Program, context: dict[str, Any]) -> dict[str, Any]:
    """Prove the MoEngage credentials on the configured data centre and the templates' columns."""
    from loyalty_moengage.db import connect, ensure_state_schema
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.chunk.contract import load_templates
    from loyalty_moengage.sync.chunk.extract import SESSION_SETTINGS, describe

    w = from_context(program.time_zone, context)
    _ensure_night_over(w)
    loyalty, state = dsns(program)
    ensure_state_schema(state)
    hook = MoEngageHook(moengage_conn_id=program.moengage_conn_id)
    hook.preflight()
    if program.verify_customers or program.receipts:
        _check_get_user_api(program, hook)
    with connect(loyalty) as conn:
        conn.execute(SESSION_SETTINGS)
        for template in load_templates():
            describe(conn, template, w.params(program.id, 0, 1))
    return {"night": w.night.isoformat()}


def _check_get_user_api(program: Program, hook: Any) -> None:
    """Customer checks and receipts read users back: say at once if the workspace cannot."""
    from loyalty_moengage.moengage.errors import MoEngagePermanentError

    try:
        hook.read_users(["loyalty-moengage-preflight"], [program.receipt_attribute])
    except MoEngagePermanentError as exc:
        uses = [name for name, on in (("verify_customers", program.verify_customers),
                                      ("receipts", program.receipts)) if on]
        raise _fail(f"{' and '.join(uses)} need MoEngage's Get User API, which refused a lookup: {exc.cause}. Ask "
                    "MoEngage to enable the Get User API for this workspace, or set "
                    + " and ".join(f"{u}: false" for u in uses) + f" for program {program.id} in the programs "
                    "file (README, Backfills and reruns, says what each costs).") from exc


def _within_retention(program: Program, w: Window, newest: Any) -> None:
    if w.night < newest - timedelta(days=program.audit_retention_days):
        raise _fail(
            f"night {w.night} is older than the audit retention ({program.audit_retention_days} days): the "
            "record of which events were sent is gone, so syncing it could send duplicates. Raise "
            "audit_retention_days in the programs file if this night must be synced."
        )


@fails_fast("plan")
def plan(program: Program, context: dict[str, Any]) -> list[dict[str, Any]]:
    """Member-id chunks of the night, each with the night's attribute-refresh decision and the
    earlier nights it re-reads for late rows (``plan.lookback_nights``)."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.chunk.plan import lookback_nights, plan_chunks

    started = time.perf_counter()
    w = from_context(program.time_zone, context)
    _ensure_night_over(w)
    run_id, params, sink = context["run_id"], context.get("params") or {}, sink_for(program, context)
    newest = latest_complete_night(program.time_zone)
    _within_retention(program, w, newest)
    loyalty, state = dsns(program)
    with connect(loyalty) as conn:
        chunks = plan_chunks(conn, program.id, chunk_members=program.chunk_members)
    with connect(state) as conn:
        housekeeping = sink.start_night(conn, program=program, window=w, run_id=run_id)
        refresh, why = sink.decide_refresh(conn, program_id=program.id, night=w.night, run_id=run_id,
                                           latest_night=newest, force=bool(params.get("force_attributes")))
        lookback = [d.isoformat() for d in lookback_nights(
            conn, program_id=program.id, night=w.night, nights=program.late_row_lookback_nights,
            oldest=newest - timedelta(days=program.audit_retention_days))]
    if not refresh:
        log.warning("Skipping the attribute refresh for night %s: %s. This night's events are still sent.", w.night, why)
    sink.record(program_id=program.id, night=w.night, run_id=run_id, stage="plan", key="plan", stats={
        "chunks": len(chunks), "send_users": refresh, "skip_reason": why, "lookback_nights": lookback,
        **housekeeping, "seconds": round(time.perf_counter() - started, 4)})
    log.info("night %s (%s .. %s UTC): %d chunk(s); re-reading night(s) %s for late rows", w.night, w.start, w.end,
             len(chunks), ", ".join(lookback) or "none")
    return [{**c, "send_users": refresh, "lookback": lookback} for c in chunks]


@fails_fast("transform")
def transform(program: Program, chunk: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """One chunk through the pipeline (``chunk.py``) into the run's sink."""
    from loyalty_moengage.sync.chunk.pipeline import run_chunk
    from loyalty_moengage.sync.chunk.job import ChunkJob

    loyalty, state = dsns(program)
    lookback = tuple(Window.of_night(date.fromisoformat(d), program.time_zone) for d in chunk.get("lookback", ()))
    job = ChunkJob(program_id=program.id, window=from_context(program.time_zone, context), lo=chunk["lo"],
                   hi=chunk["hi"], label=chunk["label"], run_id=context["run_id"], send_users=chunk["send_users"],
                   loyalty_dsn=loyalty, state_dsn=state, lookback=lookback)
    lookup = None
    if program.verify_customers:
        from loyalty_moengage.moengage.hook import MoEngageHook

        lookup = MoEngageHook(moengage_conn_id=program.moengage_conn_id,
                              share=1 / TRANSFORM_CONCURRENCY).existing_customers
    stats = run_chunk(job, sink_for(program, context), lookup=lookup)
    lineage.report_transform(loyalty_dsn=loyalty, state_dsn=state, dry_run=is_dry_run(context), context=program)
    log.info("%s: %s", chunk["label"], {k: v for k, v in stats.items() if k != "samples"})
    return {k: stats[k] for k in ("label", "events_enqueued", "members_enqueued", "batches")}


@fails_fast("guard")
def guard(program: Program, context: dict[str, Any]) -> dict[str, Any]:
    """The anomaly guard: the night is released to the loads, or held (``guard.py``). A held night
    fails at once (a retry would judge the same totals); anything else, a database blip, is
    retried: the guard decides in one transaction, so a failed try decided nothing."""
    from loyalty_moengage.sync.send.guard import AnomalyError

    override = bool((context.get("params") or {}).get("skip_anomaly_guard"))
    try:
        return sink_for(program, context).release(program=program, window=from_context(program.time_zone, context),
                                                  run_id=context["run_id"], override=override)
    except AnomalyError as exc:
        raise _fail(str(exc)) from exc


@fails_fast("load")
def load(program: Program, slot: int, context: dict[str, Any]) -> dict[str, Any]:
    """One load slot: sends what it can claim (``load.py``), paced at its share of the budget."""
    attempt = getattr(context.get("ti"), "try_number", 1) or 1
    result = sink_for(program, context).deliver(program=program, slot=slot,
                                                window=from_context(program.time_zone, context),
                                                run_id=context["run_id"], attempt=attempt,
                                                share=load_share(program, context))
    if not is_dry_run(context):
        lineage.report_load(state_dsn=dsns(program)[1], moengage_conn_id=program.moengage_conn_id)
    return result


@fails_fast("settle")
def settle(program: Program, context: dict[str, Any]) -> dict[str, Any]:
    """Lost answers settled by MoEngage's evidence (``settle.py``), and what that freed sent."""
    attempt = getattr(context.get("ti"), "try_number", 1) or 1
    return sink_for(program, context).settle(program=program, window=from_context(program.time_zone, context),
                                             run_id=context["run_id"], attempt=attempt,
                                             share=load_share(program, context))


def refresh_presence(program: Program, context: dict[str, Any]) -> dict[str, Any]:
    """The presence cache filled ahead of the nights (``sync/ops/presence_refresh.py``), at a
    load task's share of the Get User API budget, for ``presence_refresh_minutes``."""
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.ops.presence_refresh import refresh_presence as refresh

    loyalty, state = dsns(program)
    hook = MoEngageHook(moengage_conn_id=program.moengage_conn_id, share=load_share(program, context))
    return refresh(program_id=program.id, loyalty_dsn=loyalty, state_dsn=state, lookup=hook.existing_customers,
                   seconds=program.presence_refresh_minutes * 60, since_days=program.presence_refresh_days,
                   lifetime_hours=program.presence_lifetime_hours)


def _emit_metrics(program: Program, body: dict[str, Any], context: dict[str, Any]) -> None:
    """The night's figures as Airflow metrics (``metrics.py``); a metrics problem never fails the night."""
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.ops import metrics

    try:
        config = MoEngageHook(moengage_conn_id=program.moengage_conn_id).config
        started = getattr(context.get("dag_run"), "start_date", None)
        metrics.emit(program.id, metrics.night_figures(body, started=started, users_per_minute=config.users_per_minute,
                                                       events_per_minute=config.events_per_minute))
    except Exception as exc:  # noqa: BLE001 - observability must not turn a night red
        log.warning("metrics not emitted: %s: %s", type(exc).__name__, exc)


def report(program: Program, context: dict[str, Any]) -> dict[str, Any]:
    """The night's report in the task log and the run's note; anything but success fails the task."""
    from loyalty_moengage.sync.ops import assets, run_note

    w = from_context(program.time_zone, context)
    body, text, note = sink_for(program, context).report(program=program, window=w, run_id=context["run_id"])
    log.info("\n%s", text)
    run_note.push(context, note)  # the DAG run's note (run_note.py)
    if not is_dry_run(context):
        _emit_metrics(program, body, context)
    if body["outcome"] != "success":
        # Not green in the grid, and the DAG's failure callbacks alert.
        raise _fail(f"night {w.night} of program {program.id} is {body['outcome']}: " + "; ".join(body["notes"]))
    assets.emit_night(context, program, {**body, "dry_run": is_dry_run(context) or body.get("dry_run")})
    return {k: body[k] for k in ("outcome", "events_sent", "members_updated", "events", "members", "requests",
                                 "dry_run") if k in body}


def live(program: Program, context: dict[str, Any]) -> dict[str, Any]:
    """One live run (``sync/live/run.py``): the events recorded since the last one, sent at the
    live lane's share of the workspace budget. A lag over the alert setting or an error no retry
    can mend fails at once (the alert fires); a database or network blip is retried."""
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.config.programs import load_programs
    from loyalty_moengage.db import ensure_state_schema
    from loyalty_moengage.sync.live.run import LiveLagError, LiveRun, live_share, run_live

    loyalty, state = dsns(program)
    ensure_state_schema(state)    # the live lane may run before the night after an upgrade
    attempt = getattr(context.get("ti"), "try_number", 1) or 1
    # The programs sending to this workspace: their nights are seen when they keep state where this one does.
    peers = [p for p in load_programs() if p.enabled and p.moengage_conn_id == program.moengage_conn_id]
    share = program.live.budget_share
    if all(dsns(p)[1] == state for p in peers):
        share = live_share(state, [p.id for p in peers], share)
    hook = MoEngageHook(moengage_conn_id=program.moengage_conn_id, share=share)
    lookup = None
    if program.verify_customers:
        lookup = MoEngageHook(moengage_conn_id=program.moengage_conn_id, share=share).existing_customers
    try:
        stats = run_live(LiveRun.of(program, context["run_id"], attempt, loyalty, state), hook=hook, lookup=lookup,
                         on_stats=lambda s: _emit_live_metrics(program, s))
        return {k: v for k, v in stats.items() if not isinstance(v, dict)}
    except LiveLagError as exc:
        raise _fail(str(exc)) from exc
    except Exception as exc:
        cause = _permanent_cause(exc)
        if cause:
            raise _fail(cause) from exc
        raise


def _emit_live_metrics(program: Program, stats: dict[str, Any]) -> None:
    from loyalty_moengage.sync.ops import metrics

    try:
        metrics.emit(program.id, metrics.live_figures(stats), counters=metrics.LIVE_COUNTERS, gauges=metrics.LIVE_GAUGES)
    except Exception as exc:  # noqa: BLE001 - observability must not fail a live run
        log.warning("live metrics not emitted: %s: %s", type(exc).__name__, exc)
