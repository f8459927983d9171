"""Abuse drill of the MoEngage-facing API: what one leaked key, a rude network or a failing
database can do to a real server process on a real PostgreSQL, each attack with numbers.

    python -m loyalty_moengage_devtools.api_drills [--dsn DSN] [--out DIR]     # make api-drills

Why a drill and not only tests: the tests call one thing at a time in-process; an attacker holds
a key and a socket and sends many things at once. So this makes a database of its own on the
server of ``--dsn`` (default: the project's rule, as bench_api; ``api_drill_<random>``, dropped
at the end), seeds one program (Asia/Kolkata, IN, earn rate 0.1, store A123, small caps in the
programs file's ``api:`` block), starts ``python -m loyalty_moengage.api`` twice as subprocesses
(the main server; a second one with ``LOYALTY_API_WRITE_RATE=5`` for the rate-limit attack, so
that low rate does not turn the other attacks' writes into 429s) with the keys in env-var
Airflow connections, runs twelve attacks, and writes ``api-drills-latest.json`` and ``.md``
under ``--out`` (default bench/results). Exit status 1 when any attack's expectation failed.
Development tool only: never imported by the product.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PROGRAM = "apidrill"
STORE = "A123"
POINTS = "/api/loyalty/points"
ADD = "/api/customers/add"
CAP_PURCHASE, CAP_DAY = 1000, 2000
RETRY_WINDOW_S, BODY_TIMEOUT_S, MAX_WRITES_IN_FLIGHT, SMALL_WRITE_RATE = 2, 2, 100, 5
FINE_MEDIAN_MS = 100.0      # a valid read during a brute force must stay this fast (MoEngage waits 5 s)
STEP_TIMEOUT_S = 45.0
#: Seeded members by role; their phones must never appear in a server log.
PHONES = {"mint": "+919812340001", "replay": "+919812340002", "repeat": "+919812340003",
          "float": "+919876543210", "foreign": "+14155550123", "reader": "+919812340006",
          "stream": "+919812340007", "logs": "+919812340008"}
NEW_PHONE = "+919812340099"   # not a member: what writes of the read key or test mode would create
ENROLLED_PHONE = "+919812340097"  # enrolled by the log probes without customer_id: reference PH-<digits>
COUNTED = ("loyalty.members", "loyalty.transactions", "loyalty.points_ledger", "loyalty_api.idempotency")


# ---- the database and the servers -------------------------------------------------------------

def with_database(dsn: str, database: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params["dbname"] = database
    return make_conninfo(**params)


@contextmanager
def fresh_database(server_dsn: str) -> Iterator[str]:
    """A new database with the project's schema, dropped afterwards: the drill's writes touch nothing else."""
    import psycopg

    from loyalty_moengage.db import apply_schema

    name = f"api_drill_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(server_dsn, name)
        apply_schema(dsn)
        yield dsn
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(dsn: str) -> dict[str, int]:
    """One program with tiers and store A123, and the members of ``PHONES``; {phone: member_id}."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO loyalty.programs (program_id, name, time_zone, earn_rate, currency, default_country, "
                     "points_validity_days) VALUES (%s, 'API drill', 'Asia/Kolkata', 0.1, 'INR', 'IN', 365)", (PROGRAM,))
        for rank, tier in enumerate(("Silver", "Gold", "Platinum"), start=1):
            conn.execute("INSERT INTO loyalty.tiers VALUES (%s, %s, %s)", (PROGRAM, tier, rank))
        conn.execute("INSERT INTO loyalty.stores VALUES (%s, %s, 'Drill store')", (PROGRAM, STORE))
        ids = {}
        for role, phone in PHONES.items():
            ids[phone] = conn.execute(
                "INSERT INTO loyalty.members (program_id, relation_reference, phone, name, tier, status, enrolled_at) "
                "VALUES (%s, %s, %s, %s, 'Silver', 'active', now()) RETURNING member_id",
                (PROGRAM, f"REL-{role}", phone, role.title())).fetchone()[0]
    return ids


@dataclass(frozen=True)
class Keys:
    read: str
    write: str
    store: str

    @classmethod
    def new(cls) -> "Keys":
        return cls("rd-" + secrets.token_urlsafe(24), "wr-" + secrets.token_urlsafe(24),
                   "st-" + secrets.token_urlsafe(24))

    def connection(self) -> str:
        """The program's keys as an Airflow connection in JSON, the way a secrets backend holds them."""
        return json.dumps({"conn_type": "generic", "password": self.read, "extra": {
            "read_keys": [self.read], "write_keys": [self.write], "store_keys": {STORE: self.store}}})


def programs_file(work: Path) -> Path:
    path = work / "programs.yaml"
    path.write_text(json.dumps({"programs": [{"id": PROGRAM, "name": "API drill", "time_zone": "Asia/Kolkata",
                                              "api": {"max_points_per_purchase": CAP_PURCHASE,
                                                      "max_points_per_member_per_day": CAP_DAY}}]}))
    return path


def server_settings(write_rate: int | None = None) -> dict[str, str]:
    """The LOYALTY_API_* a server of the drill runs with (besides keys, DSN and programs)."""
    out = {"LOYALTY_API_RETRY_WINDOW_SECONDS": str(RETRY_WINDOW_S), "LOYALTY_API_BODY_TIMEOUT": str(BODY_TIMEOUT_S),
           "LOYALTY_API_MAX_IN_FLIGHT_WRITES": str(MAX_WRITES_IN_FLIGHT), "LOYALTY_API_KEYS_TTL": "600"}
    if write_rate is not None:
        out["LOYALTY_API_WRITE_RATE"] = str(write_rate)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    """``python -m loyalty_moengage.api`` in a process group of its own, stdout+stderr to ``log``."""

    def __init__(self, dsn: str, keys: Keys, programs: Path, log: Path, workers: int, settings: dict[str, str]):
        from loyalty_moengage.paths import project_root

        self.port, self.log, self.settings, self.workers = free_port(), log, settings, workers
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LOYALTY_API_", "AIRFLOW_CONN_LOYALTY_API_"))}
        env.update(settings, PYTHONUNBUFFERED="1", LOYALTY_API_DSN=dsn, LOYALTY_API_PROGRAMS=PROGRAM,
                   LOYALTY_PROGRAMS_FILE=str(programs), **{f"AIRFLOW_CONN_LOYALTY_API_{PROGRAM.upper()}": keys.connection()})
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loyalty_moengage.api", "--port", str(self.port), "--workers", str(workers),
             "--log-level", "debug"], env=env, cwd=project_root(), stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True)

    async def wait_ready(self, session: Any, keys: Keys, timeout: float = 90) -> None:
        """Until a real lookup answers 200 (keys, pool and program all work)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            reply = await call(session, "GET", self.url + POINTS, params=read_params(keys, PHONES["reader"]))
            if reply.status == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"API server not ready in {timeout:g} s (last: {reply.status} {reply.error})")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._out.close()


# ---- HTTP and database probes -----------------------------------------------------------------

@dataclass
class Reply:
    status: int                  # 0: no answer (error says why)
    headers: dict[str, str]
    body: bytes
    ms: float
    error: str = ""

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


async def call(session: Any, method: str, url: str, *, params: dict[str, str] | None = None,
               headers: dict[str, str] | None = None, body: Any = None) -> Reply:
    """One request; a refused, reset or timed-out one is a Reply with status 0, never an exception."""
    sent = {"Content-Type": "application/json"} if body is not None else {}
    sent.update(headers or {})
    data = json.dumps(body).encode() if body is not None else None
    t0 = time.perf_counter()
    try:
        async with session.request(method, url, params=params, headers=sent, data=data) as r:
            raw = await r.read()
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, raw, (time.perf_counter() - t0) * 1000)
    except Exception as exc:  # noqa: BLE001 - a refused, reset or timed-out request is a failed request
        return Reply(0, {}, b"", (time.perf_counter() - t0) * 1000, type(exc).__name__)


def read_params(keys: Keys, phone: str) -> dict[str, str]:
    return {"api_key": keys.read, "store_key": keys.store, "customer_phone": phone}


def item(phone: Any, amount: str | None = "100", **extra: Any) -> dict[str, Any]:
    out = {"number": phone, "store_id": STORE, "channel": "Website", **extra}
    if amount is not None:
        out["amount"] = amount
    return out


def query(dsn: str, sql: str, *args: Any) -> Any:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchone()[0]


def counts(dsn: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED}


def written(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(after[t] - before[t] for t in COUNTED)


def balance(dsn: str, member_id: int) -> int:
    return int(query(dsn, "SELECT COALESCE(sum(points), 0) FROM loyalty.points_ledger WHERE member_id = %s", member_id))


def terminate_api_backends(dsn: str) -> int:
    """What a failover or a proxy's idle timeout does: every API backend of the drill's database dies."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
                            "'loyalty_moengage_api' AND datname = current_database()").fetchall()
    return sum(1 for (ok,) in rows if ok)


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def tally(statuses: list[int | str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in statuses:
        out[str(s)] = out.get(str(s), 0) + 1
    return dict(sorted(out.items()))


# ---- the attacks ------------------------------------------------------------------------------

@dataclass
class Drill:
    """What every attack needs: the database, the servers, the keys, an HTTP session."""

    dsn: str
    main: ApiServer
    limited: ApiServer           # the same app with LOYALTY_API_WRITE_RATE=5
    keys: Keys
    members: dict[str, int]      # phone -> member_id
    session: Any
    workers: int

    async def post(self, body: Any, *, key: str | None = None, headers: dict[str, str] | None = None,
                   params: dict[str, str] | None = None, url: str | None = None) -> Reply:
        key = self.keys.write if key is None else key          # "": no X-API-Key header at all
        sent = {**({"X-API-Key": key} if key else {}), **(headers or {})}
        return await call(self.session, "POST", (url or self.main.url) + ADD, params=params, headers=sent, body=body)

    async def read(self, phone: str = PHONES["reader"], url: str | None = None) -> Reply:
        return await call(self.session, "GET", (url or self.main.url) + POINTS, params=read_params(self.keys, phone))


Outcome = tuple[bool, str, dict[str, Any]]   # passed, observed (one line), figures


async def read_key_writes(d: Drill) -> Outcome:
    before = counts(d.dsn)
    body = {"customer_details": item(NEW_PHONE, "500", purchase_id="rk-1")}
    ways = {"query": await d.post(body, key="", params={"api_key": d.keys.read}),
            "X-API-Key": await d.post(body, key=d.keys.read),
            "Bearer": await d.post(body, key="", headers={"Authorization": f"Bearer {d.keys.read}"})}
    rows = written(before, counts(d.dsn))
    statuses = {k: r.status for k, r in ways.items()}
    ok = set(statuses.values()) == {403} and rows == 0
    return ok, f"{', '.join(f'{s} ({k})' for k, s in statuses.items())}; rows written {rows}", \
        {"statuses": statuses, "rows_written": rows}


async def write_key_reads(d: Drill) -> Outcome:
    phone = PHONES["reader"]
    ways = {"query": await call(d.session, "GET", d.main.url + POINTS, params={
                "api_key": d.keys.write, "store_key": d.keys.store, "customer_phone": phone}),
            "X-API-Key": await call(d.session, "GET", d.main.url + POINTS, params={"customer_phone": phone},
                                    headers={"X-API-Key": d.keys.write, "X-Store-Key": d.keys.store})}
    statuses = {k: r.status for k, r in ways.items()}
    leaked = [k for k, r in ways.items() if b"points_available" in r.body]
    ok = set(statuses.values()) == {403} and not leaked
    return ok, f"{', '.join(f'{s} ({k})' for k, s in statuses.items())}; points in a body: {len(leaked)}", \
        {"statuses": statuses}


async def minting(d: Drill) -> Outcome:
    phone, requests_n, items_n = PHONES["mint"], 20, 100
    bodies = [{"customer_details": [item(phone, "1000000", purchase_id=f"mint-{r}-{i}") for i in range(items_n)]}
              for r in range(requests_n)]
    replies = await asyncio.gather(*(d.post(b) for b in bodies))
    credited = balance(d.dsn, d.members[phone])
    asked = requests_n * items_n * 100_000
    per_purchase = max((x["points_credited"] for r in replies if r.status == 200
                        for x in (r.json() or {}).get("results", [])), default=0)
    statuses = tally([r.status for r in replies])
    refusals = sorted({f"{r.status}: {((r.json() or {}).get('error') or {}).get('message')}"
                       for r in replies if r.status != 200})
    ok = 0 < credited <= CAP_DAY and per_purchase <= CAP_PURCHASE and set(statuses) <= {"200", "503"}
    return ok, (f"{statuses} answers{f' {refusals}' if refusals else ''}; {asked:,} points asked, {credited:,} "
                f"credited (daily cap {CAP_DAY:,}), largest single credit {per_purchase:,}; slowest answer "
                f"{max(r.ms for r in replies) / 1000:.1f} s"), \
        {"statuses": statuses, "refusals": refusals, "points_asked": asked, "points_credited": credited,
         "largest_credit": per_purchase, "max_ms": round(max(r.ms for r in replies), 1)}


async def replay_one_purchase(d: Drill) -> Outcome:
    phone, n = PHONES["replay"], 50
    replies = await asyncio.gather(*(d.post({"customer_details": item(phone, str(100 + 10 * i), purchase_id="ORD-7")})
                                     for i in range(n)))
    txn = f"MOE-{PROGRAM}-ORD-7"
    transactions = query(d.dsn, "SELECT count(*) FROM loyalty.transactions WHERE transaction_id = %s", txn)
    lots = query(d.dsn, "SELECT count(*) FROM loyalty.points_ledger WHERE transaction_id = %s", txn)
    credited = balance(d.dsn, d.members[phone])
    counted = sum(1 for r in replies for x in (r.json() or {}).get("results", []) if x.get("purchase") == "counted")
    statuses = tally([r.status for r in replies])
    ok = statuses == {"200": n} and transactions == 1 and lots == 1 and counted == 1 and 10 <= credited <= 59
    return ok, (f"{statuses} answers; {transactions} transaction, {lots} ledger lot, {credited} points, "
                f"{counted} answer said counted"), \
        {"statuses": statuses, "transactions": transactions, "ledger_lots": lots, "points_credited": credited,
         "answers_counted": counted}


async def genuine_repeats(d: Drill) -> Outcome:
    phone = PHONES["repeat"]
    body = {"customer_details": item(phone, "500")}
    first = await d.post(body)
    retry = await d.post(body)
    await asyncio.sleep(RETRY_WINDOW_S + 1)
    later = await d.post(body)
    replayed = [r.headers.get("idempotent-replayed") for r in (first, retry, later)]
    transactions = query(d.dsn, "SELECT count(*) FROM loyalty.transactions WHERE member_id = %s", d.members[phone])
    credited = balance(d.dsn, d.members[phone])
    ok = ([r.status for r in (first, retry, later)] == [200] * 3 and replayed == ["false", "true", "false"]
          and transactions == 2 and credited == 100 and retry.body == first.body)
    return ok, (f"statuses {[r.status for r in (first, retry, later)]}, Idempotent-Replayed {replayed}; "
                f"{transactions} transactions, {credited} points"), \
        {"replayed": replayed, "transactions": transactions, "points_credited": credited}


async def phantom_members(d: Drill) -> Outcome:
    india, us = PHONES["float"], PHONES["foreign"]
    before = counts(d.dsn)["loyalty.members"]
    was = {p: balance(d.dsn, d.members[p]) for p in (india, us)}
    body = {"customer_details": [item("9876543210.0", purchase_id="ph-1"), item(9876543210.0, purchase_id="ph-2"),
                                 item("14155550123", purchase_id="ph-3")]}
    reply = await d.post(body)
    refs = [x.get("customer_id") for x in (reply.json() or {}).get("results", [])]
    new = counts(d.dsn)["loyalty.members"] - before
    gained = {p: balance(d.dsn, d.members[p]) - was[p] for p in (india, us)}
    ok = reply.status == 200 and new == 0 and gained == {india: 20, us: 10} and refs == ["REL-float"] * 2 + ["REL-foreign"]
    return ok, f"{reply.status}; new members {new}; credited to {refs}: +{gained[india]} and +{gained[us]} points", \
        {"status": reply.status, "new_members": new, "credited_to": refs, "points_gained": list(gained.values())}


async def _probe_reads(d: Drill, done: asyncio.Event) -> list[Reply]:
    """Valid reads, one at a time, until ``done``: what a real campaign sees during an attack."""
    out = []
    while not done.is_set():
        out.append(await d.read())
        await asyncio.sleep(0.01)
    return out


async def brute_force(d: Drill) -> Outcome:
    baseline = [await d.read() for _ in range(30)]
    slots, done = asyncio.Semaphore(50), asyncio.Event()

    async def guess(i: int) -> Reply:
        key = secrets.token_urlsafe(24)
        async with slots:
            if i % 4 == 3:
                return await d.post({"customer_details": item(NEW_PHONE)}, key=key)
            if i % 2:
                return await call(d.session, "GET", d.main.url + POINTS, params={"customer_phone": PHONES["reader"]},
                                  headers={"X-API-Key": key, "X-Store-Key": d.keys.store})
            return await call(d.session, "GET", d.main.url + POINTS, params={**read_params(d.keys, PHONES["reader"]),
                                                                             "api_key": key})

    probe = asyncio.create_task(_probe_reads(d, done))
    t0 = time.monotonic()
    guesses = await asyncio.gather(*(guess(i) for i in range(2000)))
    seconds = time.monotonic() - t0
    done.set()
    probes = await probe
    median = statistics.median(r.ms for r in probes) if probes else 0.0
    statuses, probe_statuses = tally([r.status for r in guesses]), tally([r.status for r in probes])
    ok = statuses == {"401": 2000} and probes and set(probe_statuses) == {"200"} and median <= FINE_MEDIAN_MS
    return ok, (f"{statuses} for 2,000 random keys in {seconds:.1f} s; valid reads during it: {probe_statuses}, "
                f"median {median:.1f} ms (before: {statistics.median(r.ms for r in baseline):.1f} ms)"), \
        {"guesses": statuses, "guesses_per_s": round(2000 / seconds), "valid_reads": probe_statuses,
         "valid_median_ms": round(median, 2), "valid_p99_ms": pct([r.ms for r in probes], 0.99),
         "baseline_median_ms": round(statistics.median(r.ms for r in baseline), 2)}


async def rate_limit(d: Drill) -> Outcome:
    url, n = d.limited.url, 30
    test = {"X-Loyalty-Test": "true"}   # the limiter counts requests; nothing needs writing
    replies = await asyncio.gather(*(d.post({"customer_details": item(NEW_PHONE, purchase_id=f"rl-{i}")},
                                            headers=test, url=url) for i in range(n)))
    refused = [r for r in replies if r.status == 429]
    waits = sorted({r.headers.get("retry-after", "") for r in refused})
    read_ok = (await d.read(url=url)).status
    good_waits = bool(refused) and all(w.isdigit() and int(w) >= 1 for w in waits)
    await asyncio.sleep(max((int(w) for w in waits if w.isdigit()), default=1))
    after = await d.post({"customer_details": item(NEW_PHONE, purchase_id="rl-after")}, headers=test, url=url)
    statuses = tally([r.status for r in replies])
    ok = (set(statuses) <= {"200", "429"} and good_waits and statuses.get("200", 0) >= SMALL_WRITE_RATE
          and read_ok == 200 and after.status == 200)
    return ok, (f"{statuses} for {n} writes at once (rate {SMALL_WRITE_RATE}/s, burst {2 * SMALL_WRITE_RATE}); "
                f"Retry-After {waits}; read key meanwhile {read_ok}; after waiting {after.status}"), \
        {"statuses": statuses, "retry_after": waits, "read_during": read_ok, "after_wait": after.status}


async def _stalled_upload(port: int, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    """A webhook with a valid key that sends its headers and half its body, then nothing."""
    body = json.dumps({"customer_details": item(PHONES["mint"], purchase_id="stall-" + "x" * 200)}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"POST {ADD} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-API-Key: {key}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:len(body) // 2])
    await writer.drain()
    return reader, writer, time.monotonic()


async def _answer_head(reader: asyncio.StreamReader, sent_at: float) -> tuple[int | str, float]:
    try:
        line = await asyncio.wait_for(reader.readline(), BODY_TIMEOUT_S + 10)
        return int(line.split()[1]), time.monotonic() - sent_at
    except (asyncio.TimeoutError, IndexError, ValueError, OSError) as exc:
        return type(exc).__name__, time.monotonic() - sent_at


async def stalled_uploads(d: Drill) -> Outcome:
    stalls = await asyncio.gather(*(_stalled_upload(d.main.port, d.keys.write) for _ in range(300)))
    heads = [asyncio.create_task(_answer_head(r, at)) for r, _, at in stalls]
    slots = asyncio.Semaphore(50)

    async def read() -> Reply:
        async with slots:
            return await d.read()

    reads = await asyncio.gather(*(read() for _ in range(500)))
    answered = await asyncio.gather(*heads)
    for _, writer, _ in stalls:
        writer.close()
    after = await d.post({"customer_details": item(PHONES["stream"], purchase_id="after-stall")})
    statuses = tally([s for s, _ in answered])
    fast_503 = [t for s, t in answered if s == 503]
    timed_out = [t for s, t in answered if s == 408]
    read_failures = sum(1 for r in reads if r.status != 200)
    ok = (read_failures == 0 and set(statuses) <= {"408", "503"} and 0 < len(timed_out) <= MAX_WRITES_IN_FLIGHT * d.workers
          and all(t < 1.0 for t in fast_503) and all(t >= BODY_TIMEOUT_S - 0.2 for t in timed_out) and after.status == 200)
    return ok, (f"stalled: {statuses} (408 after {pct(timed_out, 0) if timed_out else '-'}-{max(timed_out, default=0):.1f} s, "
                f"503 within {max(fast_503, default=0) * 1000:.0f} ms); 500 GETs meanwhile: {read_failures} failed, "
                f"p99 {pct([r.ms for r in reads], 0.99)} ms; a webhook afterwards {after.status}"), \
        {"stalled": statuses, "max_503_ms": round(max(fast_503, default=0) * 1000, 1),
         "s_408_min": round(min(timed_out, default=0), 2), "get_failures": read_failures,
         "get_p50_ms": pct([r.ms for r in reads], 0.5), "get_p99_ms": pct([r.ms for r in reads], 0.99)}


async def _steady_stream(d: Drill, rate: int, seconds: float, concurrency: int) -> list[tuple[str, Reply]]:
    """Open loop: request i is due at i / rate, at most ``concurrency`` at once; every 20th is a
    webhook with a purchase id of its own; latency counts from the due time."""
    loop, slots, out = asyncio.get_running_loop(), asyncio.Semaphore(concurrency), []
    t0 = loop.time()

    async def one(i: int, due: float) -> None:
        async with slots:
            if i % 20 == 19:
                reply = await d.post({"customer_details": item(PHONES["stream"], purchase_id=f"drop-{i}")})
            else:
                reply = await d.read()
        reply.ms = (loop.time() - due) * 1000
        out.append(("write" if i % 20 == 19 else "read", reply))

    tasks = []
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
        tasks.append(asyncio.create_task(one(i, t0 + i / rate)))
    await asyncio.gather(*tasks)
    return out


async def connection_drop(d: Drill) -> Outcome:
    async def terminator() -> list[int]:
        killed = []
        for _ in range(3):
            await asyncio.sleep(2.0)
            killed.append(await asyncio.to_thread(terminate_api_backends, d.dsn))
        return killed

    stream, killed = await asyncio.gather(_steady_stream(d, 200, 10.0, 20), terminator())
    failed = tally([r.status for _, r in stream if r.status != 200])
    why = sorted({f"{kind} {r.status}: {((r.json() or {}).get('error') or {}).get('message') or r.error}"
                  for kind, r in stream if r.status != 200})
    writes = [r for kind, r in stream if kind == "write" and r.status == 200]
    pattern = f"MOE-{PROGRAM}-drop-%"
    txns = query(d.dsn, "SELECT count(*) FROM loyalty.transactions WHERE transaction_id LIKE %s", pattern)
    lots = query(d.dsn, "SELECT count(*) FROM loyalty.points_ledger WHERE transaction_id LIKE %s", pattern)
    latencies = [r.ms for _, r in stream]
    ok = not failed and all(killed) and txns == lots == len(writes)
    return ok, (f"{len(stream):,} requests ({len(writes)} webhooks) while {killed} backends were terminated: "
                f"{sum(failed.values())} failed{f' {why}' if why else ''}, p50 {pct(latencies, 0.5)} ms, p99 {pct(latencies, 0.99)} ms; "
                f"{txns} transactions and {lots} lots for {len(writes)} webhooks"), \
        {"requests": len(stream), "failed": failed, "failures": why, "terminated": killed, "p50_ms": pct(latencies, 0.5),
         "p99_ms": pct(latencies, 0.99), "max_ms": round(max(latencies, default=0), 1), "webhooks_ok": len(writes),
         "transactions": txns, "ledger_lots": lots}


async def log_probes(d: Drill) -> list[int]:
    """Requests that put every key and a member's phone where a careless log would write them;
    the first enrols a member without customer_id, the last reads it by its derived PH- reference."""
    k, phone, url = d.keys, PHONES["logs"], d.main.url + POINTS
    get = lambda params, headers=None: call(d.session, "GET", url, params=params, headers=headers)  # noqa: E731
    enrolled = await d.post({"customer_details": item(ENROLLED_PHONE, amount=None)})
    reference = ((enrolled.json() or {}).get("results") or [{}])[0].get("customer_id", "")
    replies = [
        await get(read_params(k, phone)),
        await get({"api-key": k.read, "storeKey": k.store, "customer_phone": phone}),
        await get({"customer_phone": phone[3:]}, {"X-API-Key": k.read, "X-Store-Key": k.store}),
        await get({"api_key": k.write, "store_key": k.store, "customer_phone": phone}),
        await get({"API_KEY": k.store, "Store-Key": k.read, "mobile": phone}),
        await d.post({"customer_details": item(phone, email_id="logs@example.com")},
                     params={"api-key": k.write, "storeKey": k.store}),
        await d.post({"customer_details": item(phone[3:], purchase_id="log-2")}, params={"api_key": k.write}),
        await d.post({"customer_details": item(phone)}, key=k.read, params={"token": k.read}),
        await get({"customer_id": reference}, {"X-API-Key": k.read, "X-Store-Key": k.store}),
    ]
    return [enrolled.status] + [r.status for r in replies]


def scan_logs(paths: list[Path], keys: Keys) -> dict[str, Any]:
    """Which secrets a server log holds: each key (its random tail is enough), each member's phone
    in any spelling (separators and URL escapes between its national digits)."""
    text = "\n".join(p.read_text(errors="replace") for p in paths)
    found = {name: text.count(key[-16:]) for name, key in asdict(keys).items()}
    for role, phone in PHONES.items():
        found[f"phone:{role}"] = _phone_hits(phone, text)
    return {"found": {k: v for k, v in found.items() if v}, "lines": text.count("\n"),
            "access_lines": len(re.findall(r'"(?:GET|POST) /api/', text)), "bytes": len(text),
            # Not sent as a phone: the API's own PH-<digits> reference of a member enrolled without customer_id.
            "phone_in_derived_reference": _phone_hits(ENROLLED_PHONE, text)}


def _phone_hits(phone: str, text: str) -> int:
    """Occurrences of ``phone``'s national digits, with any separators or URL escapes between them."""
    national = phone[3:] if phone.startswith("+91") else phone[2:]
    return len(re.findall(r"(?:[\s\-.()/+]|%20|%2B|%2b)*".join(national), text))


def secrets_in_logs(probes: list[int], scan: dict[str, Any]) -> Outcome:
    derived = scan["phone_in_derived_reference"]
    ok = not scan["found"] and not derived and scan["access_lines"] > 0 and all(probes)
    return ok, (f"{scan['lines']:,} log lines ({scan['access_lines']:,} access lines, --log-level debug) after probes "
                f"answered {probes}; secrets found: {scan['found'] or 'none'}; the phone inside the API's own "
                f"PH- reference, sent as customer_id: {derived}x"), {**scan, "probe_statuses": probes}


async def test_calls(d: Drill) -> Outcome:
    before = counts(d.dsn)
    header = await d.post({"customer_details": item(NEW_PHONE, "700", purchase_id="tm-1")},
                          headers={"X-Loyalty-Test": "true"})
    query_flag = await d.post({"customer_details": item(PHONES["reader"], "700", purchase_id="tm-2")},
                              params={"test": "true"})
    rows = written(before, counts(d.dsn))
    said = [(r.status, r.headers.get("loyalty-test"), (r.json() or {}).get("test")) for r in (header, query_flag)]
    credited = [x.get("points_credited") for r in (header, query_flag) for x in (r.json() or {}).get("results", [])]
    ok = said == [(200, "true", True)] * 2 and rows == 0 and credited == [70, 70]
    return ok, f"answers {said}, points the answers report {credited}; rows written {rows}", \
        {"answers": said, "points_reported": credited, "rows_written": rows}


#: (number, name, attack, expected, run) in the order of the report; 11 runs last (it needs the logs).
STEPS: list[tuple[int, str, str, str, Callable[[Drill], Awaitable[Outcome]] | None]] = [
    (1, "read_key_writes", "the read key (Content API URL) posts a purchase, in the URL, X-API-Key and Bearer",
     "403 each, 0 rows written", read_key_writes),
    (2, "write_key_reads", "the write key asks for points, in the URL and in X-API-Key", "403 each, no points",
     write_key_reads),
    (3, "minting", "20 concurrent requests of 100 items x 1,000,000 INR for one phone, distinct purchase ids",
     f"credited <= daily cap {CAP_DAY:,}, one purchase <= {CAP_PURCHASE:,}; answers 200 or a retryable 503", minting),
    (4, "replay_one_purchase", "one purchase_id sent 50 times at once with 50 different amounts",
     "50 x 200, 1 transaction, credited once", replay_one_purchase),
    (5, "genuine_repeats", f"one body without id twice in a row, then again after the {RETRY_WINDOW_S} s retry window",
     "replayed inside the window, credited again after it (2 transactions)", genuine_repeats),
    (6, "phantom_members", 'webhook numbers "9876543210.0", 9876543210.0 and "14155550123"',
     "0 new members, the existing +919876543210 and +14155550123 credited", phantom_members),
    (7, "brute_force", "2,000 requests with random keys (URL, X-API-Key, webhook), 50 at once",
     f"all 401; valid reads meanwhile 200, median <= {FINE_MEDIAN_MS:g} ms", brute_force),
    (8, "rate_limit", f"30 writes at once on a server with LOYALTY_API_WRITE_RATE={SMALL_WRITE_RATE}",
     "429 with Retry-After >= 1 past the burst; read key unaffected; 200 after waiting", rate_limit),
    (9, "stalled_uploads", "300 webhooks send headers + half the body and stall; 500 GET points meanwhile",
     f"0 GET failures; stalled get 408 (after {BODY_TIMEOUT_S} s) or a fast 503 (over {MAX_WRITES_IN_FLIGHT} in flight)",
     stalled_uploads),
    (10, "connection_drop", "200 requests/s for 10 s (20 at once, 1 in 20 a webhook); every API backend terminated "
     "3 times, 2 s apart", "0 non-200; each webhook credited exactly once", connection_drop),
    (11, "secrets_in_logs", "keys sent as api_key, api-key, storeKey, API_KEY, token, X-API-Key; phones in URLs and "
     "bodies; server at --log-level debug", "no key and no full member phone in stdout/stderr", None),
    (12, "test_mode", "a webhook with X-Loyalty-Test: true and one with ?test=true",
     "200, Loyalty-Test: true, 0 rows written", test_calls),
]


# ---- running and reporting --------------------------------------------------------------------

@dataclass
class StepResult:
    n: int
    name: str
    attack: str
    expected: str
    observed: str = ""
    passed: bool = False
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)


async def run_step(d: Drill, n: int, name: str, attack: str, expected: str,
                   run: Callable[[], Awaitable[Outcome]]) -> StepResult:
    """One attack, bounded; an exception is a failed step that says what broke, never a crash."""
    result = StepResult(n, name, attack, expected)
    t0 = time.monotonic()
    try:
        result.passed, result.observed, result.figures = await asyncio.wait_for(run(), STEP_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - reported as the step's outcome
        result.observed = f"did not complete: {type(exc).__name__}: {str(exc)[:500]}"
    result.seconds = round(time.monotonic() - t0, 2)
    _log(f"{n:>2}. {name}: {'pass' if result.passed else 'FAIL'} ({result.seconds} s) - {result.observed}")
    return result


async def attack(dsn: str, keys: Keys, work: Path, workers: int, only: set[int]) -> list[StepResult]:
    import aiohttp

    members = seed(dsn)
    programs = programs_file(work)
    main_server = ApiServer(dsn, keys, programs, work / "main.log", workers, server_settings())
    limited = ApiServer(dsn, keys, programs, work / "limited.log", 1, server_settings(SMALL_WRITE_RATE))
    connector = aiohttp.TCPConnector(limit=200)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15)) as session:
            d = Drill(dsn, main_server, limited, keys, members, session, workers)
            await asyncio.gather(main_server.wait_ready(session, keys), limited.wait_ready(session, keys))
            _log(f"servers ready: {main_server.url} ({workers} worker(s)), {limited.url} (write rate {SMALL_WRITE_RATE}/s)")
            results = [await run_step(d, n, name, what, expected, lambda f=run: f(d))
                       for n, name, what, expected, run in STEPS if run is not None and n in only]
            probes = await log_probes(d) if 11 in only else []
    finally:
        main_server.stop()
        limited.stop()
    n, name, what, expected, _ = STEPS[10]
    if n in only:
        scan = scan_logs([main_server.log, limited.log], keys)
        results.append(await run_step(d, n, name, what, expected, lambda: _ready(secrets_in_logs(probes, scan))))
    return sorted(results, key=lambda r: r.n)


async def _ready(outcome: Outcome) -> Outcome:
    return outcome


def render_md(r: dict[str, Any]) -> str:
    cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [f"# API abuse drill ({r['started_at']})", "",
             f"commit `{r['commit']}`; {r['machine']['cores']} cores, Python {r['machine']['python']}, "
             f"PostgreSQL {r['machine']['postgres']}; `{r['command']}`", "",
             f"A real `python -m loyalty_moengage.api` ({r['workers']} worker(s), {r['server_settings']}) on a fresh "
             f"database; a second server with LOYALTY_API_WRITE_RATE={SMALL_WRITE_RATE} for step 8. Caps: "
             f"{CAP_PURCHASE:,} points per purchase, {CAP_DAY:,} per member per day. "
             f"{r['passed_steps']}/{len(r['steps'])} passed in {r['seconds']} s.", "",
             "| # | attack | expected | observed | result |", "|---|---|---|---|---|"]
    lines += [f"| {s['n']} | {cell(s['attack'])} | {cell(s['expected'])} | {cell(s['observed'])} | "
              f"{'pass' if s['passed'] else '**FAIL**'} |" for s in r["steps"]]
    return "\n".join(lines) + "\n"


def _dsn() -> str:
    from loyalty_moengage.db import loyalty_dsn

    return loyalty_dsn()


def _log(msg: str) -> None:
    print(f"[api-drills {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loyalty_moengage_devtools.api_drills", description=__doc__.splitlines()[0])
    p.add_argument("steps", nargs="*", metavar="STEP", help="attacks to run, by number or name (default: all)")
    p.add_argument("--dsn", help="a PostgreSQL server to make the drill's database on (default: the project's rule: "
                                 "connection, LOYALTY_DB_URL, embedded)")
    p.add_argument("--workers", type=int, default=1, help="worker processes of the main API server (default 1)")
    p.add_argument("--work", type=Path, help="keep the servers' logs and programs file here (default: a temporary "
                                            "directory, removed)")
    p.add_argument("--out", default="bench/results", help="directory of api-drills-latest.json/.md (default bench/results)")
    return p


def main(argv: list[str] | None = None) -> int:
    from psycopg.conninfo import conninfo_to_dict

    from loyalty_moengage.paths import project_root
    from loyalty_moengage_devtools.bench import _git_commit, _machine

    parser = build_parser()
    args = parser.parse_args(argv)
    only = {n for n, name, *_ in STEPS if not args.steps or str(n) in args.steps or name in args.steps}
    if len(only) < len(set(args.steps)):
        parser.error(f"unknown step(s) in {args.steps}; choose from {[f'{n} {name}' for n, name, *_ in STEPS]}")
    started_at, t0, commit = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic(), _git_commit()
    server_dsn = args.dsn or _dsn()
    with fresh_database(server_dsn) as dsn, tempfile.TemporaryDirectory(prefix="lm-api-drills-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        steps = asyncio.run(attack(dsn, Keys.new(), work, args.workers, only))
        database = conninfo_to_dict(dsn)["dbname"]
    r = {"started_at": started_at, "database": database, "commit": commit, "commit_at_end": _git_commit(), "machine": _machine(server_dsn),
         "command": "python -m loyalty_moengage_devtools.api_drills " + " ".join(argv if argv is not None else sys.argv[1:]),
         "workers": args.workers, "server_settings": server_settings(), "seconds": round(time.monotonic() - t0, 1),
         "passed": all(s.passed for s in steps), "passed_steps": sum(s.passed for s in steps),
         "steps": [asdict(s) for s in steps]}
    out = Path(args.out)
    out = out if out.is_absolute() else project_root() / out
    out.mkdir(parents=True, exist_ok=True)
    (out / "api-drills-latest.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
    md = render_md(r)
    (out / "api-drills-latest.md").write_text(md)
    print(md)
    _log(f"{r['passed_steps']}/{len(steps)} attacks held in {r['seconds']} s; wrote {out / 'api-drills-latest.md'}")
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
