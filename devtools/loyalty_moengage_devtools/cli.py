"""The development commands: ``python -m loyalty_moengage_devtools.cli <command>`` (or
``loyalty-moengage-dev <command>``; the Makefile calls it).

demo      load the demo program and sync last night against the local MoEngage sandbox
generate  load a synthetic program (see loyalty_moengage_devtools.generator)
sandbox   start the local MoEngage sandbox
bench     benchmark a night's sync (see loyalty_moengage_devtools.bench)
bench-api benchmark the points lookup under MoEngage-like bursts

The product's commands (db, run, plan, resend, resolve, presence, api) are ``loyalty-moengage``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta

from loyalty_moengage.cli import VERBOSE_HELP
from loyalty_moengage.night import latest_complete_night

DEMO_WORKSPACE = "DEMO_WORKSPACE"
DEMO_KEY = "demo-data-api-key"


def _quiet_airflow() -> None:
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


def cmd_demo(args: argparse.Namespace) -> int:
    _quiet_airflow()
    from loyalty_moengage import by_hand
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.db import apply_schema, connection_json, loyalty_dsn, redact_dsn
    from loyalty_moengage.sync.report.render import render

    program = get_program(args.program)
    started = time.perf_counter()
    dsn = loyalty_dsn(program.loyalty_conn_id)
    print(f"loyalty database: {redact_dsn(dsn)}")
    apply_schema(dsn)
    night = date.fromisoformat(args.night) if args.night else latest_complete_night(program.time_zone)
    if not args.keep:
        _generate_demo(args, dsn, program, night)
    os.environ.setdefault(f"AIRFLOW_CONN_{program.loyalty_conn_id.upper()}", connection_json(dsn))
    run, sync_seconds, seen = _sync_on_sandbox(args, dsn, program, night)
    dag_run = run.dag_run
    found = _last_report(dsn, program.id, night)
    if found is None:
        print(f"no run report was written; the DAG run ended {dag_run.state}")
        by_hand.say_log(run)
        return 1
    report, run_id = found
    print()
    print(render(report))
    print()
    checks = _demo_checks(report, _sent_by_run(dsn, program.id, run_id), seen,
                          receipt_attribute=program.receipt_attribute)
    live = seen.get("live")
    if live is not None:
        print(f"live mode (docs/live.md): {live['written']} purchases recorded after the night reached MoEngage in "
              f"{live['seconds']:.1f} s through one live run")
        checks.append((f"live run: {live['received_once']} of {live['written']} new events received exactly once, "
                       f"{live['received_twice']} twice",
                       live["received_once"] == live["written"] > 0 and not live["received_twice"]))
    for label, ok in checks:
        print(f"  [{'ok' if ok else 'MISMATCH'}] {label}")
    print(f"DAG run {dag_run.state} in {sync_seconds:.1f} s; demo total {time.perf_counter() - started:.1f} s")
    _say_server_stays()
    by_hand.say_log(run)
    return 0 if all(ok for _, ok in checks) and str(dag_run.state) == "success" else 1


def _say_server_stays() -> None:
    """The demo's embedded server stays up on purpose: `make api`, `make run` and the UI read it."""
    from loyalty_moengage.embedded import data_dir

    folder = data_dir()
    if (folder / "postmaster.pid").exists():
        print(f"The demo's embedded PostgreSQL ({folder}) is still running, so `make api`, `make run` and the UI "
              "find the data; `make db-stop` stops it.")


def _generate_demo(args: argparse.Namespace, dsn: str, program, night: date) -> None:
    """A fresh synthetic program ending ``night``, with the program's previous sync state forgotten."""
    from loyalty_moengage_devtools.generator import generate
    from loyalty_moengage_devtools.reset import reset_program_state

    t = time.perf_counter()
    generate(dsn, program_id=program.id, members=args.members, days=args.days, seed=args.seed,
             end_date=night + timedelta(days=1), time_zone=program.time_zone)
    reset_program_state(dsn, program.id)
    print(f"generated program {program.id!r}: {args.members:,} members, {args.days} nights of history "
          f"ending {night} ({time.perf_counter() - t:.1f} s)")


def _sync_on_sandbox(args: argparse.Namespace, dsn: str, program, night: date):
    """Sync ``night`` with ``dag.test()`` against a seeded sandbox, quiet as ``loyalty-moengage run``:
    (the by-hand run, seconds, what the sandbox saw)."""
    from loyalty_moengage import by_hand
    from loyalty_moengage_devtools.sandbox import SandboxServer
    from loyalty_moengage_devtools.seed import seed_from_loyalty_db

    with SandboxServer(port=0) as sandbox:
        sandbox.add_workspace(DEMO_WORKSPACE, DEMO_KEY, dc="03", export_users_per_minute=args.lookups_per_minute)
        seeded = seed_from_loyalty_db(sandbox, DEMO_WORKSPACE, dsn, program.id, missing_share=args.missing_share)
        os.environ[f"AIRFLOW_CONN_{program.moengage_conn_id.upper()}"] = sandbox.connection_json(
            DEMO_WORKSPACE, DEMO_KEY, dc="03", lookups_per_minute=args.lookups_per_minute)
        print(f"MoEngage sandbox on {sandbox.url}: {seeded['seeded']:,} of {seeded['members']:,} members exist "
              f"in MoEngage ({seeded['missing']:,} missing, as in real life)")
        if args.lookups_per_minute != 1000:
            print(f"  Get User API budget set to {args.lookups_per_minute:,}/min for the demo (MoEngage: 1,000/min; "
                  "a real program's first night pays about 1 min per 1,000 customers with events, later nights "
                  "are served from the cache)")
        t = time.perf_counter()
        run = by_hand.run_night(program, night, conf=None, verbose=args.verbose)
        sync_seconds = time.perf_counter() - t
        seen = {"received": Counter(e["action"] for e in sandbox.state.events(DEMO_WORKSPACE)),
                "counters": sandbox.state.workspace_counters(DEMO_WORKSPACE),
                "drops": Counter(d["reason"] for d in sandbox.state.drops(DEMO_WORKSPACE))}
        if str(run.dag_run.state) == "success":
            from contextlib import nullcontext

            from loyalty_moengage_devtools.live_demo import live_step

            # Quiet as the night: Airflow's and the sync's log lines go to the run's by-hand log.
            with by_hand.airflow_output_to(run.log, sys.stdout) if run.log is not None else nullcontext():
                seen["live"] = live_step(dsn, program, sandbox, DEMO_WORKSPACE)
    return run, sync_seconds, seen


def _last_report(dsn: str, program_id: str, night: date) -> tuple[dict, str] | None:
    """The newest run report of the night and its run id, or None when none was written."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.report.report import stored

    with connect(dsn) as conn:
        row = conn.execute(
            "SELECT run_id FROM moengage_sync.run_reports WHERE program_id = %s AND night = %s "
            "ORDER BY reported_at DESC LIMIT 1", (program_id, night)).fetchone()
        if row is None:
            return None
        return stored(conn, program_id, row[0]), row[0]


def _demo_checks(report: dict, sent: "SentByRun", seen: dict, *,
                 receipt_attribute: str) -> list[tuple[str, bool]]:
    """What the sandbox received against what this run sent (a rerun with ``--keep`` sends
    nothing: the report's night totals then count an earlier run's sends, this sandbox none)."""
    received, counters, drops = seen["received"], seen["counters"], seen["drops"]
    # Each events request also wrote its receipt on one member: not a member update of the night.
    receipts = counters.get(f"single_attribute_updates:{receipt_attribute}", 0)
    users_accepted = counters.get("users_updated", 0) + counters.get("users_created", 0) - receipts
    users_dropped = drops.get("update_existing_only is true and the user does not exist", 0)
    checks = [
        ("events received by the sandbox = events this run sent", sum(received.values()) == sum(sent.events.values())),
        ("events by type agree", dict(received) == sent.events),
        ("members updated + unknown to MoEngage = member updates this run sent",
         users_accepted + users_dropped == sent.users),
        ("the night's report counts at least what this run sent",
         report["events_sent"] >= sum(sent.events.values()) and report["members_updated"] >= sent.users),
        ("no MoEngage profile created", counters.get("users_created", 0) == 0),
    ]
    print(f"sandbox: {sum(received.values()):,} events received, {users_accepted:,} members updated "
          f"({receipts:,} receipts besides), "
          f"{users_dropped:,} member updates dropped (not in MoEngage), "
          f"{counters.get('users_created_by_events', 0):,} profiles created by events of unknown users")
    return checks


@dataclass(frozen=True)
class SentByRun:
    """What one run's loads sent (``batches.sent_by_run``): events by name, and member updates."""

    events: dict[str, int]
    users: int


def _sent_by_run(dsn: str, program_id: str, run_id: str) -> SentByRun:
    from loyalty_moengage.db import connect

    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT k.event_name, count(*) FROM moengage_sync.event_keys k JOIN moengage_sync.batches b "
            "USING (batch_id) WHERE b.program_id = %s AND b.sent_by_run = %s AND b.state = 'sent' GROUP BY 1",
            (program_id, run_id)).fetchall()
        (users,) = conn.execute(
            "SELECT coalesce(sum(users), 0) FROM moengage_sync.batches WHERE program_id = %s AND sent_by_run = %s "
            "AND state = 'sent' AND kind = 'users'", (program_id, run_id)).fetchone()
    return SentByRun(events={name: n for name, n in rows}, users=int(users))


def cmd_generate(args: argparse.Namespace) -> int:
    from loyalty_moengage_devtools.generator import main

    return main(args.rest) or 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from loyalty_moengage_devtools.sandbox.__main__ import main

    return main(args.rest) or 0


def cmd_bench(args: argparse.Namespace) -> int:
    from loyalty_moengage_devtools.bench import main

    return main(args.rest) or 0


def cmd_bench_api(args: argparse.Namespace) -> int:
    from loyalty_moengage_devtools.bench_api import main

    return main(args.rest) or 0


PASSTHROUGH = {"generate": cmd_generate, "sandbox": cmd_sandbox, "bench": cmd_bench, "bench-api": cmd_bench_api}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loyalty-moengage-dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="load the demo program and sync last night against the sandbox")
    demo.add_argument("--program", default="demo")
    demo.add_argument("--members", type=int, default=10_000)
    demo.add_argument("--days", type=int, default=60)
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--night", help="YYYY-MM-DD (default: last night in the program's zone)")
    demo.add_argument("--missing-share", type=float, default=0.02,
                      help="share of members the sandbox pretends MoEngage does not know")
    demo.add_argument("--lookups-per-minute", type=int, default=20_000,
                      help="Get User API budget of the sandbox workspace (MoEngage's is 1,000)")
    demo.add_argument("--keep", action="store_true",
                      help="do not regenerate: rerun the sync on the existing data (shows no event is sent twice)")
    demo.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    demo.set_defaults(func=cmd_demo)
    for name, func in PASSTHROUGH.items():
        p = sub.add_parser(name, help=f"see `loyalty-moengage-dev {name} --help`", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    from loyalty_moengage.cli import dispatch

    return dispatch(build_parser, PASSTHROUGH, argv)


if __name__ == "__main__":
    sys.exit(main())
