"""A real, hermetic Airflow 3 stack in subprocesses, for tests and drills that need the scheduler.

``dag.test()`` runs one night at a time in one process; users run the scheduler, where backfills
run several nights at once, runs overlap and tasks are retried in new processes. This starts
what Airflow 3 needs for that on one machine: ``scheduler`` (LocalExecutor), ``dag-processor``
and ``api-server`` (task processes report to its Execution API with JWTs signed by a secret
shared by all three), with its own AIRFLOW_HOME in a temp folder and its own metadata database
on a Postgres the caller gives. ``airflow db migrate`` runs once per Postgres server and Airflow
version into a template database; each stack clones it (well under a second instead of ~30 s).

Development tool only: never imported by the product.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from loyalty_moengage.paths import PACKAGE_DIR

PROJECT_ROOT = PACKAGE_DIR.parents[1]
# Passed through to every Airflow process (the DAG file and the tasks read them).
PASS_THROUGH = ("LOYALTY_PROGRAMS_FILE", "AIRFLOW_CONN_LOYALTY_DB", "AIRFLOW_CONN_MOENGAGE_DEFAULT",
                "LOYALTY_PROJECT_ROOT", "LOYALTY_DB_URL")
FINISHED = ("success", "failed")
PROCESSES = ("api-server", "dag-processor", "scheduler")


class StackError(RuntimeError):
    """The stack did not start, or a wait ran out; the message carries each process's log tail."""


def _airflow_version() -> str:
    from importlib.metadata import version

    return version("apache-airflow-core")


def _conninfo(dsn: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    return {k: str(v) for k, v in conninfo_to_dict(dsn).items()}


def with_database(dsn: str, database: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(**{**_conninfo(dsn), "dbname": database})


def sqlalchemy_url(dsn: str) -> str:
    """The libpq DSN as a SQLAlchemy URL (psycopg2, Airflow's tested driver); sockets work too."""
    from urllib.parse import quote

    p = _conninfo(dsn)
    user = quote(p.get("user", "postgres"), safe="")
    password = f":{quote(p['password'], safe='')}" if p.get("password") else ""
    host = p.get("host", "")
    query: dict[str, str] = {}
    if host.startswith("/"):
        query["host"] = host
        netloc = f"{user}{password}@"
    else:
        netloc = f"{user}{password}@{host or 'localhost'}:{p.get('port', '5432')}"
    for key in ("sslmode", "sslrootcert"):
        if p.get(key):
            query[key] = p[key]
    tail = "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items())
    return f"postgresql+psycopg2://{netloc}/{quote(p.get('dbname', 'postgres'), safe='')}" + (f"?{tail}" if tail else "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text[-lines:])


@dataclass
class AirflowStack:
    """Handles on a running stack: CLI, metadata queries, bounded waits. Built by :func:`airflow_stack`."""

    root: Path
    server_dsn: str
    meta_db: str
    env: dict[str, str]
    api_port: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def meta_dsn(self) -> str:
        return with_database(self.server_dsn, self.meta_db)

    # ---- processes ---------------------------------------------------------------------

    def _airflow(self) -> list[str]:
        return [sys.executable, "-m", "airflow"]

    def start_process(self, name: str, *args: str) -> subprocess.Popen:
        """One long-running Airflow component in its own process group (so stop() gets its children)."""
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen([*self._airflow(), *args], env=self.env, cwd=self.root, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for name, proc in self.procs.items():
            status = "running" if proc.poll() is None else f"exited {proc.returncode}"
            parts.append(f"----- {name} ({status}), {self.logs / (name + '.log')} -----\n"
                         f"{_tail(self.logs / (name + '.log'), lines)}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise StackError(f"Airflow process(es) exited: {dead}\n{self.log_tails()}")

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run one ``airflow`` CLI command against this stack; its output is logged under logs/cli.log."""
        started = time.monotonic()
        try:
            result = subprocess.run([*self._airflow(), *args], env=self.env, cwd=self.root, capture_output=True,
                                    text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"`airflow {' '.join(args)}` did not finish in {timeout:.0f} s\n{self.log_tails()}") from exc
        with open(self.logs / "cli.log", "a") as log:
            log.write(f"$ airflow {' '.join(args)}  (rc {result.returncode}, {time.monotonic() - started:.1f} s)\n"
                      f"{result.stdout}\n{result.stderr}\n")
        if check and result.returncode != 0:
            raise StackError(f"`airflow {' '.join(args)}` failed (rc {result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def stop(self, grace: float = 15) -> None:
        """SIGTERM every process group, then SIGKILL what is left (task processes included)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            try:  # the group may outlive its leader (task processes)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    # ---- metadata database -------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.meta_dsn, row_factory=dict_row, connect_timeout=10) as conn:
            return conn.execute(sql, params).fetchall()

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT run_id, run_type, state, logical_date, data_interval_start, data_interval_end, run_after, "
            "start_date, end_date, queued_at, backfill_id FROM dag_run WHERE dag_id = %s ORDER BY id", (dag_id,))

    def task_instances(self, dag_id: str, run_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every try of every task: the current one (task_instance) and earlier ones (task_instance_history)."""
        where = "dag_id = %(dag)s" + (" AND run_id = ANY(%(runs)s)" if run_ids is not None else "")
        cols = "run_id, task_id, map_index, state, try_number, hostname, pid, start_date, end_date"
        params = {"dag": dag_id, "runs": list(run_ids or [])}
        rows = self.query(f"SELECT {cols}, true AS current FROM task_instance WHERE {where} "
                          f"UNION ALL SELECT {cols}, false FROM task_instance_history WHERE {where} "
                          "ORDER BY start_date NULLS LAST, run_id, task_id, map_index, try_number", params)
        return rows

    def dag_loaded(self, dag_id: str) -> bool:
        rows = self.query("SELECT 1 FROM serialized_dag WHERE dag_id = %s LIMIT 1", (dag_id,))
        return bool(rows)

    # ---- waits -------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 1.0) -> Any:
        """Poll until predicate() is truthy; on timeout raise with every process's log tail."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise StackError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.log_tails()}")
            time.sleep(interval)

    def wait_ready(self, timeout: float = 120) -> None:
        """The API server answers and reports a healthy scheduler and dag processor."""
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=5) as r:
                    body = json.loads(r.read())
            except Exception:
                return False
            return all(body.get(k, {}).get("status") == "healthy" for k in ("metadatabase", "scheduler", "dag_processor"))
        self.wait_for(healthy, timeout=timeout, what="the API server, scheduler and dag processor to be healthy")

    def wait_dag(self, dag_id: str, timeout: float = 120) -> None:
        self.wait_for(lambda: self.dag_loaded(dag_id), timeout=timeout,
                      what=f"the dag processor to serialize {dag_id} (check the DAG file and its env)")

    def wait_runs(self, dag_id: str, run_ids: Sequence[str] | None = None, *, count: int | None = None,
                  timeout: float = 600) -> list[dict[str, Any]]:
        """Wait until the given runs (or at least ``count`` runs) exist and all are success/failed."""
        def done() -> list[dict[str, Any]] | None:
            runs = self.dag_runs(dag_id)
            if run_ids is not None:
                runs = [r for r in runs if r["run_id"] in set(run_ids)]
                if len(runs) < len(run_ids):
                    return None
            if count is not None and len(runs) < count:
                return None
            if runs and all(r["state"] in FINISHED for r in runs):
                return runs
            return None
        try:
            return self.wait_for(done, timeout=timeout, what=f"dag runs of {dag_id} to finish", interval=2)
        except StackError as exc:
            raise StackError(f"{exc}\nruns now:\n" + self.describe_runs(dag_id)) from None

    def describe_runs(self, dag_id: str) -> str:
        lines = []
        for r in self.dag_runs(dag_id):
            lines.append(f"  {r['run_id']} {r['run_type']} {r['state']} logical={r['logical_date']} "
                         f"start={r['start_date']} end={r['end_date']} backfill={r['backfill_id']}")
            for t in self.task_instances(dag_id, [r["run_id"]]):
                lines.append(f"      {t['task_id']}[{t['map_index']}] try {t['try_number']} {t['state']} "
                             f"host={t['hostname']} pid={t['pid']}")
        return "\n".join(lines)

    # ---- DAG operations ----------------------------------------------------------------

    def unpause(self, dag_id: str) -> None:
        self.cli("dags", "unpause", dag_id)

    def pause(self, dag_id: str) -> None:
        self.cli("dags", "pause", dag_id)

    def trigger(self, dag_id: str, *, run_id: str | None = None, logical_date: datetime | str | None = None,
                conf: dict[str, Any] | None = None) -> str:
        """``airflow dags trigger``; returns the run id (generated here when not given)."""
        run_id = run_id or f"manual__{uuid.uuid4().hex[:12]}"
        args = ["dags", "trigger", dag_id, "--run-id", run_id]
        if logical_date is not None:
            args += ["--logical-date", logical_date.isoformat() if isinstance(logical_date, datetime) else logical_date]
        if conf is not None:
            args += ["--conf", json.dumps(conf)]
        self.cli(*args)
        return run_id

    def backfill(self, dag_id: str, from_date: date | datetime | str, to_date: date | datetime | str, *,
                 reprocess_behavior: str = "completed", max_active_runs: int | None = None) -> subprocess.CompletedProcess:
        """``airflow backfill create`` (Airflow's own max_active_runs unless one is given)."""
        def fmt(d: date | datetime | str) -> str:
            return d if isinstance(d, str) else d.isoformat()
        args = ["backfill", "create", "--dag-id", dag_id, "--from-date", fmt(from_date), "--to-date", fmt(to_date),
                "--reprocess-behavior", reprocess_behavior]
        if max_active_runs is not None:
            args += ["--max-active-runs", str(max_active_runs)]
        return self.cli(*args)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


def _ensure_template(server_dsn: str) -> str:
    """A migrated, empty metadata database per server and Airflow version; created once, under a lock."""
    import psycopg

    name = f"lm_airflow_tpl_{_airflow_version().replace('.', '_')}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('loyalty_moengage.airflow_stack.template'))")
        try:
            row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                               (name,)).fetchone()
            if row is not None and row[0] == "migrated":
                return name
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
            with tempfile.TemporaryDirectory(prefix="lm-airflow-migrate-") as home:
                env = _base_env(Path(home), with_database(server_dsn, name))
                result = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, cwd=home,
                                        capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise StackError(f"`airflow db migrate` failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            conn.execute(f"COMMENT ON DATABASE \"{name}\" IS 'migrated'")
            return name
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('loyalty_moengage.airflow_stack.template'))")


def _base_env(home: Path, meta_dsn: str) -> dict[str, str]:
    """The caller's environment minus any Airflow settings, plus what a hermetic stack needs."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AIRFLOW") or k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(meta_dsn),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "5",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "LOYALTY_PROJECT_ROOT": str(PROJECT_ROOT),
        "PYTHONUNBUFFERED": "1",
    })
    return env


@contextmanager
def airflow_stack(server_dsn: str, *, env: dict[str, str] | None = None, parallelism: int = 8,
                  root: Path | None = None, keep_root: bool = False, start_timeout: float = 150,
                  dag_ids: Sequence[str] = ()) -> Iterator[AirflowStack]:
    """Start scheduler + dag-processor + api-server against a fresh metadata DB on ``server_dsn``.

    ``env`` adds to (and overrides) the variables passed through from this process (the programs
    file and the two connections). The stack is ready when the yield happens: healthy, and every
    DAG of ``dag_ids`` serialized. On exit every process group is killed and the metadata DB
    dropped; the temp folder (logs included) is removed unless ``keep_root`` or an error occurred.
    """
    import psycopg

    root = Path(root or tempfile.mkdtemp(prefix="lm-airflow-"))
    (root / "home").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    template = _ensure_template(server_dsn)
    meta_db = f"lm_airflow_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{meta_db}" TEMPLATE "{template}"')
    port = _free_port()
    stack_env = _base_env(root / "home", with_database(server_dsn, meta_db))
    stack_env.update({k: os.environ[k] for k in PASS_THROUGH if k in os.environ})
    stack_env.update({
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        # One secret signs (scheduler) and checks (API server) the tasks' Execution API tokens.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API_AUTH__JWT_ISSUER": f"lm-airflow-stack-{meta_db}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(root / "logs" / "tasks"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    })
    stack_env.update(env or {})
    stack = AirflowStack(root=root, server_dsn=server_dsn, meta_db=meta_db, env=stack_env, api_port=port)
    failed = False
    try:
        stack.start_process("api-server", "api-server", "--port", str(port), "--host", "127.0.0.1")
        stack.start_process("dag-processor", "dag-processor")
        stack.start_process("scheduler", "scheduler")
        stack.wait_ready(start_timeout)
        for dag_id in dag_ids:
            stack.wait_dag(dag_id, start_timeout)
        yield stack
    except BaseException:
        failed = True
        raise
    finally:
        stack.stop()
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{meta_db}" WITH (FORCE)')
        if not (keep_root or failed):
            shutil.rmtree(root, ignore_errors=True)
        elif failed:
            print(f"airflow stack logs kept in {root / 'logs'}", file=sys.stderr)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
