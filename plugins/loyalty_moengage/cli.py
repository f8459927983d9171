"""The project's command line: ``python -m loyalty_moengage.cli <command>`` (the Makefile calls it).

db        url | up | stop | schema: the loyalty database (embedded unless configured)
run       sync one night of one program now (in-process, dag.test): a line per task, then the report
plan      dry run of one night: counts, quarantine, sample payloads, requests, minutes; sends nothing
          (both keep Airflow's records in $AIRFLOW_HOME/logs/by-hand/; --verbose prints them instead)
resend    re-queue uncertain batches (or, with --all-events, a whole night) of one program
resolve   record that uncertain batches did reach MoEngage (checked there by an operator)
presence  import: mark the customers of a MoEngage export (CSV, or one id per line) as known to MoEngage
api       serve the MoEngage-facing Content API / connector webhook

The development commands (demo, generate, sandbox, bench, bench-api) are in the separate
loyalty-moengage-devtools distribution (devtools/): ``loyalty-moengage-dev``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from datetime import date
from typing import Callable


def cmd_db(args: argparse.Namespace) -> int:
    from loyalty_moengage.db import apply_schema, loyalty_dsn, redact_dsn
    from loyalty_moengage.embedded import EmbeddedServerError, data_dir, stop_all
    from loyalty_moengage.paths import state_dir

    if args.action == "stop":
        # Every data folder of the project: the demo's, and any a test, drill or bench run left.
        results = stop_all()
        for name, result in results:
            if isinstance(result, EmbeddedServerError):
                print(f"embedded PostgreSQL NOT stopped: {result}", file=sys.stderr)
            elif result:
                print(f"embedded PostgreSQL stopped ({data_dir(name)})")
        if not any(r is True or isinstance(r, EmbeddedServerError) for _, r in results):
            print(f"no embedded PostgreSQL was running under {state_dir()}")
        return 1 if any(isinstance(r, EmbeddedServerError) for _, r in results) else 0
    dsn = loyalty_dsn()
    if args.action == "schema":
        apply_schema(dsn)
        print(f"schema applied on {redact_dsn(dsn)}")
    else:
        print(redact_dsn(dsn) if args.action == "url" else f"up: {redact_dsn(dsn)}")
    return 0


def _night(program, night: str | None) -> date | None:
    """The night asked for (default: the newest complete one), or None after saying it has not ended."""
    from loyalty_moengage.night import NightNotOverError, Window, ensure_over, latest_complete_night

    chosen = date.fromisoformat(night) if night else latest_complete_night(program.time_zone)
    try:
        ensure_over(Window.of_night(chosen, program.time_zone))
    except NightNotOverError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return None
    return chosen


def cmd_run(args: argparse.Namespace) -> int:
    """The night in-process: a line per task, the run report, the log file (``--verbose``: Airflow's own output)."""
    from loyalty_moengage import by_hand
    from loyalty_moengage.config.programs import get_program

    program = get_program(args.program)
    night = _night(program, args.night)
    if night is None:
        return 2
    conf = {"force_attributes": True} if args.force_attributes else None
    run = by_hand.run_night(program, night, conf=conf, verbose=args.verbose)
    dag_run = run.dag_run
    if run.log is not None:
        report = _run_report(program, dag_run.run_id)
        print("\n" + by_hand.redact(report) + "\n" if report else "no run report was written")
    print(f"{program.dag_id} night {night}: {dag_run.state}")
    by_hand.say_log(run)
    return 0 if str(dag_run.state) == "success" else 1


def _run_report(program, run_id: str) -> str | None:
    """The rendered report of the run, as its report task logged it; None when it wrote none."""
    from loyalty_moengage.db import connect, loyalty_dsn
    from loyalty_moengage.sync.report.render import render
    from loyalty_moengage.sync.report.report import stored

    with connect(loyalty_dsn(program.state_conn)) as conn:
        report = stored(conn, program.id, run_id)
    return None if report is None else render(report)


def cmd_plan(args: argparse.Namespace) -> int:
    """The dry run: the DAG run with ``dry_run`` in-process, then its summary."""
    from loyalty_moengage import by_hand
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.db import connect, loyalty_dsn
    from loyalty_moengage.sync.report.render import render_dry_run

    program = get_program(args.program)
    night = _night(program, args.night)
    if night is None:
        return 2
    # With --json, stdout is the JSON alone: the task lines and the log's name go to stderr.
    lines = sys.stderr if args.json else sys.stdout
    run = by_hand.run_night(program, night, conf={"dry_run": True}, verbose=args.verbose, terminal=lines)
    dag_run = run.dag_run
    with connect(loyalty_dsn(program.state_conn)) as conn:
        row = conn.execute("SELECT stats FROM moengage_sync.dry_runs WHERE program_id = %s AND run_id = %s "
                           "AND task_key = 'report'", (program.id, dag_run.run_id)).fetchone()
    if row is None:
        print(f"the dry run wrote no summary; the DAG run ended {dag_run.state}", file=sys.stderr)
        by_hand.say_log(run, sys.stderr)
        return 1
    print(json.dumps(row[0], indent=2) if args.json else render_dry_run(row[0]))
    by_hand.say_log(run, lines)
    return 0 if str(dag_run.state) == "success" else 1


def cmd_resend(args: argparse.Namespace) -> int:
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.db import loyalty_dsn
    from loyalty_moengage.sync.ops.resend import resend

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
    from loyalty_moengage.sync.ops.resend import resolve

    program = get_program(args.program)
    result = resolve(loyalty_dsn(program.state_conn), program_id=program.id,
                     night=date.fromisoformat(args.night) if args.night else None, batch_ids=args.batch,
                     requested_by=args.requested_by or getpass.getuser(), reason=args.reason)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_presence(args: argparse.Namespace) -> int:
    from datetime import datetime, timedelta, timezone
    from pathlib import Path

    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.db import connect, ensure_state_schema, loyalty_dsn
    from loyalty_moengage.moengage.presence_import import PresenceFileError, import_presence, read_ids

    from loyalty_moengage.progress import Progress

    program = get_program(args.program)
    lifetime = timedelta(hours=program.presence_lifetime_hours)
    dsn = loyalty_dsn(program.state_conn)
    ensure_state_schema(dsn)
    try:
        with connect(dsn) as conn, Progress(f"presence import {Path(args.file).name}", unit="rows") as step:
            counts = import_presence(conn, program_id=program.id, ids=read_ids(Path(args.file), column=args.column),
                                     lifetime=lifetime, dry_run=args.dry_run,
                                     progress=lambda counts: step.update(counts.rows))
            step.update(counts.rows)
    except (PresenceFileError, UnicodeDecodeError) as exc:
        print(f"presence import refused: {exc}", file=sys.stderr)
        return 2
    verb = "would mark" if args.dry_run else "marked"
    print(f"{args.file}: {counts.rows:,} rows, {counts.ids:,} distinct customer ids ({counts.refused:,} refused as "
          f"customer_id values, {counts.duplicates:,} repeated); {counts.already_present:,} already known present; "
          f"{verb} {counts.marked_present:,} present ({counts.absences_overturned:,} of them cached as absent) for "
          f"program {program.id}" + (" (dry run: nothing written)" if args.dry_run else ""))
    until = (datetime.now(timezone.utc) + lifetime).strftime("%Y-%m-%d %H:%M UTC")
    print(f"A file is not MoEngage's confirmation: the presence it marks {'would be' if args.dry_run else 'is'} "
          f"trusted for {program.presence_lifetime_hours} h (presence_lifetime_hours), until {until}, as a Get User "
          f"answer given now would be ({counts.expired_reasserted:,} of them were expired confirmations). The presence "
          "refresher asks MoEngage about the recently active ones first; past that time, unconfirmed, a customer's "
          "events wait for MoEngage's answer.")
    if args.json:
        print(json.dumps(counts.as_dict(), indent=2))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from loyalty_moengage.api.__main__ import main

    return main(args.rest) or 0


VERBOSE_HELP = ("print Airflow's own records on the terminal (by default: a line per task, then the report; the "
                "records go to a file under $AIRFLOW_HOME/logs/by-hand/)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loyalty-moengage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    db = sub.add_parser("db", help="the loyalty database")
    db.add_argument("action", choices=["url", "up", "stop", "schema"])
    db.set_defaults(func=cmd_db)
    run = sub.add_parser("run", help="sync one night of one program now")
    run.add_argument("--program", default="demo")
    run.add_argument("--night")
    run.add_argument("--force-attributes", action="store_true",
                     help="send every member's attributes again, even those MoEngage already accepted")
    run.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    run.set_defaults(func=cmd_run)
    plan = sub.add_parser("plan", help="dry run of one night: what would be sent; sends nothing")
    plan.add_argument("--program", default="demo")
    plan.add_argument("--night", help="YYYY-MM-DD (default: last night in the program's zone)")
    plan.add_argument("--json", action="store_true", help="print the summary as JSON")
    plan.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    plan.set_defaults(func=cmd_plan)
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
    presence = sub.add_parser("presence", help="the cache of customers MoEngage has (the presence gate)")
    psub = presence.add_subparsers(dest="action", required=True)
    imp = psub.add_parser("import", help="mark the customers of a MoEngage export as present, for the program's "
                                         "presence_lifetime_hours from now at most (then checked with MoEngage again)")
    imp.add_argument("--program", required=True)
    imp.add_argument("--file", required=True, help="a CSV export (a customer id column) or one id per line")
    imp.add_argument("--column", help="the CSV column holding the customer id (default: customer_id, ID, ...)")
    imp.add_argument("--dry-run", action="store_true", help="count only; write nothing")
    imp.add_argument("--json", action="store_true", help="also print the counts as JSON")
    imp.set_defaults(func=cmd_presence)
    for name, func in (("api", cmd_api),):
        p = sub.add_parser(name, help=f"see `loyalty-moengage {name} --help`", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)
    return parser


#: Warnings of libraries under Airflow that a user of these commands neither caused nor can act on.
FOREIGN_WARNINGS = (
    r"XDG_RUNTIME_DIR is not set",                            # platformdirs, on machines without a login session
    r".*GitWildMatchPattern.*is deprecated",                  # pathspec, inside Airflow's .airflowignore reader
    r"Using `httpx` with `starlette.testclient` is deprecated",   # fastapi's import of starlette's test client
)


def quiet_foreign_warnings() -> None:
    """Hide ``FOREIGN_WARNINGS`` in this process (a worker process the bench spawns calls it too)."""
    import warnings

    # Airflow's configuration puts its own DeprecationWarning filter first when it is imported:
    # import it now, so these filters go in front of it.
    import airflow.configuration  # noqa: F401

    for message in FOREIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def dispatch(build: Callable[[], argparse.ArgumentParser], passthrough: dict[str, Callable[..., int]],
             argv: list[str] | None) -> int:
    """Run a command line: Airflow's defaults for an in-process run, then the command. Commands in
    ``passthrough`` get every argument after their name (their own parsers own them). The
    development tools' CLI runs through here too."""
    from loyalty_moengage.paths import state_dir
    from loyalty_moengage.sync.ops.runner import airflow_env

    for key, value in airflow_env(state_dir() / "airflow").items():
        os.environ.setdefault(key, value)
    quiet_foreign_warnings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in passthrough:
        return passthrough[argv[0]](argparse.Namespace(rest=argv[1:]))
    args = build().parse_args(argv)
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser, {"api": cmd_api}, argv)


if __name__ == "__main__":
    sys.exit(main())
