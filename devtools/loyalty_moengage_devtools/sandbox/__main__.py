"""``python -m loyalty_moengage_devtools.sandbox``: run the MoEngage sandbox until Ctrl-C (``make sandbox``)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

DEFAULT_WORKSPACE = "DEMO_WORKSPACE"
DEFAULT_KEY = "demo-data-api-key"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loyalty-moengage-dev sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (the /sandbox API has no auth: keep loopback)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="Workspace ID of the default workspace")
    parser.add_argument("--key", default=DEFAULT_KEY, help="Data API key of the default workspace")
    parser.add_argument("--dc", default="03", help="data centre of the default workspace (also serves plain /v1)")
    parser.add_argument("--users-per-minute", type=float, default=60_000)
    parser.add_argument("--events-per-minute", type=float, default=60_000)
    parser.add_argument("--window-seconds", type=float, default=60.0, help="budget window (60 on MoEngage)")
    parser.add_argument("--no-create-users-on-event", action="store_true",
                        help="drop events for unknown users instead of creating profiles")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--validate", dest="count_only", action="store_false", default=False,
                      help="validate and store every element (default)")
    mode.add_argument("--count-only", dest="count_only", action="store_true",
                      help="check auth, size and budgets, count bytes/elements, store nothing (benchmarks)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from loyalty_moengage.moengage.datacenters import parse_data_center
    from loyalty_moengage_devtools.sandbox.server import SandboxServer

    dc = parse_data_center(args.dc)
    server = SandboxServer(host=args.host, port=args.port, count_only=args.count_only, default_dc=dc)
    server.add_workspace(args.workspace, args.key, dc, users_per_minute=args.users_per_minute,
                         events_per_minute=args.events_per_minute, window_seconds=args.window_seconds,
                         create_unknown_users_on_event=not args.no_create_users_on_event)
    signal.signal(signal.SIGTERM, _interrupt)
    server.start()
    conn = server.connection_json(args.workspace, args.key, dc)
    mode = "count-only" if args.count_only else "validating"
    print(f"MoEngage sandbox ({mode}) on {server.url}: workspace {args.workspace} on DC-{dc}", flush=True)
    print(f"  export AIRFLOW_CONN_MOENGAGE_DEFAULT='{conn}'", flush=True)
    print(f"  inspect: {server.url}/sandbox/workspaces/{args.workspace}/counters", flush=True)
    server.serve_forever()
    json.dump(server.state.global_counters(), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
