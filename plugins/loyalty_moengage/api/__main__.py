"""Standalone server: ``python -m loyalty_moengage.api --host 0.0.0.0 --port 8081``.

For deployments that keep the MoEngage-facing API apart from Airflow (the project CLI's
``api`` command calls ``main()``). uvicorn's access log is off; the app logs its own lines
with api_key/store_key redacted.
"""

from __future__ import annotations

import argparse
import logging
import sys

#: The standalone server's line format (the same as app.LOG_FORMAT, which this module does not
#: import: it stays cheap for ``--help``).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loyalty-moengage api", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8081, help="port (default 8081)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import os

    import uvicorn

    # This process's own lines (uvicorn's supervisor); the app's loggers get the level from
    # LOYALTY_API_LOG_LEVEL in every worker, spawned processes included (app.apply_log_level).
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    os.environ["LOYALTY_API_LOG_LEVEL"] = args.log_level
    os.environ["LOYALTY_API_ACCESS_LOG"] = "0" if args.no_access_log else "1"
    uvicorn.run(
        "loyalty_moengage.api.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,  # our middleware logs, with keys redacted
        log_config=None,
        log_level=args.log_level,
        server_header=False,
        proxy_headers=True,
    )
    return 0


# Airflow's plugin scan imports every .py under plugins/ as a module named after the file, so
# this file can be imported under the name "__main__"; only a real `python -m` (spec name
# "loyalty_moengage.api.__main__") or a direct run (no spec) may start a server.
if __name__ == "__main__" and (__spec__ is None or __spec__.name.endswith(".__main__")):
    sys.exit(main())
