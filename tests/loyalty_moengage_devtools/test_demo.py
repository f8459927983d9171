"""``make demo``, as a user runs it (a process of its own, a real night in-process against the real
Postgres and the sandbox), then ``--keep``: the rerun sends nothing and its checks still hold; the
terminal shows a line per task, the report and the checks, and no warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loyalty_moengage_devtools.cli", "demo", "--members", "400",
                           "--days", "5", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _checks(out: str) -> dict[str, str]:
    return {m.group(2): m.group(1) for m in re.finditer(r"^  \[(ok|MISMATCH)\] (.+)$", out, flags=re.M)}


def test_the_demo_then_its_rerun_send_once_and_say_so_quietly(loyalty_db):
    from loyalty_moengage.db import connection_json

    # As a user's shell has it: no pytest marker (it turns Airflow's structlog logger cache off).
    env = {k: v for k, v in os.environ.items() if k not in ("LOYALTY_PROGRAMS_FILE", "LOYALTY_DB_URL", "PYTEST_VERSION")}
    env["AIRFLOW_CONN_LOYALTY_DB"] = connection_json(loyalty_db)
    first = _demo(env)
    again = _demo(env, "--keep")
    for run in (first, again):
        out = run.stdout + run.stderr
        assert run.returncode == 0, out
        checks = _checks(run.stdout)
        assert len(checks) == 6 and set(checks.values()) == {"ok"}, run.stdout
        # the live step: purchases recorded after the night reach MoEngage through one live run, once each
        assert re.search(r"^live mode \(docs/live.md\): 25 purchases recorded after the night reached MoEngage in "
                         r"\d+\.\d s through one live run$", run.stdout, flags=re.M), run.stdout
        assert checks["live run: 25 of 25 new events received exactly once, 0 twice"] == "ok"
        assert not re.search(r"warn", out, flags=re.I), out
        for record in ("Task instance state updated", "Done. Returned value was"):
            assert record not in out
        assert re.search(r"^  load\[0\] \(load slot 0\) +success +\d+\.\d s$", run.stdout, flags=re.M), run.stdout
        assert run.stdout.rstrip().splitlines()[-1].startswith("Airflow's log of this run: ")
    sent = re.search(r"^sandbox: ([\d,]+) events received", first.stdout, flags=re.M)
    assert sent and int(sent.group(1).replace(",", "")) > 0, first.stdout
    assert "sandbox: 0 events received, 0 members updated" in again.stdout
    assert re.search(r"events enqueued 0, sent [\d,]+, skipped as already sent [\d,]+", again.stdout), again.stdout
