"""Benchmark of the live lane under real ``airflow scheduler`` processes (``make bench-live``).

A writer commits loyalty events into the loyalty database (50 a second by default, a burst of
5,000 in one transaction, and transactions held open across live runs) while a real stack
(scheduler with LocalExecutor, dag-processor, api-server) runs ``moengage_live_<program>``
every minute against the sandbox at MoEngage's real limits. The program's time zone is picked so
that its local midnight falls inside the writing: the scheduler then starts the night of the
day that just ended while live runs go on, and afterwards a backfill reruns that night. Figures:
latency from each row's commit to MoEngage's 200 (the sandbox's arrival time of the request that
carried it): p50, p95, max; rows lost and sent twice over the live runs, the night and the
backfill; scheduler, worker, dag-processor and api-server CPU. Report:
``bench/results/live-latest.md`` (and ``.json``). Development tool only.

    python -m loyalty_moengage_devtools.bench.live --dsn postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from loyalty_moengage_devtools.airflow_stack import PROJECT_ROOT, with_database

RESULTS = PROJECT_ROOT / "bench" / "results"
PROGRAM = "benchlive"


def zone_with_midnight(lo: datetime, hi: datetime) -> tuple[str, datetime] | None:
    """A time zone whose next local midnight falls in ``[lo, hi]`` (UTC), nearest the middle."""
    middle = lo + (hi - lo) / 2
    best: tuple[timedelta, str, datetime] | None = None
    for name in sorted(available_timezones()):
        if not (name.startswith(("Etc/", "Asia/", "Europe/", "America/", "Australia/", "Pacific/", "Africa/"))):
            continue
        zone = ZoneInfo(name)
        local = lo.astimezone(zone)
        midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), zone).astimezone(timezone.utc)
        if lo <= midnight <= hi and (best is None or abs(midnight - middle) < best[0]):
            best = (abs(midnight - middle), name, midnight)
    return (best[1], best[2]) if best else None


def _cpu(proc: Any) -> dict[str, float]:
    """CPU seconds of one Airflow component: its own, and its descendants' (live and reaped)."""
    import psutil

    try:
        p = psutil.Process(proc.pid)
        t = p.cpu_times()
        own = t.user + t.system
        rest = t.children_user + t.children_system
        for child in p.children(recursive=True):
            try:
                c = child.cpu_times()   # a live worker's own, and its task processes' it has reaped
                rest += c.user + c.system + c.children_user + c.children_system
            except psutil.Error:
                pass
        return {"own": own, "descendants": rest}
    except psutil.Error:
        return {"own": 0.0, "descendants": 0.0}


def cpu_snapshot(stack: Any) -> dict[str, dict[str, float]]:
    return {name: _cpu(proc) for name, proc in stack.procs.items()}


def cpu_used(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], seconds: float) -> dict[str, Any]:
    used = {}
    for name in after:
        own = after[name]["own"] - before.get(name, {}).get("own", 0.0)
        rest = after[name]["descendants"] - before.get(name, {}).get("descendants", 0.0)
        used[name] = {"cpu_seconds": round(own, 1), "descendants_cpu_seconds": round(rest, 1),
                      "share_of_one_core": round(own / seconds, 3) if seconds else None}
    return used


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 2)


def receive_times(sandbox: Any, workspace: str) -> dict[int, list[float]]:
    """Every arrival of every writer row at the sandbox (by its unique points value)."""
    from loyalty_moengage_devtools.live_writer import FIRST_POINTS

    at = {r["request_id"]: r["time"] for r in sandbox.state.requests() if r.get("request_id") and "time" in r}
    out: dict[int, list[float]] = {}
    for e in sandbox.state.events(workspace):
        points = (e.get("attributes") or {}).get("points")
        if e.get("action") == "loyalty_points_earned" and isinstance(points, int) and points >= FIRST_POINTS:
            out.setdefault(points, []).append(at.get(e.get("request_id"), float("nan")))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loyalty_moengage_devtools.bench.live", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=None, help="Postgres server for the loyalty, state and Airflow databases "
                                                    "(default: an embedded one of the benchmark's own)")
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the writer writes (default 30)")
    parser.add_argument("--rate", type=float, default=50.0, help="rows committed per second (default 50)")
    parser.add_argument("--burst", type=int, default=5_000, help="rows of the burst, one transaction (default 5,000)")
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=1, help="live.every_minutes (default 1)")
    parser.add_argument("--attributes", action=argparse.BooleanOptionalAction, default=True,
                        help="live.attributes: members' attributes beside their events (default on)")
    parser.add_argument("--out", type=Path, default=RESULTS / "live-latest.json")
    args = parser.parse_args(argv)
    figures = on_server(args, run, "bench-live-pgdata")
    write_report(args.out, figures, render(figures))
    return 0 if figures["verdict"]["held"] else 1


def on_server(args: argparse.Namespace, run: Any, data_dir: str) -> dict[str, Any]:
    """``run(args)`` on ``args.dsn``, or on an embedded server of the benchmark's own (stopped after)."""
    from contextlib import ExitStack

    with ExitStack() as servers:
        if args.dsn is None:
            from loyalty_moengage.embedded import owned_server

            args.dsn = servers.enter_context(owned_server(data_dir))
        return run(args)


def write_report(out: Path, figures: dict[str, Any], text: str) -> None:
    """The figures as JSON beside their Markdown report, which is printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    from loyalty_moengage_devtools.live_writer import LiveWriter, Plan

    seconds = args.minutes * 60
    start = datetime.now(timezone.utc)
    picked = zone_with_midnight(start + timedelta(seconds=min(300, seconds / 3)),
                                start + timedelta(seconds=seconds - min(300, seconds / 3)))
    zone, midnight = picked if picked else ("Asia/Kolkata", None)
    database = f"lm_bench_live_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    dsn = with_database(args.dsn, database)
    plan = Plan(rate=args.rate, seconds=seconds, bursts={round(seconds / 3): args.burst},
                holds=[(round(seconds / 6), 90.0), (round(seconds * 2 / 3), 150.0)])
    print(f"[bench-live] zone {zone} (local midnight {midnight}), {args.minutes:g} min at {args.rate:g} rows/s, "
          f"burst {args.burst:,} at {plan.bursts}, held transactions {plan.holds}", flush=True)
    try:
        figures = _measure(args, dsn, zone, midnight, plan, LiveWriter)
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    figures.update({"started": start.isoformat(), "zone": zone, "local_midnight_utc": midnight, "plan": vars(plan),
                    "command": "python -m loyalty_moengage_devtools.bench.live " + " ".join(sys.argv[1:])})
    return figures


def _measure(args: argparse.Namespace, dsn: str, zone: str, midnight: datetime | None, plan: Any,
             writer_cls: Any) -> dict[str, Any]:
    import os
    import tempfile

    from loyalty_moengage_devtools.drills import API_KEY, WORKSPACE, program_env, today_in

    work = Path(tempfile.mkdtemp(prefix="lm-bench-live-"))
    settings = {"live": {"enabled": True, "every_minutes": args.every, "alert_lag_minutes": 60,
                         "attributes": args.attributes},
                "load_parallelism": 2}
    today = today_in(zone)
    with program_env(dsn, work, program_id=PROGRAM, time_zone=zone, members=args.members, days=3, seed=3,
                     settings=settings, history_end=today - timedelta(days=1), visibility=2.0) as env:
        # MoEngage's real limits (the drills raise the Get User budget; the benchmark does not), and
        # the presence cache filled as `loyalty-moengage presence import` fills it from an export.
        os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"] = env.sandbox.connection_json(
            WORKSPACE, API_KEY, dc="03", timeout=5, visibility_seconds=2.0)
        _seed_presence(dsn)
        return _under_scheduler(args, env, work, dsn, zone, midnight, plan, writer_cls)


def _seed_presence(dsn: str) -> None:
    import psycopg

    from loyalty_moengage.db import ensure_state_schema
    from loyalty_moengage.moengage.presence import record_answers

    ensure_state_schema(dsn)
    with psycopg.connect(dsn) as conn:
        ids = [r[0] for r in conn.execute("SELECT relation_reference FROM loyalty.members WHERE program_id = %s "
                                          "AND relation_reference IS NOT NULL", (PROGRAM,))]
        record_answers(conn, PROGRAM, ids, set(ids))


def _under_scheduler(args: argparse.Namespace, env: Any, work: Path, dsn: str, zone: str, midnight: datetime | None,
                     plan: Any, writer_cls: Any) -> dict[str, Any]:
    from loyalty_moengage_devtools.airflow_stack import airflow_stack
    from loyalty_moengage_devtools.drills import WORKSPACE

    with airflow_stack(args.dsn, root=work / "airflow", keep_root=True,
                       dag_ids=[env.dag_id, f"moengage_live_{PROGRAM}"]) as stack:
        live_dag = f"moengage_live_{PROGRAM}"
        stack.unpause(env.dag_id)          # the newest complete night now, the writer's night at its midnight
        stack.wait_runs(env.dag_id, count=1, timeout=600)
        stack.unpause(live_dag)
        cpu0, t0 = cpu_snapshot(stack), time.monotonic()
        writer = writer_cls(dsn, PROGRAM, plan).start()
        writer.join(plan.seconds + 600)
        print(f"[bench-live] writer done: {writer.written:,} rows committed", flush=True)
        stack.wait_for(lambda: set(writer.committed) <= set(receive_times(env.sandbox, WORKSPACE)), timeout=900,
                       what="every committed row received", interval=5)
        cpu = cpu_used(cpu0, cpu_snapshot(stack), time.monotonic() - t0)
        try:
            night = _night_and_backfill(stack, env, zone, midnight)
        except Exception as exc:  # the latency figures are kept; the report says what failed after them
            night = {"error": f"{type(exc).__name__}: {str(exc)[:1500]}"}
        balances = _balances(stack, env, dsn) if args.attributes else None
        arrivals = receive_times(env.sandbox, WORKSPACE)
        audit = env.audit()
        live_runs = [t for t in stack.task_instances(live_dag) if t["task_id"] == "send_live"]
        lags = _lags(dsn)
    latency = [min(arrivals[p]) - c for p, c in writer.committed.items() if p in arrivals]
    twice = sum(1 for p in writer.committed if len(arrivals.get(p, [])) > 1)
    lost = sum(1 for p in writer.committed if p not in arrivals)
    p95, top = percentile(latency, 0.95), percentile(latency, 1.0)
    held = (not writer.errors and writer.written == writer.planned and lost == 0 and twice == 0 and audit.duplicated == 0 and p95 is not None
            and p95 <= 120 and top <= 300 and "error" not in night and not (balances or {}).get("stale"))
    return {"written": writer.written, "planned": writer.planned, "writer_errors": writer.errors, "lost": lost, "sent_twice": twice,
            "latency_seconds": {"p50": percentile(latency, 0.5), "p95": p95, "max": top, "count": len(latency)},
            "live_runs": len(live_runs), "live_states": sorted({str(t["state"]) for t in live_runs}),
            "live_run_seconds": {"p50": percentile([_secs(t) for t in live_runs], 0.5),
                                 "max": percentile([_secs(t) for t in live_runs], 1.0)},
            "lag_seconds": lags, "cpu": cpu, "night": night, "audit": audit.as_dict(), "attributes": balances,
            "verdict": {"held": held, "target": "p95 <= 120 s, max <= 300 s, 0 lost, 0 sent twice, no balance stale"}}


def _balances(stack: Any, env: Any, dsn: str) -> dict[str, Any]:
    """After the night and its backfill, every touched member's balance in MoEngage as the loyalty
    database's: the live runs' attributes, the night's refresh after them, the owed updates."""
    from loyalty_moengage_devtools.drills import WORKSPACE
    from loyalty_moengage_devtools.live_writer import live_attribute_counts, stale_balances

    started = time.monotonic()
    stale = stale_balances(dsn, PROGRAM, env.sandbox.state.users(WORKSPACE))
    while stale and time.monotonic() - started < 300:
        time.sleep(10)
        stale = stale_balances(dsn, PROGRAM, env.sandbox.state.users(WORKSPACE))
    return {**live_attribute_counts(dsn, PROGRAM), "stale": len(stale),
            "seconds_until_none_stale": round(time.monotonic() - started, 1) if not stale else None}


def _secs(ti: dict[str, Any]) -> float:
    return (ti["end_date"] - ti["start_date"]).total_seconds() if ti.get("end_date") and ti.get("start_date") else 0.0


def _night_and_backfill(stack: Any, env: Any, zone: str, midnight: datetime | None) -> dict[str, Any]:
    """The night that ended inside the writing: wait for the scheduler's run of it, then backfill it."""
    if midnight is None:
        return {"note": "no time zone had its midnight inside the writing: no night of the writer's rows ran"}
    night = (midnight - timedelta(seconds=1)).astimezone(ZoneInfo(zone)).date()
    logical = datetime.combine(night, datetime.min.time(), ZoneInfo(zone))
    runs = stack.wait_runs(env.dag_id, count=2, timeout=900)
    created = datetime.now(timezone.utc)
    backfill = stack.backfill(env.dag_id, logical.isoformat(), logical.isoformat(), reprocess_behavior="completed")

    def rerun_done() -> list[dict[str, Any]] | None:
        # The backfill takes the night's run over (same run id) and runs it again.
        mine = [r for r in stack.dag_runs(env.dag_id) if r["backfill_id"] is not None]
        finished = [r for r in mine if r["state"] in ("success", "failed") and r["end_date"] and r["end_date"] > created]
        return finished if mine and len(finished) == len(mine) else None
    stack.wait_for(rerun_done, timeout=900, what="the backfill's rerun of the night", interval=2)
    done = stack.wait_runs(env.dag_id, timeout=900)
    reports = [r for r in env.reports() if str(r["night"]) == night.isoformat()]
    return {"night": night.isoformat(), "runs": [{"run_id": r["run_id"], "state": str(r["state"])} for r in done],
            "scheduled_before_backfill": len(runs), "backfill": str(backfill)[:300],
            "reports": [{k: str(v) for k, v in r.items() if k != "notes"} for r in reports]}


def _lags(dsn: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        lags = [float(r[0]) for r in conn.execute(
            "SELECT (stats->>'lag_seconds')::float FROM moengage_sync.task_stats WHERE program_id = %s "
            "AND stage = 'live' AND stats ? 'lag_seconds'", (PROGRAM,))]
    return {"p50": percentile(lags, 0.5), "p95": percentile(lags, 0.95), "max": percentile(lags, 1.0), "runs": len(lags)}


def render(f: dict[str, Any]) -> str:
    lat, cpu = f["latency_seconds"], f["cpu"]
    lines = [f"# Live lane benchmark ({f['started']})", "", f"`{f['command']}`", "",
             f"Writer: {f['written']:,} rows of {f.get('planned', f['written']):,} planned ({f['plan']['rate']:g}/s for {f['plan']['seconds'] / 60:g} min, a burst of "
             f"{sum(f['plan']['bursts'].values()):,} in one transaction, transactions held open {f['plan']['holds']}); "
             f"program zone {f['zone']}, its midnight at {f['local_midnight_utc']} (UTC). Real scheduler (LocalExecutor), "
             f"dag-processor and api-server; the sandbox at MoEngage's limits (bulk 60,000/min, Get User 1,000/min: the "
             f"connection's defaults), the presence cache filled for every member as `presence import` fills it.", "",
             "| figure | value |", "|---|---|",
             f"| commit -> MoEngage 200, p50 / p95 / max | {lat['p50']} s / {lat['p95']} s / {lat['max']} s |",
             f"| rows lost / sent twice | {f['lost']} / {f['sent_twice']} |",
             f"| live runs (states) | {f['live_runs']} ({', '.join(f['live_states'])}) |",
             f"| live run duration p50 / max | {f['live_run_seconds']['p50']} s / {f['live_run_seconds']['max']} s |",
             f"| live lag after each run p50 / p95 / max | {f['lag_seconds']['p50']} / {f['lag_seconds']['p95']} / "
             f"{f['lag_seconds']['max']} s |",
             f"| audit of the whole outbox: expected / received / duplicated / lost | {f['audit']['expected']} / "
             f"{f['audit']['received']} / {f['audit']['duplicated']} / {f['audit']['lost']} |",
             *([f"| live.attributes: beside events / owed updates sent / owed left / members left stale | "
                f"{a['attributes_beside']:,} / {a['owed_attributes_sent']:,} / {a['owed_left']} / {a['stale']} "
                f"(none stale {a['seconds_until_none_stale']} s after the backfill) |"]
               if (a := f.get("attributes")) else []),
             f"| verdict ({f['verdict']['target']}) | {'held' if f['verdict']['held'] else 'NOT held'} |", "",
             "CPU during the writing and the catch-up (seconds; share of one core):", "",
             "| process | own | descendants (task processes) |", "|---|---|---|"]
    for name, c in cpu.items():
        lines.append(f"| {name} | {c['cpu_seconds']} ({c['share_of_one_core']}) | {c['descendants_cpu_seconds']} |")
    lines += ["", "The night that ended inside the writing, and its backfill:", "", "```",
              json.dumps(f["night"], indent=1, default=str), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
