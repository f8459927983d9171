"""The project's command line: ``python -m loyalty_moengage.cli <command>`` (the Makefile calls it).

demo      load the demo program and sync last night against the local MoEngage sandbox
db        url | up | stop | schema: the loyalty database (embedded unless configured)
generate  load a synthetic program (see loyalty_moengage_devtools.generator)
run       sync one night of one program now (in-process, dag.test)
plan      dry run of one night: counts, quarantine, sample payloads, requests, minutes; sends nothing
resend    re-queue uncertain batches (or, with --all-events, a whole night) of one program
resolve   record that uncertain batches did reach MoEngage (checked there by an operator)
sandbox   start the local MoEngage sandbox
api       serve the MoEngage-facing Content API / connector webhook
bench     benchmark a night's sync (see loyalty_moengage_devtools.bench)
bench-api benchmark the points lookup under MoEngage-like bursts
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

DEMO_WORKSPACE = "DEMO_WORKSPACE"
DEMO_KEY = "demo-data-api-key"


def _quiet_airflow() -> None:
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


def _last_night(time_zone: str) -> date:
    return datetime.now(timezone.utc).astimezone(ZoneInfo(time_zone)).date() - timedelta(days=1)


def cmd_db(args: argparse.Namespace) -> int:
    from loyalty_moengage.db import apply_schema, loyalty_dsn, redact_dsn
    from loyalty_moengage.embedded import EmbeddedServerError, data_dir, stop_server

    if args.action == "stop":
        try:
            stopped = stop_server()
        except EmbeddedServerError as exc:
            print(f"embedded PostgreSQL NOT stopped: {exc}", file=sys.stderr)
            return 1
        print(f"embedded PostgreSQL stopped ({data_dir()})" if stopped
              else f"no embedded PostgreSQL was running in {data_dir()}")
        return 0
    dsn = loyalty_dsn()
    if args.action == "schema":
        apply_schema(dsn)
        print(f"schema applied on {redact_dsn(dsn)}")
    else:
        print(redact_dsn(dsn) if args.action == "url" else f"up: {redact_dsn(dsn)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _quiet_airflow()
    from loyalty_moengage.db import apply_schema, connect, connection_json, loyalty_dsn, redact_dsn
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.sync.report import render
    from loyalty_moengage_devtools.sandbox import SandboxServer

    program = get_program(args.program)
    started = time.perf_counter()
    dsn = loyalty_dsn(program.loyalty_conn_id)
    print(f"loyalty database: {redact_dsn(dsn)}")
    apply_schema(dsn)
    night = date.fromisoformat(args.night) if args.night else _last_night(program.time_zone)
    if not args.keep:
        from loyalty_moengage_devtools.generator import generate

        t = time.perf_counter()
        summary = generate(dsn, program_id=program.id, members=args.members, days=args.days, seed=args.seed,
                           end_date=night + timedelta(days=1), time_zone=program.time_zone)
        from loyalty_moengage_devtools.reset import reset_program_state

        reset_program_state(dsn, program.id)
        print(f"generated program {program.id!r}: {args.members:,} members, {args.days} nights of history "
              f"ending {night} ({time.perf_counter() - t:.1f} s)")
        del summary
    os.environ.setdefault(f"AIRFLOW_CONN_{program.loyalty_conn_id.upper()}", connection_json(dsn))
    with SandboxServer(port=0) as sandbox:
        sandbox.add_workspace(DEMO_WORKSPACE, DEMO_KEY, dc="03", export_users_per_minute=args.lookups_per_minute)
        from loyalty_moengage_devtools.seed import seed_from_loyalty_db

        seeded = seed_from_loyalty_db(sandbox, DEMO_WORKSPACE, dsn, program.id, missing_share=args.missing_share)
        os.environ[f"AIRFLOW_CONN_{program.moengage_conn_id.upper()}"] = sandbox.connection_json(
            DEMO_WORKSPACE, DEMO_KEY, dc="03", lookups_per_minute=args.lookups_per_minute)
        print(f"MoEngage sandbox on {sandbox.url}: {seeded['seeded']:,} of {seeded['members']:,} members exist "
              f"in MoEngage ({seeded['missing']:,} missing, as in real life)")
        if args.lookups_per_minute != 1000:
            print(f"  Get User API budget set to {args.lookups_per_minute:,}/min for the demo (MoEngage: 1,000/min; "
                  "a real program's first night pays about 1 min per 1,000 customers with events, later nights "
                  "are served from the cache)")
        print(f"syncing night {night} of {program.id!r} with `dag.test()` ...", flush=True)
        from loyalty_moengage.sync.runner import run_night

        t = time.perf_counter()
        dag_run = run_night(program.id, night, program.time_zone)
        sync_seconds = time.perf_counter() - t
        received = Counter(e["action"] for e in sandbox.state.events(DEMO_WORKSPACE))
        counters = sandbox.state.workspace_counters(DEMO_WORKSPACE)
        drops = Counter(d["reason"] for d in sandbox.state.drops(DEMO_WORKSPACE))
    with connect(dsn) as conn:
        row = conn.execute(
            "SELECT run_id FROM moengage_sync.run_reports WHERE program_id = %s AND night = %s "
            "ORDER BY reported_at DESC LIMIT 1", (program.id, night)).fetchone()
        if row is None:
            print(f"no run report was written; the DAG run ended {dag_run.state}")
            return 1
        report = _report_dict(conn, program.id, night, row[0])
    print()
    print(render(report))
    print()
    sent_by_type = _sent_events_by_type(dsn, program.id, row[0])
    users_accepted = counters.get("users_updated", 0) + counters.get("users_created", 0)
    users_dropped = drops.get("update_existing_only is true and the user does not exist", 0)
    checks = [
        ("events received by the sandbox = events sent", sum(received.values()) == report["events_sent"]),
        ("events by type agree", dict(received) == sent_by_type),
        ("members updated + unknown to MoEngage = member updates sent",
         users_accepted + users_dropped == report["members_updated"]),
        ("no MoEngage profile created", counters.get("users_created", 0) == 0),
    ]
    print(f"sandbox: {sum(received.values()):,} events received, {users_accepted:,} members updated, "
          f"{users_dropped:,} member updates dropped (not in MoEngage), "
          f"{counters.get('users_created_by_events', 0):,} profiles created by events of unknown users")
    for label, ok in checks:
        print(f"  [{'ok' if ok else 'MISMATCH'}] {label}")
    print(f"DAG run {dag_run.state} in {sync_seconds:.1f} s; demo total {time.perf_counter() - started:.1f} s")
    return 0 if all(ok for _, ok in checks) and str(dag_run.state) == "success" else 1


def _report_dict(conn, program_id: str, night: date, run_id: str) -> dict:
    cur = conn.execute(
        "SELECT * FROM moengage_sync.run_reports WHERE program_id = %s AND night = %s AND run_id = %s",
        (program_id, night, run_id))
    names = [d.name for d in cur.description]
    report = dict(zip(names, cur.fetchone()))
    report["night"] = report["night"].isoformat()
    report["notes"] = list(report["notes"] or [])
    return report


def _sent_events_by_type(dsn: str, program_id: str, run_id: str) -> dict[str, int]:
    from loyalty_moengage.db import connect

    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT k.event_name, count(*) FROM moengage_sync.event_keys k JOIN moengage_sync.batches b "
            "USING (batch_id) WHERE b.program_id = %s AND b.run_id = %s AND b.state = 'sent' GROUP BY 1",
            (program_id, run_id)).fetchall()
    return {name: n for name, n in rows}


def cmd_run(args: argparse.Namespace) -> int:
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.sync.plan import NightNotOverError, ensure_night_over
    from loyalty_moengage.sync.runner import night_end, run_night
    from loyalty_moengage.sync.tasks import now

    program = get_program(args.program)
    night = date.fromisoformat(args.night) if args.night else _last_night(program.time_zone)
    try:
        ensure_night_over(night, night_end(night, program.time_zone), program.time_zone, now())
    except NightNotOverError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    conf = {"force_attributes": True} if args.force_attributes else None
    dag_run = run_night(program.id, night, program.time_zone, conf=conf)
    print(f"{program.dag_id} night {night}: {dag_run.state}")
    return 0 if str(dag_run.state) == "success" else 1


def cmd_resend(args: argparse.Namespace) -> int:
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.db import loyalty_dsn
    from loyalty_moengage.sync.resend import resend

    program = get_program(args.program)
    dsn = loyalty_dsn(program.state_conn)
    result = resend(dsn, program_id=program.id, night=date.fromisoformat(args.night) if args.night else None,
                    batch_ids=args.batch, all_events=args.all_events,
                    requested_by=args.requested_by or getpass.getuser(), reason=args.reason)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.db import loyalty_dsn
    from loyalty_moengage.sync.resend import resolve

    program = get_program(args.program)
    result = resolve(loyalty_dsn(program.state_conn), program_id=program.id,
                     night=date.fromisoformat(args.night) if args.night else None, batch_ids=args.batch,
                     requested_by=args.requested_by or getpass.getuser(), reason=args.reason)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from loyalty_moengage_devtools.generator import main

    return main(args.rest) or 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from loyalty_moengage_devtools.sandbox.__main__ import main

    return main(args.rest) or 0


def cmd_api(args: argparse.Namespace) -> int:
    from loyalty_moengage.api.__main__ import main

    return main(args.rest) or 0


def cmd_bench(args: argparse.Namespace) -> int:
    from loyalty_moengage_devtools.bench import main

    return main(args.rest) or 0


def cmd_plan(args: argparse.Namespace) -> int:
    from loyalty_moengage.sync.dry_run import main

    return main(args.rest) or 0


def cmd_bench_api(args: argparse.Namespace) -> int:
    from loyalty_moengage_devtools.bench_api import main

    return main(args.rest) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loyalty-moengage", description=__doc__,
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
    demo.set_defaults(func=cmd_demo)
    db = sub.add_parser("db", help="the loyalty database")
    db.add_argument("action", choices=["url", "up", "stop", "schema"])
    db.set_defaults(func=cmd_db)
    run = sub.add_parser("run", help="sync one night of one program now")
    run.add_argument("--program", default="demo")
    run.add_argument("--night")
    run.add_argument("--force-attributes", action="store_true",
                     help="send every member's attributes again, even those MoEngage already accepted")
    run.set_defaults(func=cmd_run)
    resend = sub.add_parser("resend", help="re-queue uncertain batches (default) or a whole night")
    resend.add_argument("--program", required=True)
    resend.add_argument("--night", help="only this night's uncertain batches (default: every night's)")
    resend.add_argument("--batch", type=int, action="append",
                        help="only this uncertain batch (moengage_sync.batches.batch_id); repeatable")
    resend.add_argument("--all-events", action="store_true",
                        help="resend the whole night, events MoEngage accepted included (needs --night)")
    resend.add_argument("--reason", required=True)
    resend.add_argument("--requested-by")
    resend.set_defaults(func=cmd_resend)
    resolve = sub.add_parser("resolve", help="record that uncertain batches did reach MoEngage")
    resolve.add_argument("--program", required=True)
    resolve.add_argument("--night", help="only this night's uncertain batches (default: every night's)")
    resolve.add_argument("--batch", type=int, action="append",
                         help="only this uncertain batch (moengage_sync.batches.batch_id); repeatable")
    resolve.add_argument("--reason", required=True)
    resolve.add_argument("--requested-by")
    resolve.set_defaults(func=cmd_resolve)
    for name, func in (("generate", cmd_generate), ("sandbox", cmd_sandbox), ("api", cmd_api),
                       ("bench", cmd_bench), ("bench-api", cmd_bench_api), ("plan", cmd_plan)):
        p = sub.add_parser(name, help=f"see `python -m loyalty_moengage.cli {name} --help`", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    from loyalty_moengage.paths import state_dir
    from loyalty_moengage.sync.runner import airflow_env

    for key, value in airflow_env(state_dir() / "airflow").items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = {"generate": cmd_generate, "sandbox": cmd_sandbox, "api": cmd_api,
                   "bench": cmd_bench, "bench-api": cmd_bench_api, "plan": cmd_plan}
    if argv and argv[0] in passthrough:  # their own parsers own every flag after the command
        return passthrough[argv[0]](argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
