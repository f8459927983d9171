"""``make compose-test``: the project on Airflow's CeleryExecutor in Docker Compose, for real.

Runs on the host with the system ``python3`` (standard library only), in at most 20 minutes:

1. **prepare** what is missing, and say so: as root, Debian's ``docker.io``/``docker-compose``
   (apt-get), a running ``dockerd``; images: the official ``apache/airflow:3.3.2-python3.11``,
   ``postgres:16`` and ``redis:7.2-bookworm`` when a registry answers, otherwise a Python 3.11 base
   made from Debian packages (``docker/base-image.sh``) and on it stand-ins for the Airflow image,
   Postgres and Redis (``docker/stand-ins/``); then builds the project's two images FROM the Airflow
   image (the Dockerfile's ``production``
   target for the Airflow services, its ``dev`` target, with the devtools, for the sandbox and the
   demo generator) with ``--network host`` and the machine's CA bundle
   (``/etc/ssl/certs/ca-certificates.crt``) as the ``CA_BUNDLE`` build argument;
2. **starts** ``docker-compose.yaml`` with the ``demo`` profile and two Celery workers, under a
   project name of its own and an env file of its own (random secrets, free host ports; the
   user's ``.env`` is not read), a 2,000-member demo program with seven nights of history;
3. through the **REST API** (``/api/v2``, a token from ``POST /auth/token``) unpauses the demo DAG
   (the scheduler then runs the newest night), triggers an older night and backfills the three
   nights between (Airflow's default backfill concurrency), and waits for all five runs;
4. **checks** every run succeeded (the report task fails a run whose night is not fully sent),
   that the sandbox received every enqueued event exactly once (``delivery_audit``, run inside
   the sandbox's container, which has the dev image: event by event against the outbox bodies),
   and, from the task instances' hostnames, that both workers ran tasks;
5. prints a **report** and **tears down** the stack (volumes included), and stops ``dockerd`` if
   it started it. Images are kept as a build cache.

``python3 compose_test.py audit --program demo`` is the in-container part (step 4's audit).
Options: ``--keep`` (leave the stack up), ``--members``, ``--timeout``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

PROJECT = "loyaltycomposetest"
PROGRAM = "demo"
TIME_ZONE = "Asia/Kolkata"          # the demo program's zone (docker/programs.compose-test.yaml)
DAG_ID = f"moengage_sync_{PROGRAM}"
APP_IMAGE = "loyalty-moengage:local"
DEV_IMAGE = "loyalty-moengage-dev:local"
LOCAL_BASE = "loyalty-moengage/bookworm-python:3.11"
LOCAL_AIRFLOW = "loyalty-moengage/airflow:3.3.2-python3.11-standin"
LOCAL_POSTGRES = "loyalty-moengage/postgres:16-standin"
LOCAL_REDIS = "loyalty-moengage/redis:7-standin"
OFFICIAL = {"airflow": "apache/airflow:3.3.2-python3.11", "postgres": "postgres:16", "redis": "redis:7.2-bookworm"}
MACHINE_CA = Path("/etc/ssl/certs/ca-certificates.crt")
TERMINAL = {"success", "failed"}


class Failed(Exception):
    pass


def root_dir() -> Path:
    return Path(__file__).resolve().parents[2]


def say(msg: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Clock:
    def __init__(self, budget: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + budget
        self.phases: list[tuple[str, float]] = []
        self._mark = self.start

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def phase(self, name: str) -> None:
        now = time.monotonic()
        self.phases.append((name, now - self._mark))
        self._mark = now

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise Failed(f"out of time ({(time.monotonic() - self.start) / 60:.1f} min) while {what}")


def run(cmd: list[str], *, timeout: float, check: bool = True, env: dict[str, str] | None = None,
        cwd: Path | None = None, capture: bool = True) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(cmd, capture_output=capture, text=True, timeout=max(5.0, timeout), env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise Failed(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    if check and p.returncode != 0:
        tail = ((p.stdout or "") + (p.stderr or ""))[-3000:]
        raise Failed(f"`{' '.join(cmd)}` exited {p.returncode}:\n{tail}")
    return p


# ---- step 1: prepare --------------------------------------------------------------------

class Machine:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.dockerd: subprocess.Popen | None = None
        self.did: list[str] = []
        self.compose: list[str] = []

    def ensure_tools(self) -> None:
        is_root = os.geteuid() == 0
        missing = [pkg for tool, pkg in (("dockerd", "docker.io"), ("docker", "docker.io"),
                                         ("docker-compose", "docker-compose"))
                   if shutil.which(tool) is None]
        if missing and is_root:
            pkgs = sorted(set(missing) | ({"debootstrap"} if shutil.which("debootstrap") is None else set()))
            say(f"installing {', '.join(pkgs)} with apt-get ...")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            run(["apt-get", "update", "-q"], timeout=self.clock.left(), env=env)
            run(["apt-get", "install", "-y", "-q", *pkgs], timeout=self.clock.left(), env=env)
            self.did.append(f"apt-get install {' '.join(pkgs)}")
        if shutil.which("docker") is None:
            raise Failed("no docker CLI (as root this test installs docker.io; otherwise install Docker)")
        if run(["docker", "compose", "version"], timeout=30, check=False).returncode == 0:
            self.compose = ["docker", "compose"]
        elif shutil.which("docker-compose"):
            self.compose = ["docker-compose"]
        else:
            raise Failed("neither `docker compose` nor `docker-compose` is installed")
        if run(["docker", "info"], timeout=30, check=False).returncode != 0:
            if not (is_root and shutil.which("dockerd")):
                raise Failed("the Docker daemon is not running (start it, or run as root to let this test start dockerd)")
            log = open("/var/log/loyalty-compose-test-dockerd.log", "ab")
            say("starting dockerd (log /var/log/loyalty-compose-test-dockerd.log) ...")
            self.dockerd = subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
            deadline = time.monotonic() + 60
            while run(["docker", "info"], timeout=30, check=False).returncode != 0:
                if time.monotonic() > deadline or self.dockerd.poll() is not None:
                    raise Failed("dockerd did not start (see /var/log/loyalty-compose-test-dockerd.log)")
                time.sleep(1)
            self.did.append(f"started dockerd (pid {self.dockerd.pid})")
        say(f"docker: {run(['docker', 'version', '-f', '{{.Server.Version}}'], timeout=30).stdout.strip()}, "
            f"compose: {' '.join(self.compose)}")

    @staticmethod
    def have(image: str) -> bool:
        return run(["docker", "image", "inspect", image], timeout=30, check=False).returncode == 0

    def images(self) -> dict[str, str]:
        """The Airflow, postgres and redis images: official ones when a registry answers."""
        forced = os.environ.get("COMPOSE_TEST_IMAGES")  # official | local
        if forced != "local" and (all(self.have(i) for i in OFFICIAL.values()) or (
                forced == "official" or self._registry_answers())):
            for image in OFFICIAL.values():
                if not self.have(image):
                    say(f"pulling {image} ...")
                    run(["docker", "pull", "-q", image], timeout=self.clock.left())
                    self.did.append(f"pulled {image}")
            return dict(OFFICIAL)
        say("no image registry answers: images from Debian's packages instead")
        if not self.have(LOCAL_BASE):
            say(f"making {LOCAL_BASE} with debootstrap (about 2 min) ...")
            run(["bash", str(root_dir() / "docker/base-image.sh"), LOCAL_BASE], timeout=self.clock.left(), capture=False)
            self.did.append(f"made {LOCAL_BASE} (debootstrap bookworm + python3, docker import)")
        for image, dockerfile in ((LOCAL_POSTGRES, "postgres.Dockerfile"), (LOCAL_REDIS, "redis.Dockerfile")):
            if not self.have(image):
                say(f"building {image} from Debian's packages ...")
                run(["docker", "build", "-q", "--network", "host", "--build-arg", f"BASE_IMAGE={LOCAL_BASE}",
                     "-f", f"stand-ins/{dockerfile}", "-t", image, "."], timeout=self.clock.left(),
                    cwd=root_dir() / "docker")
                self.did.append(f"built {image} (docker/stand-ins/{dockerfile})")
        if not self.have(LOCAL_AIRFLOW):
            say(f"building {LOCAL_AIRFLOW} (Airflow's image, same shape; pip install of Airflow) ...")
            run(["docker", "build", "-q", "--network", "host", "--build-arg", f"BASE_IMAGE={LOCAL_BASE}",
                 *self._ca_args(), "-f", "docker/stand-ins/airflow.Dockerfile", "-t", LOCAL_AIRFLOW, "."],
                timeout=self.clock.left(), cwd=root_dir())
            self.did.append(f"built {LOCAL_AIRFLOW} (docker/stand-ins/airflow.Dockerfile)")
        return {"airflow": LOCAL_AIRFLOW, "postgres": LOCAL_POSTGRES, "redis": LOCAL_REDIS}

    def _registry_answers(self) -> bool:
        p = run(["docker", "pull", "-q", "hello-world"], timeout=45, check=False)
        if p.returncode == 0:
            run(["docker", "rmi", "-f", "hello-world"], timeout=30, check=False)
        return p.returncode == 0

    @staticmethod
    def _ca_args() -> list[str]:
        """The machine's CA bundle for pip inside builds (TLS-inspecting proxies), when it has one."""
        if not MACHINE_CA.is_file():
            return []
        shutil.copyfile(MACHINE_CA, root_dir() / "docker/certs/build-ca.crt")
        return ["--build-arg", "CA_BUNDLE=build-ca.crt"]

    def build(self, base: str) -> float:
        args = ["docker", "build", "--network", "host", "--build-arg", f"AIRFLOW_IMAGE={base}", *self._ca_args()]
        t = time.monotonic()
        for target, image in (("production", APP_IMAGE), ("dev", DEV_IMAGE)):
            say(f"building {image} (target {target}) on {base} (cached layers are reused) ...")
            run([*args, "--target", target, "-t", image, "."], timeout=self.clock.left(), cwd=root_dir())
        return time.monotonic() - t

    def stop_dockerd(self) -> None:
        if self.dockerd and self.dockerd.poll() is None:
            self.dockerd.terminate()
            try:
                self.dockerd.wait(30)
            except subprocess.TimeoutExpired:
                self.dockerd.kill()
            say("stopped the dockerd this test started")


# ---- step 2: the stack --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_file(path: Path, images: dict[str, str], members: int) -> dict[str, str]:
    env = {
        "AIRFLOW_IMAGE_NAME": APP_IMAGE,
        "AIRFLOW_DEV_IMAGE_NAME": DEV_IMAGE,
        "POSTGRES_IMAGE": images["postgres"],
        "REDIS_IMAGE": images["redis"],
        "AIRFLOW_IMAGE": images["airflow"],
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW_FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "_AIRFLOW_WWW_USER_USERNAME": "airflow",
        "_AIRFLOW_WWW_USER_PASSWORD": secrets.token_urlsafe(16),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(12),
        "LOYALTY_DB_PASSWORD": "loyalty",
        "AIRFLOW_CONN_LOYALTY_DB": "postgresql://loyalty:loyalty@postgres:5432/loyalty",
        "AIRFLOW_CONN_MOENGAGE_DEFAULT": json.dumps(
            {"conn_type": "moengage", "login": "DEMO_WORKSPACE", "password": "demo-data-api-key", "host": "03",
             "extra": {"base_url": "http://sandbox:8765/dc/{dc}", "lookups_per_minute": 100000}},
            separators=(",", ":")),
        "LOYALTY_PROGRAMS_FILE": "/opt/airflow/docker/programs.compose-test.yaml",
        "AIRFLOW_API_PORT": str(free_port()),
        "SANDBOX_PORT": str(free_port()),
        "AIRFLOW_WORKER_CONCURRENCY": "6",
        "DEMO_PROGRAM": PROGRAM,
        "DEMO_MEMBERS": str(members),
        "DEMO_DAYS": "7",
        "DEMO_MISSING_SHARE": "0.0",
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    path.chmod(0o600)
    return env


class Stack:
    def __init__(self, compose: list[str], env_path: Path, clock: Clock) -> None:
        self.base = [*compose, "-p", PROJECT, "-f", str(root_dir() / "docker-compose.yaml"),
                     "--env-file", str(env_path), "--profile", "demo"]
        self.clock = clock

    def __call__(self, *args: str, timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return run([*self.base, *args], timeout=timeout or self.clock.left(), check=check, cwd=root_dir())

    def containers(self) -> dict[str, dict]:
        """Container id (first 12) -> {name, service, state, exit}, for every container of the project."""
        ids = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                  timeout=30).stdout.split()
        out = {}
        if ids:
            for c in json.loads(run(["docker", "inspect", *ids], timeout=30).stdout):
                out[c["Id"][:12]] = {"name": c["Name"].lstrip("/"), "hostname": c["Config"]["Hostname"],
                                     "service": c["Config"]["Labels"].get("com.docker.compose.service"),
                                     "state": c["State"]["Status"], "exit": c["State"]["ExitCode"],
                                     "health": (c["State"].get("Health") or {}).get("Status")}
        return out

    def wait_exited(self, service: str, timeout: float) -> None:
        deadline = time.monotonic() + min(timeout, self.clock.left())
        while True:
            found = [c for c in self.containers().values() if c["service"] == service]
            if found and found[0]["state"] == "exited":
                if found[0]["exit"] != 0:
                    raise Failed(f"{service} exited {found[0]['exit']}:\n{self.logs(service)}")
                return
            if time.monotonic() > deadline:
                raise Failed(f"{service} did not finish in time:\n{self.logs(service)}")
            time.sleep(2)

    def logs(self, service: str, lines: int = 40) -> str:
        return self("logs", "--no-color", "--tail", str(lines), service, timeout=60, check=False).stdout[-4000:]


# ---- step 3: the REST API -----------------------------------------------------------------

class Api:
    def __init__(self, base: str, username: str, password: str) -> None:
        self.base, self.username, self.password = base, username, password
        self.token: str | None = None

    def call(self, method: str, path: str, doc: object = None, *, auth: bool = True) -> object:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, method=method, headers=headers,
                                     data=None if doc is None else json.dumps(doc).encode())
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
        except urllib.error.HTTPError as exc:
            raise Failed(f"{method} {path}: HTTP {exc.code}: {exc.read()[:800].decode(errors='replace')}") from None
        return json.loads(body) if body else None

    def login(self) -> None:
        self.token = self.call("POST", "/auth/token", {"username": self.username, "password": self.password},
                               auth=False)["access_token"]

    def wait_up(self, clock: Clock, timeout: float) -> None:
        deadline = time.monotonic() + min(timeout, clock.left())
        while True:
            try:
                self.call("GET", "/api/v2/version", auth=False)
                return
            except (Failed, OSError):
                if time.monotonic() > deadline:
                    raise Failed(f"the API server at {self.base} did not answer") from None
                time.sleep(2)

    def runs(self) -> list[dict]:
        return self.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100&order_by=id")["dag_runs"]

    def task_instances(self) -> list[dict]:
        out, offset = [], 0
        while True:
            page = self.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/~/taskInstances?limit=100&offset={offset}")
            out += page["task_instances"]
            offset += len(page["task_instances"])
            if not page["task_instances"] or offset >= page["total_entries"]:
                return out


def local_midnight(night: date) -> datetime:
    return datetime(night.year, night.month, night.day, tzinfo=ZoneInfo(TIME_ZONE)).astimezone(timezone.utc)


def iso(d: datetime) -> str:
    return d.isoformat().replace("+00:00", "Z")


def night_of(run: dict) -> str:
    start = run.get("data_interval_start")
    if not start:
        return "?"
    return datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(ZoneInfo(TIME_ZONE)).date().isoformat()


# ---- step 4: the audit, inside a container --------------------------------------------------

def audit_main(program_id: str, sandbox: str) -> int:
    """Printed as one JSON line: the delivery audit, run reports and sandbox counters."""
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.db import connect, loyalty_dsn
    from loyalty_moengage_devtools.delivery_audit import audit

    program = get_program(program_id)
    dsn = loyalty_dsn(program.state_conn_id or program.loyalty_conn_id)
    conn_doc = json.loads(os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"])
    workspace = conn_doc["login"]
    with urllib.request.urlopen(f"{sandbox}/sandbox/workspaces/{workspace}/events", timeout=120) as r:
        events = json.loads(r.read())
    with urllib.request.urlopen(f"{sandbox}/sandbox/workspaces/{workspace}/counters", timeout=60) as r:
        counters = json.loads(r.read())
    result = audit(dsn, program.id, events).as_dict()
    with connect(dsn) as conn:
        reports = [{"night": str(n), "run_id": r, "outcome": o, "events_sent": s, "members_updated": m}
                   for n, r, o, s, m in conn.execute(
                       "SELECT night, run_id, outcome, events_sent, members_updated FROM moengage_sync.run_reports "
                       "WHERE program_id = %s ORDER BY night, reported_at", (program.id,)).fetchall()]
        keys_by_night = {str(n): c for n, c in conn.execute(
            "SELECT b.night, count(*) FROM moengage_sync.event_keys k JOIN moengage_sync.batches b "
            "ON b.batch_id = k.batch_id WHERE k.program_id = %s GROUP BY 1 ORDER BY 1", (program.id,)).fetchall()}
    print(json.dumps({"audit": result, "reports": reports, "sandbox_counters": counters,
                      "events_by_night": keys_by_night}, default=str))
    return 0


# ---- the whole test -----------------------------------------------------------------------

def main_test(args: argparse.Namespace) -> int:
    clock = Clock(args.timeout)
    machine = Machine(clock)
    stack: Stack | None = None
    report: list[str] = []
    ok = False
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"{PROJECT}-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        machine.ensure_tools()
        images = machine.images()
        build_s = machine.build(images["airflow"])
        clock.phase("prepare + build")
        say(f"images built in {build_s:.0f} s")

        env = env_file(workdir / "compose.env", images, args.members)
        stack = Stack(machine.compose, workdir / "compose.env", clock)
        stack("config", "-q", timeout=60)
        say("docker-compose.yaml: config accepted; starting the stack with 2 workers ...")
        stack("down", "-v", "--remove-orphans", timeout=120, check=False)   # a previous interrupted run
        stack("up", "-d", "--no-build", "--scale", "airflow-worker=2")
        stack.wait_exited("demo-generator", timeout=300)
        api = Api(f"http://127.0.0.1:{env['AIRFLOW_API_PORT']}", env["_AIRFLOW_WWW_USER_USERNAME"],
                  env["_AIRFLOW_WWW_USER_PASSWORD"])
        api.wait_up(clock, timeout=300)
        api.login()
        deadline = time.monotonic() + min(300, clock.left())
        while True:
            try:
                api.call("GET", f"/api/v2/dags/{DAG_ID}")
                break
            except Failed:
                if time.monotonic() > deadline:
                    raise Failed(f"DAG {DAG_ID} was not parsed:\n{stack.logs('airflow-dag-processor')}") from None
                time.sleep(3)
        workers = [c for c in stack.containers().values() if c["service"] == "airflow-worker"]
        if len(workers) != 2:
            raise Failed(f"expected 2 airflow-worker containers, found {len(workers)}")
        clock.phase("stack up (init, demo data, API, DAG parsed)")

        today = datetime.now(timezone.utc).astimezone(ZoneInfo(TIME_ZONE)).date()
        nights = [today - timedelta(days=d) for d in range(5, 0, -1)]      # N1 .. N5 (N5 = last night)
        api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        say(f"unpaused {DAG_ID}: the scheduler runs the newest night, {nights[-1]}")
        trigger_id = f"compose_test__{nights[0].isoformat()}"
        api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {
            # The timetable's logical date is the interval's start (a run named after its end
            # would take the next night's logical date, which the backfill then skips as in flight).
            "dag_run_id": trigger_id, "logical_date": iso(local_midnight(nights[0])),
            "data_interval_start": iso(local_midnight(nights[0])),
            "data_interval_end": iso(local_midnight(nights[1])), "conf": {}})
        say(f"triggered night {nights[0]} (run {trigger_id})")
        backfill = api.call("POST", "/api/v2/backfills", {
            "dag_id": DAG_ID, "from_date": iso(local_midnight(nights[1])), "to_date": iso(local_midnight(nights[3])),
            "reprocess_behavior": "none", "max_active_runs": 10, "dag_run_conf": {}})
        say(f"backfill {backfill.get('id')}: nights {nights[1]} .. {nights[3]} (max_active_runs 10)")
        t_runs = time.monotonic()
        while True:
            clock.check("waiting for the runs")
            runs = api.runs()
            done = [r for r in runs if r["state"] in TERMINAL]
            if len(runs) >= 5 and len(done) == len(runs):
                break
            if len(done) == len(runs) and api.call("GET", f"/api/v2/backfills/{backfill['id']}").get("completed_at"):
                raise Failed(f"the backfill completed but only {len(runs)} runs exist: "
                             + ", ".join(f"{r['dag_run_id']} ({r['state']})" for r in runs))
            time.sleep(5)
        runs_s = time.monotonic() - t_runs
        clock.phase("five runs (trigger + backfill of 3 + scheduled)")
        say(f"all {len(runs)} runs finished in {runs_s:.0f} s")

        tis = api.task_instances()
        containers = stack.containers()
        by_host = {c["hostname"]: c["name"] for c in containers.values()}
        per_worker: dict[str, int] = {}
        per_worker_task: dict[str, dict[str, int]] = {}
        for ti in tis:
            if ti.get("hostname"):
                name = by_host.get(ti["hostname"], ti["hostname"])
                per_worker[name] = per_worker.get(name, 0) + 1
                tasks = per_worker_task.setdefault(name, {})
                tasks[ti["task_id"]] = tasks.get(ti["task_id"], 0) + 1
        # The workspace Pool under Celery: load tasks of all runs never more than its slots at once.
        pools = {p["name"]: p["slots"] for p in api.call("GET", "/api/v2/pools?limit=100")["pools"]}
        loads = [ti for ti in tis if ti["task_id"] == "load" and ti.get("start_date") and ti.get("end_date")]
        load_pools = sorted({ti.get("pool") for ti in loads})
        edges = sorted([(ti["start_date"], 1) for ti in loads] + [(ti["end_date"], -1) for ti in loads],
                       key=lambda e: (datetime.fromisoformat(e[0].replace("Z", "+00:00")), e[1]))
        overlap = peak = 0
        for _, step in edges:
            overlap += step
            peak = max(peak, overlap)
        logs_ok: dict[str, bool] = {}
        for ti in tis:
            name = by_host.get(ti.get("hostname") or "", "")
            if ti.get("map_index", -1) != -1 or name in logs_ok or not name:
                continue
            from urllib.parse import quote
            doc = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(ti['dag_run_id'], safe='')}/taskInstances/"
                                  f"{ti['task_id']}/logs/{ti['try_number']}")
            text = json.dumps(doc.get("content", ""))
            logs_ok[name] = len(doc.get("content") or []) > 5 and "secret_key" not in text
        # In the sandbox's container: the dev image holds the devtools, the Airflow images do not.
        probe = stack("exec", "-T", "sandbox", "python", "-m", "loyalty_moengage_devtools.compose_test",
                      "audit", "--program", PROGRAM, "--sandbox", "http://127.0.0.1:8765", timeout=300)
        result = json.loads(probe.stdout.strip().splitlines()[-1])
        clock.phase("audit")
        a = result["audit"]
        worker_names = sorted(c["name"] for c in containers.values() if c["service"] == "airflow-worker")

        failed_runs = [r for r in runs if r["state"] != "success"]
        checks = [
            (f"all {len(runs)} runs succeeded", not failed_runs and len(runs) >= 5),
            (f"every enqueued event received exactly once: expected {a['expected']}, received {a['received']}, "
             f"lost {a['lost']}, duplicated {a['duplicated']}, unexpected {a['unexpected']}",
             a["expected"] > 0 and a["expected"] == a["received"] and not (a["lost"] or a["duplicated"] or a["unexpected"])),
            (f"run reports' events_sent add up to what the sandbox received ({a['events_sent_in_run_reports']})",
             a["events_sent_in_run_reports"] == a["received"]),
            (f"load tasks ran in the workspace Pool {', '.join(map(str, load_pools))} "
             f"({pools.get(load_pools[0]) if len(load_pools) == 1 else '?'} slots): at most {peak} at once "
             f"across the {len(runs)} runs", len(load_pools) == 1 and load_pools[0] in pools
             and load_pools[0] != "default_pool" and 0 < peak <= pools[load_pools[0]]),
            (f"task logs read through the API server from each worker's log server "
             f"({', '.join(f'{w}: ' + ('ok' if logs_ok.get(w) else 'unreadable') for w in worker_names)})",
             len(worker_names) == 2 and all(logs_ok.get(w) for w in worker_names)),
            (f"both workers ran tasks ({', '.join(f'{w}: {per_worker.get(w, 0)}' for w in worker_names)})",
             len(worker_names) == 2 and all(per_worker.get(w, 0) > 0 for w in worker_names)),
        ]
        outcomes = {}
        for rep in result["reports"]:
            outcomes.setdefault(rep["night"], []).append(rep["outcome"])
        report += ["", f"compose-test report ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
                   f"program {PROGRAM}, {args.members:,} members, CeleryExecutor, 2 workers)"]
        report.append("  timings: " + ", ".join(f"{n} {s:.0f} s" for n, s in clock.phases)
                      + f"; total {time.monotonic() - clock.start:.0f} s")
        if machine.did:
            report.append("  prepared: " + "; ".join(machine.did))
        report.append("  runs:")
        for r in sorted(runs, key=night_of):
            kind = "backfill" if r.get("run_type") == "backfill" or r.get("backfill_id") else r.get("run_type")
            start, end = r.get("start_date"), r.get("end_date")
            took = ""
            if start and end:
                took = f" in {(datetime.fromisoformat(end.replace('Z', '+00:00')) - datetime.fromisoformat(start.replace('Z', '+00:00'))).total_seconds():.0f} s"
            report.append(f"    night {night_of(r)}  {kind:<9} {r['state']:<8}{took}  events enqueued "
                          f"{result['events_by_night'].get(night_of(r), 0)}, report outcome "
                          f"{'/'.join(outcomes.get(night_of(r), ['none']))}")
        report.append(f"  task instances: {len(tis)}; by worker: "
                      + ", ".join(f"{w} {n}" for w, n in sorted(per_worker.items())))
        for w, tasks in sorted(per_worker_task.items()):
            report.append(f"    {w}: " + ", ".join(f"{t} {n}" for t, n in sorted(tasks.items())))
        report.append(f"  events: expected {a['expected']}, received {a['received']}, lost {a['lost']}, "
                      f"duplicated {a['duplicated']}; by name received {a['received_by_event_name']}")
        report.append(f"  batches by state: {a['batches_by_state']}; sandbox counters: {result['sandbox_counters']}")
        for text, good in checks:
            report.append(f"  [{'ok' if good else 'FAIL'}] {text}")
        ok = all(good for _, good in checks)
        if failed_runs:
            report.append("  failed runs: " + ", ".join(r["dag_run_id"] for r in failed_runs))
    except Failed as exc:
        report += ["", f"compose-test FAILED: {exc}"]
        if stack is not None:
            for service in ("airflow-scheduler", "airflow-worker"):
                report.append(f"--- {service} (last lines) ---\n{stack.logs(service, 25)}")
    finally:
        if stack is not None and not args.keep:
            t = time.monotonic()
            stack("down", "-v", "--remove-orphans", timeout=180, check=False)
            say(f"stack torn down in {time.monotonic() - t:.0f} s (volumes removed; images kept as cache)")
        elif stack is not None:
            say(f"--keep: the stack is still up; `{' '.join(stack.base)} down -v` removes it")
        if not args.keep:
            machine.stop_dockerd()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(report), flush=True)
    print(f"\ncompose-test {'passed' if ok else 'FAILED'} in {(time.monotonic() - clock.start) / 60:.1f} min")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compose_test.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    t = sub.add_parser("test", help="the whole test (default)")
    au = sub.add_parser("audit", help="in a container: the delivery audit as JSON")
    au.add_argument("--program", default=PROGRAM)
    au.add_argument("--sandbox", default="http://sandbox:8765")
    for p in (parser, t):
        p.add_argument("--keep", action="store_true", help="leave the stack (and dockerd) running")
        p.add_argument("--members", type=int, default=2000)
        p.add_argument("--timeout", type=float, default=20 * 60, help="seconds, everything included (default 1200)")
    args = parser.parse_args(argv)
    if args.command == "audit":
        return audit_main(args.program, args.sandbox)
    return main_test(args)


if __name__ == "__main__":
    sys.exit(main())
