"""The night beside live traffic: how much the live lane slows a night on one workspace budget.

The same generated night is sent twice through the bench's paced pipeline (``bench/paced.py``:
worker processes, the workspace Pool's slots, the sandbox enforcing the budget in MoEngage's 60 s
windows with 429s): once with live mode off, once with live mode on while a writer commits loyalty
events and a live run goes every ``--every`` seconds at the share ``live_share`` gives it
(``live.budget_share`` while the night sends). With live mode on the night paces at the budget
less that share, so the figure to hold is the night's time beside live traffic against its time
alone: at most 1 / (1 - share) - 1 longer (5.3 % at the default 5 %), and no 429 (together they
kept the budget). The writer's default rate fills the live lane's share, the worst case.

The budget is lowered (``--budget``, default 6,000 users and events a minute, printed in the
report) so a night of ``--members`` lasts a few of MoEngage's 60 s windows; the ratio does not
depend on the budget. Report: ``bench/results/live-share-latest.md`` (and ``.json``).

    python -m loyalty_moengage_devtools.bench.live_share --dsn postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Iterator

from loyalty_moengage_devtools.airflow_stack import PROJECT_ROOT, with_database
from loyalty_moengage_devtools.bench.live import on_server, write_report

RESULTS = PROJECT_ROOT / "bench" / "results"


def _one_live_run(dsn: str, program_id: str, n: int) -> dict[str, Any]:
    """One live run as the DAG's task makes it: its share from the nights sending, no presence gate."""
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.live.run import LiveRun, live_share, run_live

    program = get_program(program_id)
    share = live_share(dsn, [program_id], program.live.budget_share)
    hook = MoEngageHook(moengage_conn_id=program.moengage_conn_id, share=share)
    started = time.time()
    stats = run_live(LiveRun.of(program, f"bench-share-{n}", 1, dsn, dsn), hook=hook, lookup=None)
    return {"at": started, "share": share, "events_sent": stats.get("events_sent", 0),
            "seconds": stats.get("seconds"), "throttled": stats.get("throttled", 0),
            "pacing_seconds": stats.get("pacing_seconds", 0.0), "lag_seconds": stats.get("lag_seconds")}


@contextmanager
def live_traffic(sandbox: Any, *, dsn: str, program_id: str, rate: float, every: float) -> Iterator[dict[str, Any]]:
    """A writer committing ``rate`` rows a second and a live run every ``every`` seconds, for as
    long as the block runs; yields the dict its figures are written into when it ends."""
    from loyalty_moengage_devtools.live_writer import LiveWriter, Plan

    writer = LiveWriter(dsn, program_id, Plan(rate=rate, seconds=24 * 3600.0)).start()
    runs: list[dict[str, Any]] = []
    errors: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        n = 0
        while not stop.wait(every):
            try:
                runs.append(_one_live_run(dsn, program_id, n))
            except Exception as exc:  # noqa: BLE001 - reported with the figures
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
            n += 1

    thread = threading.Thread(target=loop, daemon=True)
    out: dict[str, Any] = {"rate_per_s": rate, "every_s": every}
    started = time.time()
    thread.start()
    try:
        yield out
    finally:
        ended = time.time()
        stop.set()
        thread.join(300)
        writer.stop()
        writer.join(30)
        out.update({"seconds": round(ended - started, 2), "rows_written": writer.written,
                    "live_runs": len(runs), "live_events_sent": sum(r["events_sent"] for r in runs),
                    "shares": sorted({r["share"] for r in runs}), "live_429s": sum(r["throttled"] for r in runs),
                    "live_pacing_seconds": round(sum(r["pacing_seconds"] for r in runs), 2),
                    "errors": (errors + writer.errors)[:5]})


def figures(alone: dict[str, Any], beside: dict[str, Any], *, share: float) -> dict[str, Any]:
    """The night's slowdown beside live traffic and the verdict (pure: unit-tested)."""
    slower = beside["pipeline_s"] / alone["pipeline_s"] - 1
    allowed = 1 / (1 - share) - 1
    live = beside.get("live") or {}
    held = (slower <= allowed + 0.01 and alone["throttled"] == 0 and beside["throttled"] == 0
            and not live.get("errors") and live.get("live_events_sent", 0) > 0)
    return {"night_alone_s": alone["pipeline_s"], "night_beside_live_s": beside["pipeline_s"],
            "slower_pct": round(100 * slower, 2), "allowed_pct": round(100 * allowed, 2),
            "throughput_loss_pct": round(100 * (1 - alone["pipeline_s"] / beside["pipeline_s"]), 2),
            "429s": {"alone": alone["throttled"], "beside_live": beside["throttled"]},
            "held": held}


def render(r: dict[str, Any]) -> str:
    f, live = r["figures"], r["beside_live"].get("live", {})
    rows = [
        ("night alone (live mode off)", f"{f['night_alone_s']} s: {r['alone']['members']:,} users + "
                                        f"{r['alone']['events']:,} events"),
        ("the same night beside live traffic", f"{f['night_beside_live_s']} s: {r['beside_live']['members']:,} "
                                               f"users + {r['beside_live']['events']:,} events"),
        ("slower by (allowed: 1 / (1 - share) - 1)", f"{f['slower_pct']} % ({f['allowed_pct']} %)"),
        ("night throughput lost", f"{f['throughput_loss_pct']} %"),
        ("live traffic beside it", f"{live.get('rows_written', 0):,} rows written at {live.get('rate_per_s')}/s, "
                                   f"{live.get('live_runs', 0)} live runs, {live.get('live_events_sent', 0):,} events "
                                   f"sent live, shares {live.get('shares')}"),
        ("429s (alone / beside live / the live runs)", f"{f['429s']['alone']} / {f['429s']['beside_live']} / "
                                                       f"{live.get('live_429s', 0)}"),
        ("verdict", "held" if f["held"] else "NOT held"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    errors = live.get("errors") or []
    return (f"# The night beside live traffic ({r['started_at']})\n\n`{r['command']}`\n\n"
            f"Budget **{r['budget_per_minute']:,} users and {r['budget_per_minute']:,} events a minute** (lowered "
            f"from MoEngage's 60,000 so the night lasts several 60 s windows; the ratio does not depend on it), "
            f"{r['members']:,} members, live.budget_share {r['share']}, {r['workers']} worker processes, "
            f"commit {r['commit']}.\n\n| figure | value |\n|---|---|\n{table}\n"
            + (f"\nErrors: {errors}\n" if errors else ""))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import os
    import tempfile

    import psycopg

    from loyalty_moengage.config.live_policy import LivePolicy
    from loyalty_moengage.db import apply_schema
    from loyalty_moengage.night import latest_complete_night
    from loyalty_moengage.paths import state_dir
    from loyalty_moengage.sync.ops.runner import airflow_env
    from loyalty_moengage_devtools import bench
    from loyalty_moengage_devtools.bench.paced import run_paced
    from loyalty_moengage_devtools.environ import restored_environ

    for key, value in airflow_env(state_dir() / "airflow").items():
        os.environ.setdefault(key, value)
    share = LivePolicy().budget_share
    rate = args.rate if args.rate is not None else round(args.budget * share / 60, 2)
    database = f"lm_bench_share_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    dsn = with_database(args.dsn, database)
    paced = argparse.Namespace(paced_users_per_minute=args.budget, days=args.days, seed=args.seed, chunk_members=None,
                               load_parallelism=None, paced_pool_slots=None, workers=args.workers)
    night = latest_complete_night(bench.TIME_ZONE)
    r: dict[str, Any] = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "commit": bench._git_commit(), "budget_per_minute": args.budget, "members": args.members,
                         "share": share, "workers": args.workers, "night": night.isoformat(),
                         "command": "python -m loyalty_moengage_devtools.bench.live_share " + " ".join(args.argv)}
    try:
        apply_schema(dsn)
        with restored_environ("LOYALTY_PROGRAMS_FILE", "AIRFLOW_CONN_LOYALTY_DB", "AIRFLOW_CONN_MOENGAGE_DEFAULT"), \
                tempfile.TemporaryDirectory(prefix="lm-bench-share-") as tmp:
            r["alone"] = run_paced(paced, dsn, Path(tmp), night, members=[args.members], label="alone")
            bench._log(f"alone: {r['alone']['pipeline_s']} s, {r['alone']['throttled']} 429s")
            traffic = partial(live_traffic, dsn=dsn, program_id=bench.PROGRAM_ID, rate=rate, every=args.every)
            r["beside_live"] = run_paced(paced, dsn, Path(tmp), night, members=[args.members], label="beside_live",
                                         live=traffic)
            bench._log(f"beside live: {r['beside_live']['pipeline_s']} s, {r['beside_live']['throttled']} 429s, "
                       f"{r['beside_live']['live']}")
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    r["figures"] = figures(r["alone"], r["beside_live"], share=share)
    return r


def main(argv: list[str] | None = None) -> int:
    import logging
    import sys

    parser = argparse.ArgumentParser(prog="python -m loyalty_moengage_devtools.bench.live_share",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=None, help="Postgres server for the benchmark's database "
                                                    "(default: an embedded one of the benchmark's own)")
    parser.add_argument("--members", type=int, default=12_000)
    parser.add_argument("--budget", type=int, default=6_000, help="users and events a minute (default 6,000)")
    parser.add_argument("--rate", type=float, default=None,
                        help="rows the writer commits a second (default: the live lane's share of the budget)")
    parser.add_argument("--every", type=float, default=20.0, help="seconds between live runs (default 20)")
    parser.add_argument("--days", type=int, default=2, help="nights of history the generator writes (default 2)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "live-share-latest.json")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    r = on_server(args, run, "bench-pgdata")
    write_report(args.out, r, render(r))
    return 0 if r["figures"]["held"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
