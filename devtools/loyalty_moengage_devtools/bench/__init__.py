"""Benchmark of one night's sync: the pipeline against its floors and a naive peer, in one run.

``python -m loyalty_moengage_devtools.bench [--members N] [--events-night N] [--scale] [--paced] [--out DIR]``
(``make bench`` calls it through ``python -m loyalty_moengage_devtools.cli bench``).

What runs
---------
1. The project's generator loads a synthetic program (timed: ``generator_s``). To put ~1 event
   per member in the synced night, the last night's accrual rate is multiplied
   (``generate(..., last_night_activity=...)``); the history nights are ordinary.
2. The real task functions of the DAG (``loyalty_moengage.sync.tasks``: preflight, plan, transform,
   guard, load, report), in the DAG's order, each task in a worker process the way an executor
   runs them: a pool of 2 warm worker processes (one per core; transform concurrency 2 =
   ``TRANSFORM_CONCURRENCY``, load slots = ``load_parallelism``). Worker start-up (imports) is not
   timed, as an executor's workers are already up when a night starts. The program file is a
   bench copy with ``verify_customers: false`` (no Get User API lookups) and the MoEngage
   connection has ``pacing: false``; the sandbox runs in ``count_only`` mode with no budget.
3. Floors on the same data: COPY of the same SQL through the product's COPY loop
   for the whole night on one connection, orjson encoding of the same
   payloads (prebuilt dicts of the exact bodies the pipeline sent, one call per body), POSTing
   the same bodies over one keep-alive session; a naive peer (one POST per record, a new
   connection each, stdlib json) timed on a sample and extrapolated.
4. ``--scale``: the same at 4x members (time ratio, both peak RSS). ``--paced``: a small program
   with pacing on at a small budget, against the budget floor.

Peak RSS of a task is the kernel's high-water mark (VmHWM) of the worker process, reset through
``/proc/self/clear_refs`` before each task, so it is exact, not sampled.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from loyalty_moengage.cli import quiet_foreign_warnings
from loyalty_moengage.night import latest_complete_night
from loyalty_moengage.progress import Progress

WORKSPACE = "BENCH_WS"
API_KEY = "bench-data-api-key"
PROGRAM_ID = "bench"
TIME_ZONE = "Asia/Kolkata"
# Share of members whose accruals land in a night at activity 1.0 (measured on the generator:
# ~0.035 accrual events per member per night, plus bonuses and other events).
EVENTS_PER_MEMBER_AT_1 = 0.036

REQUIRED_KEYS = ("records_per_s", "stage_seconds", "peak_rss_mb", "copy_floor_s", "json_floor_s",
                 "delivery_floor_s", "floor_ratio", "copy_floor_parallel_s", "json_floor_parallel_s",
                 "delivery_floor_parallel_s", "floor_ratio_parallel", "naive_records_per_s", "speedup_vs_naive",
                 "budget_floor_min", "generator_s", "members", "events", "commit")


# ---- worker side (runs in the pool's processes) ------------------------------------------------

def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _hwm_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm() -> None:
    """Imports an executor's worker would already hold (not timed)."""
    import logging

    logging.getLogger("airflow").setLevel(logging.WARNING)
    import numpy  # noqa: F401
    import orjson  # noqa: F401
    import pandas  # noqa: F401
    import psycopg  # noqa: F401
    import pyarrow  # noqa: F401
    import pyarrow.compute  # noqa: F401
    import pyarrow.csv  # noqa: F401
    import requests  # noqa: F401
    import tenacity  # noqa: F401

    from loyalty_moengage.sync.chunk import check, pipeline as chunk, pack, payloads, validate  # noqa: F401
    from loyalty_moengage.sync.outbox import delivery, enqueue
    from loyalty_moengage.sync.send import load
    from loyalty_moengage.sync import tasks
    from loyalty_moengage.db import loyalty_dsn
    from loyalty_moengage.moengage import hook  # noqa: F401

    loyalty_dsn("loyalty_db")


def _warm_task(pause: float) -> int:
    _warm()
    time.sleep(pause)
    return os.getpid()


def _context(program: Any, night: date, run_id: str) -> dict[str, Any]:
    from loyalty_moengage.night import Window

    w = Window.of_night(night, program.time_zone)
    return {"data_interval_start": w.start, "data_interval_end": w.end, "logical_date": w.end,
            "run_id": run_id, "params": {}, "ti": None}


def run_task(name: str, program_id: str, night_iso: str, run_id: str, arg: Any = None) -> dict[str, Any]:
    """One task of the DAG, through the same function its @task body calls."""
    from loyalty_moengage.sync import tasks
    from loyalty_moengage.config.programs import get_program

    _reset_hwm()
    started = time.perf_counter()
    program = get_program(program_id)
    context = _context(program, date.fromisoformat(night_iso), run_id)
    fn = getattr(tasks, name)
    result = fn(program, context) if arg is None else fn(program, arg, context)
    return {"task": name, "arg": arg if not isinstance(arg, dict) else arg.get("label"), "result": result,
            "seconds": time.perf_counter() - started, "peak_rss_mb": round(_hwm_mb(), 1), "pid": os.getpid()}


# ---- driver ---------------------------------------------------------------------------------------

class _Sampler:
    """Peak RSS of this process and its children (the pool's workers), sampled every 50 ms."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.proc = psutil.Process()
        self.peak_total_mb = 0.0
        self.peak_self_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.05):
            try:
                own = self.proc.memory_info().rss
                total = own
                for child in self.proc.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                continue
            self.peak_self_mb = max(self.peak_self_mb, own / 2**20)
            self.peak_total_mb = max(self.peak_total_mb, total / 2**20)

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(1)


def _git_commit() -> str:
    from loyalty_moengage.paths import project_root

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_root(),
                               capture_output=True, text=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine(dsn: str) -> dict[str, Any]:
    import psutil

    from loyalty_moengage.db import connect

    with connect(dsn) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    return {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "postgres": pg, "platform": platform.platform()}


def _programs_file(path: Path, *, chunk_members: int | None, load_parallelism: int | None,
                   ids: tuple[str, ...] = (PROGRAM_ID,), pool_slots: int | None = None,
                   verify_customers: bool = False, live: bool = False) -> Path:
    """The bench's programs file; several ids share one MoEngage connection (one workspace, one Pool).
    ``live``: live mode on (its night then paces at the budget less the live lane's share)."""
    lines = ["programs:"]
    for program_id in ids:
        lines += [f"  - id: {program_id}", f"    name: Bench Loyalty {program_id}", f"    time_zone: {TIME_ZONE}",
                  f"    verify_customers: {str(verify_customers).lower()}", "    retries: 0",
                  "    reject_threshold: 0.05", "    keep_sent_bodies: false"]
        if chunk_members:
            lines.append(f"    chunk_members: {chunk_members}")
        if load_parallelism:
            lines.append(f"    load_parallelism: {load_parallelism}")
        if pool_slots:
            lines.append(f"    workspace_pool_slots: {pool_slots}")
        if live:
            lines += ["    live:", "      enabled: true"]
    path.write_text("\n".join(lines) + "\n")
    return path


def clear_bench_programs(dsn: str) -> None:
    """Drop the bench's programs before it generates one: TRUNCATE when the database holds nothing
    else (the generator's per-program DELETE of a 1M-member program beside others takes minutes),
    else leave it to the generator."""
    from loyalty_moengage.db import connect
    from loyalty_moengage_devtools.generator import _ALL_TABLES

    with connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('loyalty.programs')").fetchone()[0] is None:
            return
        ids = [r[0] for r in conn.execute("SELECT program_id FROM loyalty.programs").fetchall()]
        if ids and all(i == PROGRAM_ID or i.startswith(PROGRAM_ID + "_") for i in ids):
            _log(f"dropping the bench programs {', '.join(sorted(ids))} (TRUNCATE)")
            conn.execute("TRUNCATE " + ", ".join(f"loyalty.{t}" for t in _ALL_TABLES))
            conn.commit()


def _generate(dsn: str, *, members: int, events_night: int, days: int, seed: int, night: date) -> tuple[float, Any]:
    from loyalty_moengage_devtools.generator import generate

    clear_bench_programs(dsn)

    activity = max(1.0, events_night / (EVENTS_PER_MEMBER_AT_1 * members)) if events_night else 1.0
    t = time.perf_counter()
    summary = generate(dsn, program_id=PROGRAM_ID, members=members, days=days, seed=seed,
                       end_date=night + timedelta(days=1), time_zone=TIME_ZONE, last_night_activity=activity)
    return time.perf_counter() - t, activity


def _members_loaded(dsn: str) -> int:
    from loyalty_moengage.db import connect

    with connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM loyalty.members WHERE program_id = %s", (PROGRAM_ID,)).fetchone()[0]


def _run_dag(pool: Any, *, program_id: str, night_iso: str, run_id: str, snapshot: Any = None,
             load_gate: Any = None, label: str = "") -> dict[str, Any]:
    """The DAG's tasks in order on ``pool`` (the executor's workers). ``load_gate`` (a semaphore)
    stands for the workspace's Airflow Pool: a load task starts only when it holds a slot, as the
    scheduler admits a task only when its Pool has one free."""
    from loyalty_moengage.config.programs import get_program

    program = get_program(program_id)
    tasks_run: list[dict[str, Any]] = []
    phases: dict[str, float] = {}
    started = time.perf_counter()

    def submit(task: str, arg: Any) -> Any:
        if task != "load" or load_gate is None:
            return pool.submit(run_task, task, program_id, night_iso, run_id, arg)
        load_gate.acquire()
        future = pool.submit(run_task, task, program_id, night_iso, run_id, arg)
        future.add_done_callback(lambda _f: load_gate.release())
        return future

    def phase(name: str, calls: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        t = time.perf_counter()
        with Progress(f"[bench] {label}{name}", total=len(calls), unit="tasks") as step:
            futures = [submit(task, arg) for task, arg in calls]
            for _ in as_completed(futures):
                step.advance()
            out = [f.result() for f in futures]
            step.finish(f"run {time.perf_counter() - started:.1f} s")
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
        tasks_run.extend(out)
        return out

    phase("preflight", [("preflight", None)])
    chunks = phase("plan", [("plan", None)])[0]["result"]
    transformed = phase("transform", [("transform", c) for c in chunks])
    phase("guard", [("guard", None)])
    paused = 0.0
    if snapshot is not None:
        t = time.perf_counter()
        snapshot()
        paused = time.perf_counter() - t
    loaded = phase("load", [("load", slot) for slot in range(program.load_parallelism)])
    phase("settle", [("settle", None)])
    report = phase("report", [("report", None)])[0]["result"]
    return {"tasks_run": tasks_run, "phases": phases, "chunks": chunks, "transformed": transformed,
            "loaded": loaded, "report": report, "started": started, "ended": time.perf_counter(), "paused": paused}


def _pipeline(*, program_id: str, night: date, run_id: str, workers: int, snapshot: Any = None) -> dict[str, Any]:
    """Preflight -> plan -> transform (mapped) -> guard -> load (mapped) -> report, timed."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=quiet_foreign_warnings) as pool:
        # Warm both workers before the clock starts (an executor's workers are already up).
        list(pool.map(_warm_task, [0.5] * workers))
        with _Sampler() as sampler:
            run = _run_dag(pool, program_id=program_id, night_iso=night.isoformat(), run_id=run_id,
                           snapshot=snapshot)
            wall = run["ended"] - run["started"] - run["paused"]
    return _summary(run, wall, sampler)


def _summary(run: dict[str, Any], wall: float, sampler: Any) -> dict[str, Any]:
    tasks_run, phases, chunks = run["tasks_run"], run["phases"], run["chunks"]
    transformed, loaded, report = run["transformed"], run["loaded"], run["report"]
    by_task: dict[str, float] = {}
    for t in tasks_run:
        by_task[t["task"]] = max(by_task.get(t["task"], 0.0), t["peak_rss_mb"])
    return {
        "pipeline_s": round(wall, 3),
        "phase_wall_s": {k: round(v, 3) for k, v in phases.items()},
        "chunks": len(chunks),
        "events_enqueued": sum(t["result"]["events_enqueued"] for t in transformed),
        "members_enqueued": sum(t["result"]["members_enqueued"] for t in transformed),
        "batches_sent": sum(t["result"]["batches_sent"] for t in loaded),
        "report": report,
        "peak_rss_mb": max(t["peak_rss_mb"] for t in tasks_run),
        "peak_rss_mb_by_task": by_task,
        "peak_rss_mb_all_processes": round(sampler.peak_total_mb, 1),
        "tasks": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in t.items() if k != "result"}
                  for t in tasks_run],
    }


def _stage_seconds(dsn: str, program_id: str, run_id: str) -> dict[str, Any]:
    from loyalty_moengage.db import connect

    with connect(dsn) as conn:
        row = conn.execute("SELECT stage_seconds FROM moengage_sync.run_reports WHERE program_id = %s AND run_id = %s",
                           (program_id, run_id)).fetchone()
        stats = conn.execute("SELECT stage, stats FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s",
                             (program_id, run_id)).fetchall()
    load_sum = sum(s.get("seconds", 0.0) for st, s in stats if st == "load")
    out = {k: round(float(v), 3) for k, v in (row[0] if row else {}).items()}
    if load_sum:
        out["load_sum_over_slots"] = round(load_sum, 3)
    return out


def _snapshot_bodies(dsn: str, program_id: str, run_id: str, sink: list[bytes]) -> None:
    from loyalty_moengage.db import connect

    with connect(dsn) as conn:
        with conn.cursor(name="bodies") as cur:
            cur.itersize = 500
            cur.execute("SELECT body FROM moengage_sync.batches WHERE program_id = %s AND run_id = %s "
                        "ORDER BY batch_id", (program_id, run_id))
            for (body,) in cur:
                sink.append(bytes(body))


def _copy_floor(dsn: str, program_id: str, night: date) -> dict[str, Any]:
    """COPY of the same SQL through the product's COPY loop (``sync.extract.copy_out``), for the
    whole night on one connection, template by template: what Postgres and the wire cost."""
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.chunk.contract import load_templates
    from loyalty_moengage.sync.chunk.extract import SESSION_SETTINGS, copy_out, render
    from loyalty_moengage.night import Window
    from loyalty_moengage.sync.chunk.plan import MEMBER_ID_MAX

    program = get_program(program_id)
    w = Window.of_night(night, program.time_zone)
    params = w.params(program_id, 0, MEMBER_ID_MAX)
    per: dict[str, float] = {}
    size = 0
    with connect(dsn) as conn:
        conn.execute(SESSION_SETTINGS)
        for template in load_templates():
            query = render(conn, template, params)
            t = time.perf_counter()
            size += copy_out(conn, query).tell()
            per[template.name] = round(time.perf_counter() - t, 3)
        conn.rollback()
    return {"copy_floor_s": round(sum(per.values()), 3), "copy_floor_by_template_s": per, "copy_bytes": size}


def _json_floor(bodies: list[bytes]) -> float:
    import orjson

    total = 0.0
    for body in bodies:
        doc = orjson.loads(body)           # prebuilt dicts: not timed
        t = time.perf_counter()
        out = orjson.dumps(doc)
        total += time.perf_counter() - t
        del out
    return total


def _auth_headers() -> dict[str, str]:
    import base64

    token = base64.b64encode(f"{WORKSPACE}:{API_KEY}".encode()).decode()
    return {"Authorization": f"Basic {token}", "MOE-APPKEY": WORKSPACE, "Content-Type": "application/json"}


def _delivery_floor(url: str, bodies: list[bytes]) -> float:
    import requests

    headers = _auth_headers()
    with requests.Session() as session:
        t = time.perf_counter()
        for body in bodies:
            r = session.post(f"{url}/dc/03/v1/transition/{WORKSPACE}", data=body, headers=headers, timeout=30)
            if r.status_code != 200:
                raise RuntimeError(f"delivery floor: HTTP {r.status_code} {r.text[:200]}")
        return time.perf_counter() - t


def _run_night(args: argparse.Namespace, dsn: str, work: Path, *, members: int, events_night: int,
               floors: bool, paced: bool = False) -> dict[str, Any]:
    from loyalty_moengage.db import connection_json
    from loyalty_moengage_devtools.reset import reset_program_state
    from loyalty_moengage_devtools.sandbox import SandboxServer

    night = latest_complete_night(TIME_ZONE)
    if args.reuse and _members_loaded(dsn) == members:
        generator_s, activity = None, None    # iteration only: the data of an earlier run
    else:
        generator_s, activity = _generate(dsn, members=members, events_night=events_night, days=args.days,
                                          seed=args.seed, night=night)
    reset_program_state(dsn, PROGRAM_ID)
    programs = _programs_file(work / f"programs-{members}.yaml", chunk_members=args.chunk_members,
                              load_parallelism=args.load_parallelism)
    os.environ["LOYALTY_PROGRAMS_FILE"] = str(programs)
    os.environ["AIRFLOW_CONN_LOYALTY_DB"] = connection_json(dsn)
    budget = args.paced_users_per_minute if paced else None
    run_id = f"bench__{datetime.now(timezone.utc):%Y%m%dT%H%M%S}_{members}{'_paced' if paced else ''}"
    out: dict[str, Any] = {"members_generated": members, "night": night.isoformat(), "generator_s": generator_s and round(generator_s, 2),
                           "last_night_activity": activity and round(activity, 3), "run_id": run_id}
    with SandboxServer(port=0, count_only=True) as sandbox:
        sandbox.add_workspace(WORKSPACE, API_KEY, dc="03", users_per_minute=budget, events_per_minute=budget)
        extra = ({"pacing": True, "users_per_minute": budget, "events_per_minute": budget} if paced
                 else {"pacing": False})
        os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"] = sandbox.connection_json(WORKSPACE, API_KEY, dc="03", **extra)
        bodies: list[bytes] = []
        snapshot = (lambda: _snapshot_bodies(dsn, PROGRAM_ID, run_id, bodies)) if floors else None
        result = _pipeline(program_id=PROGRAM_ID, night=night, run_id=run_id, workers=args.workers, snapshot=snapshot)
        counters = sandbox.state.workspace_counters(WORKSPACE)
        out.update(result)
        out["sandbox_counters"] = {k: counters.get(k, 0) for k in ("requests", "bytes", "users_counted",
                                                                   "events_counted", "throttled")}
        out["stage_seconds"] = _stage_seconds(dsn, PROGRAM_ID, run_id)
        rep = result["report"]
        out["events"] = rep["events_sent"]
        out["members"] = rep["members_updated"]
        out["records"] = out["events"] + out["members"]
        out["records_per_s"] = round(out["records"] / result["pipeline_s"], 1)
        out["budget_per_minute"] = budget or 60_000
        out["budget_floor_min"] = round(max(out["members"], out["events"]) / out["budget_per_minute"], 3)
        if floors:
            out["payload_bytes"] = sum(len(b) for b in bodies)
            out["payload_bodies"] = len(bodies)
            from loyalty_moengage.config.programs import get_program
            from loyalty_moengage_devtools.bench import floors as fl
            from loyalty_moengage.sync.tasks import TRANSFORM_CONCURRENCY

            slots = get_program(PROGRAM_ID).load_parallelism
            out["floor_parallelism"] = {"copy": TRANSFORM_CONCURRENCY, "json": TRANSFORM_CONCURRENCY, "delivery": slots}
            _log("floors: COPY, one stream")
            out.update(_copy_floor(dsn, PROGRAM_ID, night))
            _log(f"floors: COPY, {TRANSFORM_CONCURRENCY} streams over the plan's chunks")
            out.update(fl.copy_floor_parallel(dsn, PROGRAM_ID, night, TRANSFORM_CONCURRENCY))
            out["json_floor_prebuilt_s"] = round(_json_floor(bodies), 3)
            _log("floors: JSON from the extracted columns")
            out.update(fl.json_floor_parallel(dsn, PROGRAM_ID, night, TRANSFORM_CONCURRENCY))
            _log(f"floors: delivery of {len(bodies):,} bodies, 1 session, then {slots}")
            out["delivery_floor_s"] = round(_delivery_floor(sandbox.url, bodies), 3)
            out["delivery_floor_parallel_s"] = round(fl.delivery_floor_parallel(
                sandbox.url, _auth_headers(), f"/dc/03/v1/transition/{WORKSPACE}", bodies, slots), 3)
            _log(f"naive peer: {args.naive_records:,} records, one requests.post each")
            out.update(fl.naive_peer(f"{sandbox.url}/dc/03", WORKSPACE, API_KEY, bodies, args.naive_records))
        del bodies
    return out


def _generated(r: dict[str, Any]) -> str:
    if r.get("generator_s") is None:
        return "program generated by an earlier run, reused (--reuse)"
    return (f"generated {r.get('members_generated', r.get('members')):,} members, {r.get('days', 7)} nights, "
            f"last-night activity x{r.get('last_night_activity')}; generator {r['generator_s']} s")


def _targets(r: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {
        "records_per_s >= 50,000": r["records_per_s"] >= 50_000,
        "pipeline <= 3x sum of floors": r["floor_ratio"] <= 3,
        "pipeline <= 2.5x sum of floors at the pipeline's parallelism": (r.get("floor_ratio_parallel") or 99) <= 2.5,
        "peak RSS per task <= 500 MB": r["peak_rss_mb"] <= 500,
        "speedup vs naive >= 100x": r["speedup_vs_naive"] >= 100,
    }
    if "scale" in r:
        s = r["scale"]
        t["4x members <= 4.4x time"] = s["time_ratio"] <= 4.4
        t["peak RSS per task <= 500 MB at 4x"] = s["peak_rss_mb"] <= 500
    if "paced" in r:
        t["paced run within 3% of the budget floor, no 429"] = (r["paced"]["over_floor_pct"] <= 3
                                                                 and r["paced"]["throttled"] == 0)
    if "two_programs" in r:
        t["two programs on one workspace within 5% of their joint floor, at most one 429"] = (
            r["two_programs"]["over_floor_pct"] <= 5 and r["two_programs"]["throttled"] <= 1)
    for key in ("gate_cold", "gate_warm", "inprocess_paced"):
        if key in r:
            t[f"{key} within 5% of max(send floor, lookup floor)"] = r[key]["over_floor_pct"] <= 5
    return t


def _par(r: dict[str, Any], key: str) -> Any:
    return (r.get("floor_parallelism") or {}).get(key, "?")


def render_md(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"# Nightly sync benchmark ({r['started_at']})",
        "",
        f"commit `{r['commit']}`; {m['cores']} cores, {m['memory_gb']} GB, Python {m['python']}, "
        f"PostgreSQL {m['postgres']}; `{r['command']}`",
        "",
        f"Program: {r['members']:,} members updated + {r['events']:,} events sent in night {r['night']} "
        f"({_generated(r)}).",
        "Pipeline: the DAG's task functions (loyalty_moengage.sync.tasks), each task in one of "
        f"{r['workers']} warm worker processes; sandbox `count_only`, no budget, pacing off, verify_customers off.",
        "",
        "| figure | value | sandbox mode |",
        "|---|---|---|",
        f"| pipeline wall time | {r['pipeline_s']} s | count_only |",
        f"| records/s end to end | {r['records_per_s']:,.0f} | count_only |",
        f"| peak RSS of the largest task | {r['peak_rss_mb']} MB ({r['peak_rss_mb_by_task']}) | |",
        f"| peak RSS of all processes (sampled) | {r['peak_rss_mb_all_processes']} MB | |",
        f"| COPY floor (same SQL through the product's COPY loop, whole night, 1 stream) "
        f"| {r['copy_floor_s']} s | - |",
        f"| COPY floor, the plan's chunks on {_par(r, 'copy')} connections at once "
        f"| {r.get('copy_floor_parallel_s', '-')} s | - |",
        f"| JSON floor (the same extracted columns to JSON, vectorised: serial / {_par(r, 'json')} at once) "
        f"| {r['json_floor_s']} s / {r.get('json_floor_parallel_s', '-')} s "
        f"(old floor, orjson of prebuilt dicts: {r.get('json_floor_prebuilt_s', '-')} s) | - |",
        f"| delivery floor (same {r['payload_bodies']:,} bodies, {r['payload_bytes'] / 1e6:,.0f} MB, 1 keep-alive session "
        f"/ {_par(r, 'delivery')} at once) | {r['delivery_floor_s']} s / {r.get('delivery_floor_parallel_s', '-')} s | count_only |",
        f"| pipeline / sum of floors (serial; at the pipeline's parallelism) | {r['floor_ratio']}; "
        f"{r.get('floor_ratio_parallel', '-')} | |",
        f"| naive peer ({r.get('naive_pattern', '1 POST/record, new connection')}; {r['naive_records']:,} records) | "
        f"{r['naive_records_per_s']:,} records/s; {r['naive_extrapolated_s']:,.0f} s for the night "
        f"(extrapolated) | count_only |",
        f"| speedup vs naive | {r['speedup_vs_naive']:,}x | count_only |",
        f"| MoEngage budget floor at {r['budget_per_minute']:,}/min | {r['budget_floor_min']} min | - |",
        "",
        "Phase wall times (s): " + ", ".join(f"{k} {v}" for k, v in r["phase_wall_s"].items()),
        "",
        "Stage seconds (run_reports.stage_seconds: transform stages summed over chunks, load = slowest slot): "
        + ", ".join(f"{k} {v}" for k, v in r["stage_seconds"].items()),
        "",
    ]
    if "scale" in r:
        s = r["scale"]
        lines += [f"Scale: {s['members']:,} members + {s['events']:,} events in {s['pipeline_s']} s "
                  f"({s['records_per_s']:,.0f} records/s); time ratio {s['time_ratio']} for records ratio "
                  f"{s['records_ratio']}; peak RSS per task {r['peak_rss_mb']} MB -> {s['peak_rss_mb']} MB; "
                  f"{_generated(s)}.", ""]
    if "paced" in r:
        p = r["paced"]
        lines += [f"Paced: {p['members']:,} members + {p['events']:,} events at {p['budget_per_minute']:,} users/min "
                  f"and events/min (sandbox count_only enforcing the same budget in 60 s windows): pipeline "
                  f"{p['pipeline_s']} s vs budget floor {p['budget_floor_s']} s ({p['over_floor_pct']:+.1f}%); "
                  f"429s: {p['throttled']}; Pool {p['pool']} with {p['pool_slots']} slots, each load task at "
                  f"{p['share_per_load_task']:g} of the budget.", ""]
    if "two_programs" in r:
        p = r["two_programs"]
        per = "; ".join(f"{k}: {v['members']:,} members + {v['events']:,} events, ends at {v['end_s']} s"
                        for k, v in p["per_program"].items())
        lines += [f"Two programs on one workspace, started together ({p['workers']} worker processes; the "
                  f"workspace Pool {p['pool']} has {p['pool_slots']} slots): {p['members']:,} members + "
                  f"{p['events']:,} events in {p['pipeline_s']} s vs their joint floor {p['budget_floor_s']} s "
                  f"({p['over_floor_pct']:+.1f}%); 429s: {p['throttled']}. {per}.", ""]
    for key, what in (("gate_cold", "Presence gate, cold cache"), ("gate_warm", "Presence gate, warm cache"),
                      ("inprocess_paced", "In-process night (dag.test, as `make run`), warm cache")):
        if key in r:
            g = r[key]
            lines += [f"{what}: {g['members']:,} members + {g['events']:,} events, {g['users_looked_up']:,} users "
                      f"looked up at {g['lookups_per_minute']:,}/min: {g['pipeline_s']} s; send floor "
                      f"{g['send_floor_s']} s, lookup floor {g['lookup_floor_s']} s ({g['over_floor_pct']:+.1f}% over "
                      f"the larger); 429s: {g['throttled']}.", ""]
    if "earlier_run" in r:
        e = r["earlier_run"]
        lines += [f"Figures other than the paced ones are from an earlier run: commit `{e['commit']}`, "
                  f"{e['started_at']}.", ""]
    lines += ["| target | holds |", "|---|---|"] + [f"| {k} | {'yes' if v else 'NO'} |" for k, v in r["targets"].items()]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loyalty-moengage-dev bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=1_000_000)
    p.add_argument("--events-night", type=int, default=None,
                   help="events wanted in the synced night (default: = --members); reached by raising the last "
                        "night's accrual rate in the generator")
    p.add_argument("--days", type=int, default=7, help="nights of history the generator writes (default 7)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--scale", action="store_true", help="also run 4x members and report the time ratio")
    p.add_argument("--paced", action="store_true", help="also run a paced night against the budget floor")
    p.add_argument("--paced-members", type=int, default=20_000)
    p.add_argument("--paced-users-per-minute", type=int, default=6_000)
    p.add_argument("--two-programs-members", type=int, default=10_000,
                   help="members of each of the two programs of the shared-workspace paced run (default 10,000)")
    p.add_argument("--gate-lookups-per-minute", type=int, default=100,
                   help="Get User API budget of the gate runs (default 100: MoEngage's 1,000:60,000 ratio to "
                        "the bulk budget, at --paced-users-per-minute 6,000)")
    p.add_argument("--paced-pool-slots", type=int, default=None,
                   help="slots of the workspace Pool in the paced runs (default: load_parallelism)")
    p.add_argument("--paced-only", action="store_true",
                   help="only the paced runs; the other figures of latest.json are kept, marked as from their run")
    p.add_argument("--gate-only", action="store_true",
                   help="only the gate runs (cold, warm) and the in-process night; the rest of latest.json is kept")
    p.add_argument("--naive-records", type=int, default=2_000)
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2 = cores here)")
    p.add_argument("--chunk-members", type=int, default=None, help="override the program's chunk_members")
    p.add_argument("--load-parallelism", type=int, default=None, help="override the program's load_parallelism")
    p.add_argument("--reuse", action="store_true",
                   help="skip the generator when the bench program already has that many members (iteration)")
    p.add_argument("--dsn", help="PostgreSQL to use (default: embedded server 'bench-pgdata')")
    p.add_argument("--scale-dsn", help="database of the 4x program (default: --dsn); with --reuse, iterating on "
                                       "the scale run keeps both programs generated")
    p.add_argument("--out", default="bench/results")
    return p


def main(argv: list[str] | None = None) -> int:
    import logging

    from loyalty_moengage.paths import state_dir
    from loyalty_moengage.sync.ops.runner import airflow_env

    args = build_parser().parse_args(argv)
    if args.events_night is None:
        args.events_night = args.members
    for key, value in airflow_env(state_dir() / "airflow").items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.dsn:
        return _bench(args, argv, args.dsn)
    from loyalty_moengage.embedded import owned_server

    # The bench's own server: stopped when the bench ends, fails or is interrupted.
    with owned_server("bench-pgdata") as dsn:
        return _bench(args, argv, dsn)


def _bench(args: argparse.Namespace, argv: list[str] | None, dsn: str) -> int:
    import tempfile

    from loyalty_moengage.db import apply_schema
    from loyalty_moengage.paths import project_root
    from loyalty_moengage_devtools.environ import restored_environ

    apply_schema(dsn)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    commit = _git_commit()   # the code the run starts with (others may commit during a long run)
    out = Path(args.out)
    if not out.is_absolute():
        out = project_root() / out
    with restored_environ("LOYALTY_PROGRAMS_FILE", "AIRFLOW_CONN_LOYALTY_DB", "AIRFLOW_CONN_MOENGAGE_DEFAULT"):
        try:
            with tempfile.TemporaryDirectory(prefix="lm-bench-") as tmp:
                work = Path(tmp)
                if args.gate_only:
                    r = _earlier(out / "latest.json", keep_paced=True)
                    _gate_runs(args, dsn, work, r)
                    raise _Done
                if args.paced_only:
                    r = _earlier(out / "latest.json")
                    _paced_runs(args, dsn, work, r)
                    raise _Done
                r = _run_night(args, dsn, work, members=args.members, events_night=args.events_night, floors=True)
                _log(f"1x: {r['records']:,} records in {r['pipeline_s']} s")
                floors = r["copy_floor_s"] + r["json_floor_s"] + r["delivery_floor_s"]
                r["floors_sum_s"] = round(floors, 3)
                r["floor_ratio"] = round(r["pipeline_s"] / floors, 2) if floors else None
                par = r["copy_floor_parallel_s"] + r["json_floor_parallel_s"] + r["delivery_floor_parallel_s"]
                r["floors_parallel_sum_s"] = round(par, 3)
                r["floor_ratio_parallel"] = round(r["pipeline_s"] / par, 2) if par else None
                r["naive_extrapolated_s"] = round(r["records"] / r["naive_records_per_s"], 1)
                r["speedup_vs_naive"] = round(r["records_per_s"] / r["naive_records_per_s"], 1)
                if args.scale:
                    scale_dsn = args.scale_dsn or dsn
                    if scale_dsn != dsn:
                        apply_schema(scale_dsn)
                    s = _run_night(args, scale_dsn, work, members=4 * args.members, events_night=4 * args.events_night,
                                   floors=False)
                    _log(f"4x: {s['records']:,} records in {s['pipeline_s']} s")
                    r["scale"] = {k: s[k] for k in ("members", "events", "records", "pipeline_s", "records_per_s",
                                                    "peak_rss_mb", "peak_rss_mb_by_task", "peak_rss_mb_all_processes",
                                                    "generator_s", "stage_seconds", "phase_wall_s", "chunks")}
                    r["scale"]["time_ratio"] = round(s["pipeline_s"] / r["pipeline_s"], 2)
                    r["scale"]["records_ratio"] = round(s["records"] / r["records"], 2)
                    r["scale_time_ratio"] = r["scale"]["time_ratio"]
                    r["peak_rss_mb_4x"] = s["peak_rss_mb"]
                if args.paced:
                    _paced_runs(args, dsn, work, r)
        except _Done:
            pass
    if args.paced_only or args.gate_only:
        r["earlier_run"] = r.get("earlier_run") or {"commit": r.get("commit"), "started_at": r.get("started_at"),
                                                    "command": r.get("command")}
        kept = ("gate_cold/gate_warm/inprocess_paced (and their *_overshoot_pct, lookup_floor_s and send_floor_s "
                "keys)" if args.gate_only else "paced/two_programs/gate_cold/gate_warm/inprocess_paced (and their "
                "*_overshoot_pct, *_429s, lookup_floor_s and send_floor_s keys)")
        r["earlier_run"]["note"] = f"every figure outside {kept} is from this earlier run"
    r.update({
        "started_at": started_at, "commit": commit, "commit_at_end": _git_commit(), "machine": _machine(dsn), "days": args.days,
        "workers": args.workers, "command": "python -m loyalty_moengage_devtools.bench " + " ".join(argv or sys.argv[1:]),
        "sandbox_mode": {"pipeline": "count_only", "delivery_floor": "count_only", "naive_peer": "count_only",
                         "paced": "count_only with the budget enforced"},
        "naive_extrapolated": True,
    })
    r["targets"] = _targets(r)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
    (out / "latest.md").write_text(render_md(r))
    print(render_md(r))
    return 0


class _Done(Exception):
    """Internal: the runs asked for are over."""


def _earlier(path: Path, *, keep_paced: bool = False) -> dict[str, Any]:
    """The figures of the last full run, kept by a ``--paced-only`` or ``--gate-only`` run (which says so)."""
    if not path.exists():
        raise SystemExit(f"--paced-only / --gate-only keep the other figures of {path}, which does not exist: "
                         "run the full bench")
    r = json.loads(path.read_text())
    for key in ("targets", "gate_cold", "gate_warm", "inprocess_paced") + (() if keep_paced else ("paced", "two_programs")):
        r.pop(key, None)
    return r


def _paced_runs(args: argparse.Namespace, dsn: str, work: Path, r: dict[str, Any]) -> None:
    """The paced night (one program) and the shared-workspace night (two programs), into ``r``."""
    from loyalty_moengage_devtools.bench.paced import run_paced

    night = latest_complete_night(TIME_ZONE)
    p = run_paced(args, dsn, work, night, members=[args.paced_members], label="paced")
    _log(f"paced: {p['members']:,} users + {p['events']:,} events in {p['pipeline_s']} s, floor "
         f"{p['budget_floor_s']} s ({p['over_floor_pct']:+.1f}%), {p['throttled']} 429s")
    r["paced"] = p
    r["paced_overshoot_pct"] = p["over_floor_pct"]
    r["paced_429s"] = p["throttled"]
    two = run_paced(args, dsn, work, night, members=[args.two_programs_members] * 2, label="two_programs")
    _log(f"two programs: {two['members']:,} users + {two['events']:,} events in {two['pipeline_s']} s, joint "
         f"floor {two['budget_floor_s']} s ({two['over_floor_pct']:+.1f}%), {two['throttled']} 429s")
    r["two_programs"] = two
    r["two_programs_overshoot_pct"] = two["over_floor_pct"]
    r["two_programs_429s"] = two["throttled"]
    _gate_runs(args, dsn, work, r)


def _gate_runs(args: argparse.Namespace, dsn: str, work: Path, r: dict[str, Any]) -> None:
    """The presence gate at MoEngage's ratio of Get User to bulk budget (1,000:60,000), cold
    cache then warm, under the worker processes; then one in-process night (``make run``)."""
    from loyalty_moengage_devtools.bench.paced import run_inprocess, run_paced

    night = latest_complete_night(TIME_ZONE)
    lookups = args.gate_lookups_per_minute
    for cache in ("cold", "warm"):
        g = run_paced(args, dsn, work, night, members=[args.paced_members], label=f"gate_{cache}",
                      lookups_per_minute=lookups, warm=cache == "warm")
        _log(f"gate, {cache} cache: {g['members']:,} users + {g['events']:,} events, {g['users_looked_up']:,} "
             f"lookups in {g['pipeline_s']} s; floors: send {g['send_floor_s']} s, lookups {g['lookup_floor_s']} s "
             f"({g['over_floor_pct']:+.1f}% over the larger), {g['throttled']} 429s")
        r[f"gate_{cache}"] = g
        r[f"gate_{cache}_overshoot_pct"] = g["over_floor_pct"]
    r["lookup_floor_s"] = r["gate_cold"]["lookup_floor_s"]
    r["send_floor_s"] = r["gate_cold"]["send_floor_s"]
    i = run_inprocess(args, dsn, work, night, lookups_per_minute=lookups)
    _log(f"in-process: {i['members']:,} users + {i['events']:,} events in {i['pipeline_s']} s, floor "
         f"{i['budget_floor_s']} s ({i['over_floor_pct']:+.1f}%), {i['throttled']} 429s")
    r["inprocess_paced"] = i
    r["inprocess_paced_overshoot_pct"] = i["over_floor_pct"]


def _log(msg: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
