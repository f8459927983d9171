"""Paced nights against the budget floor: one program alone, and two programs on one workspace.

Pacing is on, at a small budget (``--paced-users-per-minute``, default 6,000 users/min and the
same events/min), and the sandbox enforces the same budget in MoEngage's fixed 60 s windows with
``x-ratelimit-*`` headers and 429s. The floor is what the budget allows: the larger of users and
events divided by the budget; a paced night cannot end earlier without overrunning a window.

Two programs: each is a DAG of its own (its own members, night and run), sending to one
workspace through one connection; they start together on one executor (``2 x --workers`` worker
processes: the load tasks mostly sleep). The workspace's Airflow Pool is what the scheduler does
with it: a load task starts only when one of the Pool's ``workspace_pool_slots`` slots is free
(a semaphore here, the scheduler in Airflow), and each load task paces at budget / slots. Their
joint floor is the two programs' users (or events) at one budget.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from datetime import date, timedelta
from pathlib import Path
from typing import Any


class Ticker:
    """Prints ``describe()`` every ``every`` seconds while a long step runs (progress, not timing)."""

    def __init__(self, describe: Any, every: float = 15.0) -> None:
        self._describe = describe
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.perf_counter()

    def _run(self) -> None:
        from loyalty_moengage_devtools.bench import _log

        while not self._stop.wait(self._every):
            try:
                _log(f"{self._describe()} ({time.perf_counter() - self._started:.0f} s)")
            except Exception:  # noqa: BLE001 - progress only
                pass

    def __enter__(self) -> "Ticker":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(1)


def run_paced(args: Any, dsn: str, work: Path, night: date, *, members: list[int], label: str,
              lookups_per_minute: int | None = None, warm: bool = False, live: Any = None) -> dict[str, Any]:
    """One paced run of ``len(members)`` programs at once on one workspace; returns its figures.

    ``lookups_per_minute``: the presence gate on (``verify_customers``), the sandbox's Get User
    API at that budget, a deterministic 5% of members unknown to it. ``warm``: the program and
    its presence cache as the previous run left them (its other state reset): a night whose
    customers were looked up before. ``live``: live mode on, and ``live(sandbox)`` a context
    manager for the live traffic that runs beside the night (``bench/live_share.py``); what it
    yields is returned under ``live``."""
    import multiprocessing as mp

    from loyalty_moengage.cli import quiet_foreign_warnings
    from loyalty_moengage.db import connection_json
    from loyalty_moengage_devtools import bench
    from loyalty_moengage_devtools.generator import generate
    from loyalty_moengage_devtools.reset import reset_program_state
    from loyalty_moengage_devtools.sandbox import SandboxServer

    budget = args.paced_users_per_minute
    ids = (bench.PROGRAM_ID,) if len(members) == 1 else tuple(f"{bench.PROGRAM_ID}_{c}" for c in "ab"[:len(members)])
    generator_s = 0.0
    if not warm:
        bench.clear_bench_programs(dsn)
    for i, (program_id, n) in enumerate(zip(ids, members)):
        if not warm:
            bench._log(f"{label}: generating {program_id} ({n:,} members)")
            t = time.perf_counter()
            generate(dsn, program_id=program_id, members=n, days=args.days, seed=args.seed + i,
                     end_date=night + timedelta(days=1), time_zone=bench.TIME_ZONE)
            generator_s += time.perf_counter() - t
        reset_program_state(dsn, program_id, keep=("customer_presence",) if warm else ())
    slots = args.paced_pool_slots
    programs = bench._programs_file(work / f"programs-{label}.yaml", chunk_members=args.chunk_members,
                                    load_parallelism=args.load_parallelism, ids=ids, pool_slots=slots,
                                    verify_customers=lookups_per_minute is not None, live=live is not None)
    os.environ["LOYALTY_PROGRAMS_FILE"] = str(programs)
    os.environ["AIRFLOW_CONN_LOYALTY_DB"] = connection_json(dsn)
    from loyalty_moengage.config.programs import get_program

    pool_name = {get_program(p).pool for p in ids}
    assert len(pool_name) == 1, pool_name  # one workspace, one Pool
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run_ids = {p: f"bench__{stamp}_{label}_{p}" for p in ids}
    workers = args.workers * len(ids)
    out: dict[str, Any] = {"programs": list(ids), "members_generated": members, "budget_per_minute": budget,
                           "pool": pool_name.pop(), "pool_slots": slots or get_program(ids[0]).pool_slots,
                           "share_per_load_task": get_program(ids[0]).load_share, "workers": workers,
                           "generator_s": round(generator_s, 2)}
    lookups = {} if lookups_per_minute is None else {"lookups_per_minute": lookups_per_minute}
    with SandboxServer(port=0, count_only=True) as sandbox:
        sandbox.add_workspace(bench.WORKSPACE, bench.API_KEY, dc="03", users_per_minute=budget,
                              events_per_minute=budget, export_users_per_minute=lookups_per_minute)
        if lookups_per_minute is not None:
            from loyalty_moengage_devtools.seed import seed_from_loyalty_db

            for program_id in ids:
                seed_from_loyalty_db(sandbox, bench.WORKSPACE, dsn, program_id, missing_share=0.05)
        os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"] = sandbox.connection_json(
            bench.WORKSPACE, bench.API_KEY, dc="03", pacing=True, users_per_minute=budget, events_per_minute=budget,
            **lookups)
        gate = threading.Semaphore(out["pool_slots"])
        runs: dict[str, dict[str, Any]] = {}
        errors: list[BaseException] = []

        def counters() -> dict[str, int]:
            return sandbox.state.workspace_counters(bench.WORKSPACE)

        def describe() -> str:
            c = counters()
            looked = f", {c.get('users_looked_up', 0):,} users looked up" if lookups_per_minute else ""
            return (f"{label}: MoEngage sandbox has {c.get('users_counted', 0):,} users and "
                    f"{c.get('events_counted', 0):,} events{looked}, {c.get('throttled', 0)} 429s")

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=quiet_foreign_warnings) as pool:
            list(pool.map(bench._warm_task, [0.5] * workers))

            def one(program_id: str) -> None:
                try:
                    runs[program_id] = bench._run_dag(pool, program_id=program_id, night_iso=night.isoformat(),
                                                      run_id=run_ids[program_id], load_gate=gate,
                                                      label=f"{label} {program_id} ")
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    errors.append(exc)

            with bench._Sampler() as sampler, Ticker(describe), (live(sandbox) if live else nullcontext()) as beside:
                threads = [threading.Thread(target=one, args=(p,)) for p in ids]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
        if errors:
            raise errors[0]
        c = counters()
    started = min(r["started"] for r in runs.values())
    wall = max(r["ended"] for r in runs.values()) - started
    users = sum(r["report"]["members_updated"] for r in runs.values())
    events = sum(r["report"]["events_sent"] for r in runs.values())
    send_floor_s = max(users, events) / budget * 60
    looked_up = c.get("users_looked_up", 0)
    lookup_floor_s = looked_up / lookups_per_minute * 60 if lookups_per_minute else 0.0
    floor_s = max(send_floor_s, lookup_floor_s)
    out.update({
        "members": users, "events": events, "pipeline_s": round(wall, 2), "budget_floor_s": round(floor_s, 2),
        "send_floor_s": round(send_floor_s, 2), "lookup_floor_s": round(lookup_floor_s, 2),
        "lookups_per_minute": lookups_per_minute, "users_looked_up": looked_up,
        "presence_cache": None if lookups_per_minute is None else ("warm" if warm else "cold"),
        "over_floor_pct": round(100 * (wall / floor_s - 1), 2),
        "throttled": c.get("throttled", 0),
        "sandbox_users": c.get("users_counted", 0), "sandbox_events": c.get("events_counted", 0),
        "per_program": {p: {"members": r["report"]["members_updated"], "events": r["report"]["events_sent"],
                            "start_s": round(r["started"] - started, 2), "end_s": round(r["ended"] - started, 2),
                            "phase_wall_s": {k: round(v, 2) for k, v in r["phases"].items()},
                            "load_tasks_s": [round(t["seconds"], 2) for t in r["loaded"]]}
                        for p, r in runs.items()},
        "peak_rss_mb_all_processes": round(sampler.peak_total_mb, 1),
        "sandbox_mode": "count_only, budget enforced in 60 s windows",
    })
    if live:
        out["live"] = beside
    return out


_INPROCESS = """
import json, sys, time
from datetime import date
from loyalty_moengage.night import Window
from loyalty_moengage.cli import quiet_foreign_warnings
from loyalty_moengage.sync.ops.runner import IN_PROCESS, ensure_metadata_db, load_dag
quiet_foreign_warnings()
ensure_metadata_db()
dag = load_dag(sys.argv[1])
night = date.fromisoformat(sys.argv[2])
started = time.perf_counter()
run = dag.test(logical_date=Window.of_night(night, sys.argv[3]).end, run_conf={IN_PROCESS: True})
print(json.dumps({"seconds": time.perf_counter() - started, "state": str(run.state), "run_id": run.run_id}))
"""


def run_inprocess(args: Any, dsn: str, work: Path, night: date, *, lookups_per_minute: int) -> dict[str, Any]:
    """The night as ``make run`` runs it (``dag.test`` in one process, load slots one after
    another at the whole budget), paced, the gate on, on the presence cache the previous run
    left (warm); returns its figures against the send floor."""
    import json
    import subprocess
    import sys

    from loyalty_moengage.db import connect, connection_json
    from loyalty_moengage.sync.ops.runner import airflow_env
    from loyalty_moengage_devtools import bench
    from loyalty_moengage_devtools.reset import reset_program_state
    from loyalty_moengage_devtools.sandbox import SandboxServer
    from loyalty_moengage_devtools.seed import seed_from_loyalty_db

    budget = args.paced_users_per_minute
    reset_program_state(dsn, bench.PROGRAM_ID, keep=("customer_presence",))
    programs = bench._programs_file(work / "programs-inprocess.yaml", chunk_members=args.chunk_members,
                                    load_parallelism=args.load_parallelism, verify_customers=True)
    with SandboxServer(port=0, count_only=True) as sandbox:
        sandbox.add_workspace(bench.WORKSPACE, bench.API_KEY, dc="03", users_per_minute=budget,
                              events_per_minute=budget, export_users_per_minute=lookups_per_minute)
        seed_from_loyalty_db(sandbox, bench.WORKSPACE, dsn, bench.PROGRAM_ID, missing_share=0.05)
        # The bench's Airflow home (main sets it): its metadata DB is made once, not per run.
        env = {**airflow_env(work / "airflow"), **os.environ, "LOYALTY_PROGRAMS_FILE": str(programs),
               "AIRFLOW_CONN_LOYALTY_DB": connection_json(dsn),
               "AIRFLOW_CONN_MOENGAGE_DEFAULT": sandbox.connection_json(
                   bench.WORKSPACE, bench.API_KEY, dc="03", pacing=True, users_per_minute=budget,
                   events_per_minute=budget, lookups_per_minute=lookups_per_minute)}
        bench._log(f"inprocess: dag.test of night {night} (the first run creates Airflow's metadata DB)")
        with Ticker(lambda: f"inprocess: MoEngage sandbox has "
                            f"{sandbox.state.workspace_counters(bench.WORKSPACE).get('users_counted', 0):,} users"):
            done = subprocess.run([sys.executable, "-c", _INPROCESS, bench.PROGRAM_ID, night.isoformat(),
                                   bench.TIME_ZONE], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"in-process night failed: {done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        c = sandbox.state.workspace_counters(bench.WORKSPACE)
    with connect(dsn) as conn:
        users, events = conn.execute(
            "SELECT members_updated, events_sent FROM moengage_sync.run_reports WHERE program_id = %s "
            "AND run_id = %s", (bench.PROGRAM_ID, result["run_id"])).fetchone()
    send_floor_s = max(users, events) / budget * 60
    lookup_floor_s = c.get("users_looked_up", 0) / lookups_per_minute * 60
    floor_s = max(send_floor_s, lookup_floor_s)
    return {"state": result["state"], "members": users, "events": events, "pipeline_s": round(result["seconds"], 2),
            "send_floor_s": round(send_floor_s, 2), "lookup_floor_s": round(lookup_floor_s, 2),
            "budget_floor_s": round(floor_s, 2), "over_floor_pct": round(100 * (result["seconds"] / floor_s - 1), 2),
            "throttled": c.get("throttled", 0), "users_looked_up": c.get("users_looked_up", 0),
            "budget_per_minute": budget, "lookups_per_minute": lookups_per_minute, "presence_cache": "warm",
            "timed": "dag.test() alone (the metadata DB and the DAG file loaded before the clock starts)"}
