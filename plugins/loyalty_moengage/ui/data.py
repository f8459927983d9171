"""What the tabs show, read from the sync's state (``moengage_sync``) and Airflow's DAG runs.

Every number of a night comes from ``moengage_sync.run_reports``: a night's events and members
are the sums over its runs' reports (each report counts its own run's work, so they add up to
what MoEngage received); its outcome, quarantine, batches and uncertain batches are those of
its latest report (they judge the night).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from loyalty_moengage.night import Window, from_context, latest_complete_night
from loyalty_moengage.night import now as clock
from loyalty_moengage.sync.outbox.states import UNSETTLED

HISTORY_NIGHTS = 60
SAMPLES_PER_REASON = 3


def program_for_dag(dag_id: str) -> Any | None:
    from loyalty_moengage.config.programs import load_programs

    return next((p for p in load_programs() if dag_id in (p.dag_id, p.live_dag_id)), None)


def _state_conn(program: Any) -> Any:
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.tasks import dsns

    _, state = dsns(program)
    return connect(state)


def _airflow_runs(dag_id: str, run_id: str | None = None, run_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The DAG's runs in Airflow's metadata database (empty when not inside Airflow)."""
    try:
        from sqlalchemy import select

        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        with create_session() as session:
            q = select(DagRun).where(DagRun.dag_id == dag_id)
            if run_id is not None:
                q = q.where(DagRun.run_id == run_id)
            if run_ids is not None:
                q = q.where(DagRun.run_id.in_(run_ids))
            out = {}
            for dr in session.scalars(q):
                out[dr.run_id] = {"run_id": dr.run_id, "state": str(dr.state), "run_type": str(dr.run_type),
                                  "start_date": dr.start_date, "end_date": dr.end_date, "note": dr.note,
                                  "conf": dict(dr.conf or {}), "data_interval_start": dr.data_interval_start,
                                  "data_interval_end": dr.data_interval_end, "logical_date": dr.logical_date,
                                  "run_after": dr.run_after}
            return out
    except Exception:
        return {}


def local(ts: datetime | None, time_zone: str) -> str:
    if ts is None:
        return ""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(ZoneInfo(time_zone)).strftime("%Y-%m-%d %H:%M:%S %Z")


def backfill_command(dag_id: str, first: date, last: date, time_zone: str) -> str:
    return (f"airflow backfill create --dag-id {dag_id} "
            f"--from-date {Window.of_night(first, time_zone).logical_start} "
            f"--to-date {Window.of_night(last, time_zone).logical_start} --reprocess-behavior failed --max-active-runs 1")


@dataclass
class Night:
    night: date
    reports: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float | None = None
    floor_s: float | None = None

    @property
    def missed(self) -> bool:
        return not self.reports

    @property
    def latest(self) -> dict[str, Any]:
        return self.reports[-1]

    @property
    def outcome(self) -> str:
        return "missed" if self.missed else self.latest["outcome"]

    def total(self, key: str) -> int:
        """A run's own work adds up over the night's runs; what the night sent is in its latest report."""
        if key in NIGHT_TOTALS:
            return int(self.reports[-1][key] or 0) if self.reports else 0
        return sum(int(r[key] or 0) for r in self.reports)

    @property
    def events_by_type(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for r in self.reports:
            c.update(r["events_by_type"])
        return dict(sorted(c.items()))

    @property
    def quarantined(self) -> int:
        return 0 if self.missed else sum(self.latest["quarantined_by_reason"].values())

    @property
    def uncertain(self) -> int:
        return 0 if self.missed else int(self.latest["uncertain_batches"])

    @property
    def unsent(self) -> int:
        return 0 if self.missed else sum(n for s, n in self.latest["batches_by_state"].items() if s in UNSETTLED)


#: Report columns that count the whole night, whichever run sent it (sync/report/report.py).
NIGHT_TOTALS = ("events_sent", "members_updated", "uncertain_batches")


def budget(program: Any) -> tuple[float, float, str]:
    from loyalty_moengage.sync.sinks.dry_run import budget as dry_budget

    return dry_budget(program.moengage_conn_id)


def history(program: Any, *, nights: int = HISTORY_NIGHTS, now: datetime | None = None) -> dict[str, Any]:
    newest = latest_complete_night(program.time_zone, now or clock())
    first = max(date.fromisoformat(str(program.start_date)[:10]), newest - timedelta(days=nights - 1))
    with _state_conn(program) as conn:
        have = conn.execute("SELECT to_regclass('moengage_sync.run_reports')").fetchone()[0]
        rows = [] if have is None else conn.execute(
            "SELECT night, run_id, outcome, events_by_type, events_enqueued, events_sent, events_already_sent, "
            "members_updated, quarantined_by_reason, batches_by_state, uncertain_batches, needs_attention, "
            "stage_seconds, notes, reported_at FROM moengage_sync.run_reports "
            "WHERE program_id = %s AND night BETWEEN %s AND %s ORDER BY night, reported_at",
            (program.id, first, newest)).fetchall()
    cols = ("night", "run_id", "outcome", "events_by_type", "events_enqueued", "events_sent", "events_already_sent",
            "members_updated", "quarantined_by_reason", "batches_by_state", "uncertain_batches", "needs_attention",
            "stage_seconds", "notes", "reported_at")
    by_night = {first + timedelta(days=i): Night(first + timedelta(days=i)) for i in range((newest - first).days + 1)}
    for row in rows:
        r = dict(zip(cols, row))
        by_night[r["night"]].reports.append(r)
    runs = _airflow_runs(program.dag_id, run_ids=sorted({n.latest["run_id"] for n in by_night.values() if not n.missed}))
    upm, epm, source = budget(program)
    for n in by_night.values():
        if n.missed:
            continue
        run = runs.get(n.latest["run_id"])
        if run and run["start_date"] and run["end_date"]:
            n.duration_s = (run["end_date"] - run["start_date"]).total_seconds()
        else:
            n.duration_s = float(sum(n.latest["stage_seconds"].values()))
        n.floor_s = 60.0 * max(n.total("members_updated") / upm if upm else 0.0,
                               n.total("events_sent") / epm if epm else 0.0)
    ordered = [by_night[d] for d in sorted(by_night, reverse=True)]
    retention_floor = newest - timedelta(days=program.audit_retention_days)
    missed = sorted(n.night for n in ordered if n.missed)
    backfillable = [d for d in missed if d >= retention_floor]
    ranges: list[tuple[date, date]] = []
    for d in backfillable:
        if ranges and (d - ranges[-1][1]).days == 1:
            ranges[-1] = (ranges[-1][0], d)
        else:
            ranges.append((d, d))
    return {
        "program": program, "newest": newest, "first": first, "nights": ordered, "runs": runs,
        "users_per_minute": upm, "events_per_minute": epm, "budget_source": source,
        "missed": missed, "missed_beyond_retention": [d for d in missed if d < retention_floor],
        "retention_floor": retention_floor,
        "backfill_ranges": [(a, b, backfill_command(program.dag_id, a, b, program.time_zone)) for a, b in ranges],
        "backfill_all": (backfill_command(program.dag_id, backfillable[0], backfillable[-1], program.time_zone)
                         if backfillable else None),
    }


def run_detail(program: Any, run_id: str) -> dict[str, Any]:
    runs = _airflow_runs(program.dag_id, run_id)
    out: dict[str, Any] = {"program": program, "run_id": run_id, "airflow": runs.get(run_id), "report": None,
                           "dry_run": None, "night": None}
    with _state_conn(program) as conn:
        from loyalty_moengage.sync.report.report import stored

        report = stored(conn, program.id, run_id)
        if report:
            out["report"] = report
            out["night"] = date.fromisoformat(report["night"])
        else:
            have = conn.execute("SELECT to_regclass('moengage_sync.dry_runs')").fetchone()[0]
            dry = None if have is None else conn.execute(
                "SELECT stats FROM moengage_sync.dry_runs WHERE program_id = %s AND run_id = %s AND task_key = 'report'",
                (program.id, run_id)).fetchone()
            if dry:
                out["dry_run"] = dry[0]
                out["night"] = date.fromisoformat(dry[0]["night"])
        if out["night"] is None and out["airflow"]:
            a = out["airflow"]
            out["night"] = from_context(program.time_zone, {"data_interval_start": a["data_interval_start"],
                                                            "data_interval_end": a["data_interval_end"],
                                                            "logical_date": a["logical_date"]}).night
        night = out["night"]
        if night is None:
            return out
        out["batches_now"] = {s: n for s, n in conn.execute(
            "SELECT state, count(*) FROM moengage_sync.batches WHERE program_id = %s AND night = %s GROUP BY state",
            (program.id, night))}
        out["quarantine_samples"] = {}
        for reason, template, key, why in conn.execute(
                "SELECT reason, template, row_key, row_data->>'_reason' FROM ("
                " SELECT *, row_number() OVER (PARTITION BY reason ORDER BY quarantine_id) AS k"
                " FROM moengage_sync.quarantine WHERE program_id = %s AND night = %s) q WHERE k <= %s "
                "ORDER BY reason, k", (program.id, night, SAMPLES_PER_REASON)):
            out["quarantine_samples"].setdefault(reason, []).append(
                {"template": template, "row_key": key, "detail": why})
        out["settled"] = {by: (n, int(e)) for by, n, e in conn.execute(
            "SELECT settled_by, count(*), coalesce(sum(events), 0) FROM moengage_sync.batches WHERE program_id = %s "
            "AND night = %s AND settled_by IS NOT NULL GROUP BY settled_by", (program.id, night))}
        out["uncertain"] = [dict(zip(("batch_id", "night", "kind", "events", "users", "attempts", "http_status",
                                      "error", "updated_at"), r)) for r in conn.execute(
            "SELECT batch_id, night, kind, events, users, attempts, http_status, error, updated_at "
            "FROM moengage_sync.batches WHERE program_id = %s AND state = 'uncertain' ORDER BY night, batch_id",
            (program.id,))]
        plan = conn.execute(
            "SELECT stats FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s AND stage = 'plan'",
            (program.id, run_id)).fetchone()
        out["plan"] = plan[0] if plan else {}
    return out


def resolve_commands(program_id: str, night: date | str) -> dict[str, str]:
    base = "loyalty-moengage"
    return {
        "resend": f'{base} resend --program {program_id} --night {night} --requested-by YOU '
                  f'--reason "checked MoEngage: batch missing"',
        "resolve": f'{base} resolve --program {program_id} --night {night} --requested-by YOU '
                   f'--reason "checked MoEngage: all there"',
    }


def live_today(program: Any, *, now: datetime | None = None) -> dict[str, Any] | None:
    """The live lane now (docs/live.md): its lag, and today's live runs (the program's local day)
    summed: events sent, their latency percentiles from the runs' merged histograms. None when
    the program has no live lane."""
    from zoneinfo import ZoneInfo

    from loyalty_moengage.night import local_midnight
    from loyalty_moengage.sync.live.run import empty_buckets, live_lag_seconds
    from loyalty_moengage.sync.tasks import dsns

    if not program.live.enabled:
        return None
    day = (now or clock()).astimezone(ZoneInfo(program.time_zone)).date()
    with _state_conn(program) as conn:
        rows = [r[0] for r in conn.execute(
            "SELECT stats FROM moengage_sync.task_stats WHERE program_id = %s AND stage = 'live' "
            "AND recorded_at >= %s ORDER BY recorded_at", (program.id, local_midnight(day, program.time_zone)))]
    buckets = empty_buckets()
    for stats in rows:
        for k, v in (stats.get("latency_buckets") or {}).items():
            buckets[k] = buckets.get(k, 0) + v
    return {"day": day, "runs": len(rows), "events_sent": sum(s.get("events_sent", 0) for s in rows),
            "lag_seconds": live_lag_seconds(dsns(program)[1], program.id), "last": rows[-1] if rows else None,
            "latency": {q: bucket_percentile(buckets, q) for q in (0.5, 0.95, 1.0)}, "dag_id": program.live_dag_id,
            "alert_seconds": program.live.alert_lag_minutes * 60}


def bucket_percentile(buckets: dict[str, int], q: float) -> str | None:
    """The histogram bucket that holds the q-quantile, as "<= N s" (or "> the last bound")."""
    total = sum(buckets.values())
    if not total:
        return None
    seen = 0
    for bound, n in buckets.items():
        seen += n
        if seen >= q * total:
            return f"> {list(buckets)[-2]} s" if bound == "inf" else f"<= {bound} s"
    return None
