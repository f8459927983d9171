"""Wiring shared by the end-to-end sync tests: a program file, the loyalty DB and the sandbox."""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import date
from pathlib import Path

WORKSPACE = "WS_TEST"
API_KEY = "test-data-api-key-7f3a9c"


@contextmanager
def sync_env(tmp_path: Path, dsn: str, *, program_id: str = "tiny", time_zone: str = "Asia/Kolkata",
             customers=("REL-0001", "REL-0002"), extra_program: str = "", sandbox_kwargs=None,
             workspace_kwargs=None):
    """Programs file + connections + a running sandbox; yields the sandbox."""
    from loyalty_moengage.db import connection_json
    from loyalty_moengage_devtools.environ import restored_environ
    from loyalty_moengage_devtools.sandbox import SandboxServer

    programs = tmp_path / "programs.yaml"
    programs.write_text(
        "programs:\n"
        f"  - id: {program_id}\n"
        f"    time_zone: {time_zone}\n"
        "    retries: 0\n"
        "    reject_threshold: 0.5\n"
        "    load_parallelism: 1\n"
        "    receipt_wait_seconds: 2\n"
        + extra_program
    )
    sandbox = SandboxServer(port=0, **(sandbox_kwargs or {})).start()
    try:
        with restored_environ("LOYALTY_PROGRAMS_FILE", "AIRFLOW_CONN_LOYALTY_DB", "AIRFLOW_CONN_MOENGAGE_DEFAULT"):
            sandbox.add_workspace(WORKSPACE, API_KEY, dc="03", **{"export_users_per_minute": 100_000,
                                                                 **(workspace_kwargs or {})})
            if customers == "all":
                from loyalty_moengage_devtools.seed import seed_from_loyalty_db

                seed_from_loyalty_db(sandbox, WORKSPACE, dsn, program_id, missing_share=0.0)
            else:
                sandbox.seed_users(WORKSPACE, list(customers))
            os.environ["LOYALTY_PROGRAMS_FILE"] = str(programs)
            os.environ["AIRFLOW_CONN_LOYALTY_DB"] = connection_json(dsn)
            # A short read timeout: a lost answer's receipt wait is at least visibility + timeout.
            os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"] = sandbox.connection_json(
                WORKSPACE, API_KEY, dc="03", lookups_per_minute=100_000, timeout=3)
            yield sandbox
    finally:
        sandbox.stop()


RECEIPT_ATTRIBUTE = "loyalty_sync_receipt"


def member_updates(sandbox) -> int:
    """Users the sandbox updated, less the receipts (one single-attribute write per events POST)."""
    counters = sandbox.state.workspace_counters(WORKSPACE)
    return counters.get("users_updated", 0) - counters.get(f"single_attribute_updates:{RECEIPT_ATTRIBUTE}", 0)


def run(program_id: str, night: date, time_zone: str = "Asia/Kolkata", conf=None):
    from loyalty_moengage.sync.ops.runner import run_night

    return run_night(program_id, night, time_zone, conf=conf)


def reports(dsn: str, program_id: str) -> list[dict]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM moengage_sync.run_reports WHERE program_id = %s ORDER BY reported_at",
                            (program_id,)).fetchall()


def transform_chunk(*, program_id: str, window, lo: int, hi: int, label: str, run_id: str, send_users: bool,
                    loyalty_dsn: str, state_dsn: str, lookup=None) -> dict:
    """One chunk through the pipeline into the outbox, as the DAG's transform task runs it."""
    from loyalty_moengage.sync.chunk.pipeline import run_chunk
    from loyalty_moengage.sync.chunk.job import ChunkJob
    from loyalty_moengage.sync.sinks.outbox_sink import OutboxSink

    job = ChunkJob(program_id=program_id, window=window, lo=lo, hi=hi, label=label, run_id=run_id,
                   send_users=send_users, loyalty_dsn=loyalty_dsn, state_dsn=state_dsn)
    return run_chunk(job, OutboxSink(state_dsn), lookup=lookup)
