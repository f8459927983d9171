"""The Compose demo's one-shot setup (service `demo-generator`, profile `demo`).

1. applies the reference loyalty schema and the sync's state schema to the loyalty database
   (the `loyalty_db` connection, i.e. AIRFLOW_CONN_LOYALTY_DB);
2. generates the synthetic program (DEMO_PROGRAM, DEMO_MEMBERS members, DEMO_DAYS nights of history
   ending today in the program's zone) and forgets the program's previous sync state;
3. (re)creates the sandbox workspace of AIRFLOW_CONN_MOENGAGE_DEFAULT over the sandbox's HTTP
   inspection API, with a Get User API budget of DEMO_LOOKUPS_PER_MINUTE, and seeds it with the
   program's customer ids except a deterministic DEMO_MISSING_SHARE (members that "never reached
   MoEngage", whose events are quarantined instead of creating profiles).

It talks to Postgres and the sandbox over the network only, so it runs in any container of the
image. Development tool: a real deployment has a real loyalty database and MoEngage.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo


def _post(url: str, doc: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"{}")


def _wait(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise SystemExit(f"demo-init: {url} did not answer within {seconds:.0f} s")
            time.sleep(1)


def main() -> int:
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.db import apply_schema, loyalty_dsn, redact_dsn
    from loyalty_moengage_devtools.generator import generate
    from loyalty_moengage_devtools.reset import reset_program_state
    from loyalty_moengage_devtools.seed import customer_ids, is_missing

    program = get_program(os.environ.get("DEMO_PROGRAM", "demo"))
    members = int(os.environ.get("DEMO_MEMBERS", "10000"))
    days = int(os.environ.get("DEMO_DAYS", "7"))
    missing_share = float(os.environ.get("DEMO_MISSING_SHARE", "0.02"))
    lookups = int(os.environ.get("DEMO_LOOKUPS_PER_MINUTE", "100000"))
    moengage = json.loads(os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"])
    workspace, key = moengage["login"], moengage["password"]
    dc = str(moengage.get("host", "03")).upper().removeprefix("DC-")
    sandbox = os.environ.get("SANDBOX_URL", "http://sandbox:8765").rstrip("/")

    dsn = loyalty_dsn(program.loyalty_conn_id)
    started = time.monotonic()
    apply_schema(dsn)
    today = datetime.now(timezone.utc).astimezone(ZoneInfo(program.time_zone)).date()
    generate(dsn, program_id=program.id, members=members, days=days, seed=42, end_date=today,
             time_zone=program.time_zone)
    reset_program_state(dsn, program.id)
    print(f"demo-init: program {program.id!r} on {redact_dsn(dsn)}: {members:,} members, {days} nights "
          f"ending {today - timedelta(days=1)} ({time.monotonic() - started:.1f} s)", flush=True)

    _wait(f"{sandbox}/sandbox/workspaces")
    _post(f"{sandbox}/sandbox/workspaces", {"workspace_id": workspace, "api_key": key, "dc": dc,
                                            "export_users_per_minute": lookups})
    ids = customer_ids(dsn, program.id)
    present = [c for c in ids if not is_missing(c, missing_share)]
    seeded = 0
    for i in range(0, len(present), 20_000):
        seeded += _post(f"{sandbox}/sandbox/workspaces/{workspace}/seed",
                        {"customer_ids": present[i:i + 20_000]})["seeded"]
    print(f"demo-init: sandbox workspace {workspace} (DC-{dc}): {seeded:,} of {len(ids):,} members exist in "
          f"MoEngage ({len(ids) - seeded:,} missing on purpose)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
