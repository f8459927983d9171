"""Benchmark of the points lookup as MoEngage drives it: an open-loop load at fixed rates.

    python -m loyalty_moengage_devtools.bench_api                      # 1,000,000 members
    python -m loyalty_moengage_devtools.bench_api --members 20000 --step-seconds 3

MoEngage renders a campaign by calling the Content API once per user at its own pace; it does
not wait for one answer before asking the next. So the load here is open-loop: request i is
due at ``t0 + i / rate`` whether or not earlier ones have answered, and its latency counts from
that due time (a server that falls behind sees its queue in the figures, no coordinated
omission). For each of three targets the bench climbs a ladder of fixed rates (x1.5 per step,
then bisects between the last rate that held and the first that did not) and reports the
highest rate whose p99 is at most ``--target-p99-ms`` with no failed request:

* ``points``: ``GET /api/loyalty/points`` of the real app (auth, phone normalisation, pool, SQL);
* ``http_floor``: the same server process answering a constant body of the same size from a
  route added next to it (``create_bench_app``), the cost of HTTP + framework alone;
* ``db_floor``: the same lookup (``loyalty_moengage.api.points.lookup``) through a
  ``psycopg_pool.AsyncConnectionPool`` of the same size, in this process, without HTTP.

The server runs in its own process (``uvicorn --factory``, uvloop + httptools as the product's
server) so client and server do not share a GIL; both share the machine's cores with
PostgreSQL, which is the setting this measures. Writes ``api-latest.json`` and ``api-latest.md``
under ``--out``. Exit status 1 when the lowest rate of the points ladder does not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

PATH = "/api/loyalty/points"
CONSTANT_PATH = "/bench/constant"
# A typical answer of the points route, so the HTTP floor moves the same bytes.
CONSTANT_BODY = {
    "customer_id": "M00000000001", "points_available": 12345, "tier": "Gold", "status": "active",
    "points_expiring_30d": 120, "points_expiring_60d": 240, "points_expiring_90d": 360,
    "next_expiry_date": "2027-01-15", "as_of_date": "2026-12-01",
}
TIMEOUT_S = 5.0  # MoEngage waits at most 5 s for a Content API
_LENGTH = re.compile(r"\ncontent-length: *(\d+)")
_TIMING = re.compile(r"\nserver-timing: *app;dur=([\d.]+)")


@dataclass
class Step:
    """One fixed rate held for ``seconds``: what was asked, what came back."""

    rate: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    launch_lag_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    server_p99_ms: float | None = None
    holds: bool = False


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_bench_app():
    """uvicorn factory: the product's app plus a constant route (the HTTP floor) beside it."""
    import orjson
    from fastapi import Response

    from loyalty_moengage.api.app import create_app_from_env

    app = create_app_from_env()
    body = orjson.dumps(CONSTANT_BODY)

    @app.get(CONSTANT_PATH)
    async def constant() -> Response:
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    return app


def ensure_program(dsn: str, program_id: str, members: int, days: int, seed: int) -> int:
    """Members in the program, generating it first when it has fewer than ``members``."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        have = conn.execute("SELECT count(*) FROM loyalty.members WHERE program_id = %s", (program_id,)).fetchone()[0]
    if have >= members:
        return have
    from loyalty_moengage_devtools.generator import generate

    _log(f"generating program {program_id!r} with {members:,} members ({days} days)")
    t0 = time.perf_counter()
    generate(dsn, program_id=program_id, members=members, days=days, seed=seed)
    _log(f"generated in {time.perf_counter() - t0:.0f} s")
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM loyalty.members WHERE program_id = %s", (program_id,)).fetchone()[0]


def sample_phones(dsn: str, program_id: str, n: int, unknown_share: float,
                  rng: random.Random) -> tuple[list[str], list[str]]:
    """(phones as people write them, the same as stored): real ones plus unknown ones (404)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT phone FROM loyalty.members WHERE program_id = %s AND phone IS NOT NULL "
            "ORDER BY md5(member_id::text || %s) LIMIT %s", (program_id, str(rng.random()), n)).fetchall()
    stored = [r[0] for r in rows]
    unknown = int(len(stored) * unknown_share)
    stored[:unknown] = [f"+9155{rng.randrange(10**7, 10**8)}" for _ in range(unknown)]
    rng.shuffle(stored)
    styles = [
        lambda p: p,                                            # +919876543210
        lambda p: "0" + p[3:] if p.startswith("+91") else p,    # 09876543210
        lambda p: p[3:] if p.startswith("+91") else p,          # 9876543210
        lambda p: f"{p[:3]} {p[3:8]} {p[8:]}",                  # +91 98765 43210
    ]
    return [rng.choice(styles)(p) for p in stored], stored


def start_server(dsn: str, program_id: str, api_key: str, store_id: str, store_key: str, workers: int,
                 pool_max: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {
        **os.environ,
        "LOYALTY_API_DSN": dsn,
        "LOYALTY_API_PROGRAMS": program_id,
        f"AIRFLOW_CONN_LOYALTY_API_{program_id.upper()}": json.dumps(
            {"conn_type": "generic", "password": api_key, "extra": {"store_keys": {store_id: store_key}}}),
        "LOYALTY_API_POOL_MIN": str(pool_max),
        "LOYALTY_API_POOL_MAX": str(pool_max),
        "LOYALTY_API_ACCESS_LOG": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "loyalty_moengage_devtools.bench_api:create_bench_app",
         "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--no-access-log",
         "--no-server-header", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools"], env=env)
    return proc, f"http://127.0.0.1:{port}"


async def _wait_ready(url: str, timeout: float = 60) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url + CONSTANT_PATH) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server at {url} not ready within {timeout}s")
            await asyncio.sleep(0.2)


async def open_loop(call: Callable[[int], Awaitable[tuple[str, float | None]]], rate: int,
                    seconds: float) -> Step:
    """Start ``call(i)`` when request i is due, never waiting for answers; latency from due time."""
    loop = asyncio.get_running_loop()
    n = max(1, int(rate * seconds))
    latencies: list[float] = []
    server_ms: list[float] = []
    statuses: dict[str, int] = {}
    lag: list[float] = []

    async def one(i: int, due: float) -> None:
        try:
            status, srv = await call(i)
        except Exception as exc:  # a refused or reset connection is a failed request, not a crash
            status, srv = type(exc).__name__, None
        latency = (loop.time() - due) * 1000
        if latency > TIMEOUT_S * 1000:
            status = "timeout"  # MoEngage would have given up (measured, not cancelled: cheaper)
        statuses[status] = statuses.get(status, 0) + 1
        latencies.append(latency)
        if srv is not None:
            server_ms.append(srv)

    tasks = []
    gc.disable()  # the client's own collector pauses would count as server latency
    t0 = loop.time() + 0.01
    i = 0
    while i < n:
        now = loop.time()
        due_now = min(n, int((now - t0) * rate) + 1)
        while i < due_now:
            due = t0 + i / rate
            lag.append((now - due) * 1000)
            tasks.append(asyncio.ensure_future(one(i, due)))
            i += 1
        await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
    await asyncio.gather(*tasks)
    gc.enable()
    errors = sum(v for k, v in statuses.items() if k not in ("200", "404"))
    return Step(rate=rate, requests=n, seconds=round(seconds, 2), p50_ms=_pct(latencies, 0.5),
                p90_ms=_pct(latencies, 0.9), p99_ms=_pct(latencies, 0.99), max_ms=round(max(latencies), 2),
                errors=errors, launch_lag_ms=_pct(lag, 0.99), statuses=dict(sorted(statuses.items())),
                server_p99_ms=_pct(server_ms, 0.99) if server_ms else None)


async def climb(step: Callable[[int], Awaitable[Step]], target_p99_ms: float, start: int, limit: int,
                bisections: int = 3) -> tuple[int, list[Step]]:
    """The highest rate that holds (x1.5 ladder, then bisection), with every step run."""
    steps: list[Step] = []

    async def run(rate: int) -> bool:
        s = await step(rate)
        s.holds = s.errors == 0 and s.p99_ms <= target_p99_ms
        steps.append(s)
        _log(f"  {rate:>6,}/s: p50 {s.p50_ms} ms, p99 {s.p99_ms} ms, errors {s.errors} "
             f"-> {'holds' if s.holds else 'does not hold'}")
        await asyncio.sleep(0.5)  # let a failed step's backlog drain before the next
        return s.holds

    good, bad, rate = 0, None, start
    while rate <= limit:
        if not await run(rate):
            bad = rate
            break
        good, rate = rate, int(rate * 1.5)
    if bad is not None and good:
        for _ in range(bisections):
            mid = (good + bad) // 2
            if mid - good < max(10, good // 50):
                break
            if await run(mid):
                good = mid
            else:
                bad = mid
    return good, steps


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that reads one answer at a time (status, Server-Timing).

    A load generator in Python is itself CPU on the machine it measures: aiohttp costs more per
    request than the server's constant route, so it would measure the client, not the floor.
    This parses only what the bench needs from answers that carry Content-Length (uvicorn's do).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: asyncio.Future | None = None
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("connection closed by the server"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = self.buf[:end].decode("latin-1").lower()
        length = int(_LENGTH.search(head).group(1))
        if len(self.buf) < end + 4 + length:
            return
        self.buf = self.buf[end + 4 + length:]
        timing = _TIMING.search(head)
        self.waiter.set_result((head[9:12], float(timing.group(1)) if timing else None))
        self.waiter = None


class _Client:
    """Keep-alive connections to one host, opened as the open-loop load needs them."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[_Conn] = []
        self.opened = 0
        self.slots = asyncio.Semaphore(limit)

    async def get(self, request: bytes) -> tuple[str, float | None]:
        async with self.slots:
            conn = None
            while self.idle and conn is None:
                conn = self.idle.pop()
                if conn.lost:  # closed by the server's keep-alive timeout while idle here
                    conn = None
            try:
                return await self._exchange(conn or await self._open(), request)
            except ConnectionResetError:
                if conn is None:
                    raise
                # A kept-alive connection the server closed as we reused it: like any HTTP client,
                # retry a GET once on a new connection (a fresh connection's reset is an error).
                return await self._exchange(await self._open(), request)

    async def _open(self) -> _Conn:
        _, conn = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
        self.opened += 1
        return conn

    async def _exchange(self, conn: _Conn, request: bytes) -> tuple[str, float | None]:
        conn.waiter = asyncio.get_running_loop().create_future()
        conn.transport.write(request)
        try:
            result = await conn.waiter
        except BaseException:
            conn.transport.abort()
            raise
        if not conn.lost:
            self.idle.append(conn)
        return result

    def close(self) -> None:
        for conn in self.idle:
            conn.transport.close()


async def http_target(url: str, path: str, queries: list[str], args: argparse.Namespace) -> tuple[int, list[Step]]:
    host, port = url.removeprefix("http://").split(":")
    requests = [f"GET {path}?{q} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n".encode()
                for q in queries]
    client = _Client(host, int(port), args.max_connections)
    try:
        async def call(i: int) -> tuple[str, float | None]:
            return await client.get(requests[i % len(requests)])

        await open_loop(call, args.start_rate, 2.0)  # warm-up: connections, prepared statements
        return await climb(lambda rate: open_loop(call, rate, args.step_seconds), args.target_p99_ms,
                           args.start_rate, args.max_rate)
    finally:
        client.close()


async def db_target(dsn: str, program_id: str, phones: list[str], args: argparse.Namespace) -> tuple[int, list[Step]]:
    from psycopg_pool import AsyncConnectionPool

    from loyalty_moengage.api import points

    async with AsyncConnectionPool(dsn, min_size=args.pool_max, max_size=args.pool_max, timeout=3.0,
                                   kwargs={"autocommit": True}, open=False) as pool:
        await pool.wait()

        async def call(i: int) -> tuple[str, float | None]:
            async with pool.connection() as conn:
                found = await points.lookup(conn, program_id, phones=[phones[i % len(phones)]])
            return ("200" if found else "404"), None

        await open_loop(call, args.start_rate, 2.0)
        return await climb(lambda rate: open_loop(call, rate, args.step_seconds), args.target_p99_ms,
                           args.start_rate, args.max_rate)


async def bursts(url: str, path: str, queries: list[str], sizes: list[int], rounds: int) -> dict[str, Any]:
    """MoEngage's calling pattern: ``size`` requests at once over as many kept-alive connections,
    ``rounds`` times; a request with no answer within 5 s failed (a 503 is an answer)."""
    host, port = url.removeprefix("http://").split(":")
    requests = [f"GET {path}?{q} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n".encode()
                for q in queries]
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {}
    for size in sizes:
        client = _Client(host, int(port), size)
        try:
            for start in range(0, size, 250):   # a caller's connections are open before its batch
                client.idle.extend(await asyncio.gather(*(client._open() for _ in range(min(250, size - start)))))
            latencies: list[float] = []
            statuses: dict[str, int] = {}
            for r in range(rounds):
                t0 = loop.time()

                async def one(i: int) -> None:
                    try:
                        status, _ = await asyncio.wait_for(client.get(requests[(r * size + i) % len(requests)]),
                                                           TIMEOUT_S)
                    except asyncio.TimeoutError:
                        status = "timeout"
                    except Exception as exc:  # noqa: BLE001 - a refused or reset connection is no answer
                        status = type(exc).__name__
                    statuses[status] = statuses.get(status, 0) + 1
                    if status.isdigit():
                        latencies.append((loop.time() - t0) * 1000)

                gc.disable()
                await asyncio.gather(*(one(i) for i in range(size)))
                gc.enable()
                await asyncio.sleep(1.0)
            failed = sum(v for k, v in statuses.items() if not k.isdigit())
            out[str(size)] = {"size": size, "rounds": rounds, "requests": size * rounds, "failed": failed,
                              "p50_ms": _pct(latencies, 0.5), "p99_ms": _pct(latencies, 0.99),
                              "max_ms": round(max(latencies), 2) if latencies else None,
                              "shed_503": statuses.get("503", 0), "statuses": dict(sorted(statuses.items())),
                              "connections": client.opened}
            _log(f"  burst of {size:,} x {rounds}: p50 {out[str(size)]['p50_ms']} ms, p99 {out[str(size)]['p99_ms']} "
                 f"ms, {failed} without an answer in 5 s, {statuses.get('503', 0)} fast 503s")
        finally:
            client.close()
        await asyncio.sleep(1.0)
    return out


def _run_async(coro):
    try:
        import uvloop
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except ImportError:
        return asyncio.run(coro)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loyalty_moengage.db import apply_schema

    rng = random.Random(args.seed)
    dsn = args.dsn or _dsn()
    apply_schema(dsn)
    members = ensure_program(dsn, args.program, args.members, args.days, args.seed)
    import psycopg

    with psycopg.connect(dsn) as conn:
        store_id = conn.execute("SELECT min(store_id) FROM loyalty.stores WHERE program_id = %s",
                                (args.program,)).fetchone()[0]
    api_key, store_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    written, stored = sample_phones(dsn, args.program, args.phones, args.unknown_share, rng)
    queries = [urlencode({"api_key": api_key, "store_key": store_key, "customer_phone": p}) for p in written]
    proc, url = start_server(dsn, args.program, api_key, store_id, store_key, args.workers, args.pool_max)
    try:
        _run_async(_wait_ready(url))
        _log(f"http_floor: {CONSTANT_PATH}, constant body, same server")
        http_rate, http_steps = _run_async(http_target(url, CONSTANT_PATH, queries, args))
        _log(f"points: {PATH}, {members:,} members, {args.unknown_share:.0%} unknown phones")
        points_rate, points_steps = _run_async(http_target(url, PATH, queries, args))
    finally:
        proc.terminate()
        proc.wait(15)
    _log(f"db_floor: points.lookup through a pool of {args.pool_max}, no HTTP")
    db_rate, db_steps = _run_async(db_target(dsn, args.program, stored, args))
    sizes = [int(x) for x in args.bursts.split(",") if x.strip()]
    burst: dict[str, Any] = {}
    if sizes:
        proc, url = start_server(dsn, args.program, api_key, store_id, store_key, args.burst_workers, args.pool_max)
        try:
            _run_async(_wait_ready(url))
            _log(f"bursts: {PATH}, {args.burst_workers} server process(es), LOYALTY_API_MAX_IN_FLIGHT "
                 f"{os.environ.get('LOYALTY_API_MAX_IN_FLIGHT', 1000)} per process")
            burst = _run_async(bursts(url, PATH, queries, sizes, args.burst_rounds))
        finally:
            proc.terminate()
            proc.wait(15)
    ratio = round(points_rate / http_rate, 3) if http_rate else None
    keys = {f"burst_{k}_p99_ms": v["p99_ms"] for k, v in burst.items()}
    keys.update({f"burst_{k}_failed": v["failed"] for k, v in burst.items()})
    return {
        **keys, "bursts": burst, "burst_server_workers": args.burst_workers,
        "rate_at_p99_50ms": points_rate, "http_floor_rate": http_rate, "db_floor_rate": db_rate,
        "ratio_to_http_floor": ratio,
        "ratio_to_db_floor": round(points_rate / db_rate, 3) if db_rate else None,
        "target": f"rate_at_p99_50ms >= {args.target_ratio:.0%} of http_floor_rate",
        "target_met": ratio is not None and ratio >= args.target_ratio,
        "target_p99_ms": args.target_p99_ms, "members": members, "unknown_share": args.unknown_share,
        "server_workers": args.workers, "pool_max": args.pool_max, "step_seconds": args.step_seconds,
        "steps": {"points": [asdict(s) for s in points_steps], "http_floor": [asdict(s) for s in http_steps],
                  "db_floor": [asdict(s) for s in db_steps]},
    }


def render_md(r: dict[str, Any]) -> str:
    lines = [
        f"# Content API benchmark ({r['started_at']})", "",
        f"commit `{r['commit']}`; {r['machine']['cores']} cores, Python {r['machine']['python']}, "
        f"PostgreSQL {r['machine']['postgres']}; `{r['command']}`", "",
        f"Open-loop load at fixed rates, latency from each request's due time; a rate holds when p99 <= "
        f"{r['target_p99_ms']:g} ms with no failed request. {r['members']:,} members, "
        f"{r['unknown_share']:.0%} unknown phones (404), {r['server_workers']} server process(es), "
        f"pool of {r['pool_max']} connections, {r['step_seconds']:g} s per step.", "",
        "| target | highest rate that holds |", "|---|---|",
        f"| points (`{PATH}`) | {r['rate_at_p99_50ms']:,}/s |",
        f"| HTTP floor (same server, constant body) | {r['http_floor_rate']:,}/s |",
        f"| database floor (same lookup through the pool, no HTTP) | {r['db_floor_rate']:,}/s |",
        f"| points / HTTP floor | {r['ratio_to_http_floor']} |",
        f"| points / database floor | {r['ratio_to_db_floor']} |", "",
        f"Target {r['target']}: {'met' if r['target_met'] else 'NOT met'}.", "",
    ]
    if r.get("bursts"):
        lines += [f"## Bursts (MoEngage's calling pattern: N requests at once on kept-alive connections, "
                  f"{r['burst_server_workers']} server processes)", "",
                  "| burst | requests | p50 ms | p99 ms | max ms | fast 503s | no answer in 5 s |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {b['size']:,} x {b['rounds']} | {b['requests']:,} | {b['p50_ms']} | {b['p99_ms']} | "
                  f"{b['max_ms']} | {b['shed_503']:,} | {b['failed']} |" for b in r["bursts"].values()]
        lines.append("")
    for name, steps in r["steps"].items():
        lines += [f"## {name}", "", "| rate/s | requests | p50 ms | p90 ms | p99 ms | max ms | errors | holds |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {s['rate']:,} | {s['requests']:,} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} | "
                  f"{s['max_ms']} | {s['errors']} | {'yes' if s['holds'] else 'no'} |" for s in steps]
        lines.append("")
    return "\n".join(lines)


def _dsn() -> str:
    from loyalty_moengage.db import loyalty_dsn

    return loyalty_dsn()


def _log(msg: str) -> None:
    print(f"[bench-api {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loyalty-moengage-dev bench-api", description=__doc__.splitlines()[0])
    p.add_argument("--dsn", help="loyalty database (default: the project's rule: connection, LOYALTY_DB_URL, embedded)")
    p.add_argument("--program", default="bench_api", help="program id to generate/use (default bench_api)")
    p.add_argument("--members", type=int, default=1_000_000, help="members the program must have (default 1,000,000)")
    p.add_argument("--days", type=int, default=30, help="days of history when generating (default 30)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--phones", type=int, default=50_000, help="distinct phones asked for (default 50,000)")
    p.add_argument("--start-rate", type=int, default=250, help="first rate of each ladder, requests/s (default 250)")
    p.add_argument("--max-rate", type=int, default=20_000, help="the ladders stop here (default 20,000)")
    p.add_argument("--step-seconds", type=float, default=5.0, help="seconds each rate is held (default 5)")
    p.add_argument("--max-connections", type=int, default=1000, help="client connections at most (default 1,000)")
    p.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    p.add_argument("--pool-max", type=int, default=16, help="DB connections per server process (default 16)")
    p.add_argument("--unknown-share", type=float, default=0.05, help="share of unknown phones (404) (default 0.05)")
    p.add_argument("--target-p99-ms", type=float, default=50.0)
    p.add_argument("--target-ratio", type=float, default=0.7, help="points rate / HTTP floor rate wanted (default 0.7)")
    p.add_argument("--bursts", default="1000,5000",
                   help="sizes of the bursts of concurrent lookups, MoEngage's calling pattern (default 1000,5000; "
                        "empty: none)")
    p.add_argument("--burst-rounds", type=int, default=3, help="bursts of each size (default 3)")
    p.add_argument("--burst-workers", type=int, default=2,
                   help="server processes for the bursts (default 2, as the README recommends for 2 cores)")
    p.add_argument("--out", default="bench/results", help="directory of api-latest.json/.md (default bench/results)")
    return p


def main(argv: list[str] | None = None) -> int:
    from loyalty_moengage_devtools.bench import _git_commit, _machine
    from loyalty_moengage.paths import project_root

    args = build_parser().parse_args(argv)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    commit = _git_commit()
    r = run(args)
    r.update({"started_at": started_at, "commit": commit, "commit_at_end": _git_commit(),
              "machine": _machine(args.dsn or _dsn()),
              "command": "python -m loyalty_moengage_devtools.bench_api " + " ".join(argv or sys.argv[1:])})
    out = Path(args.out)
    if not out.is_absolute():
        out = project_root() / out
    out.mkdir(parents=True, exist_ok=True)
    (out / "api-latest.json").write_text(json.dumps(r, indent=2) + "\n")
    md = render_md(r)
    (out / "api-latest.md").write_text(md)
    print(md)
    _log(f"points {r['rate_at_p99_50ms']:,}/s, HTTP floor {r['http_floor_rate']:,}/s, database floor "
         f"{r['db_floor_rate']:,}/s: {r['ratio_to_http_floor']} of the HTTP floor "
         f"({'target met' if r['target_met'] else 'target NOT met'})")
    return 0 if r["rate_at_p99_50ms"] else 1


if __name__ == "__main__":
    sys.exit(main())
