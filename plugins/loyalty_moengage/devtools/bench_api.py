"""Benchmark of the points lookup as MoEngage drives it: many concurrent GETs over loopback.

    python -m loyalty_moengage.devtools.bench_api                       # 1,000,000 members, 500 concurrent
    python -m loyalty_moengage.devtools.bench_api --members 20000 --requests 5000

It makes sure the program exists with enough members (``loyalty_moengage.devtools.generator.generate``,
program ``bench_api`` by default, so a demo program is left alone), makes throwaway keys,
starts ``python -m loyalty_moengage.api`` in its own process (so client and server do not
share a GIL), samples real phones (written in mixed national/international styles, plus a
share of unknown numbers that must give 404), warms up, then keeps ``--concurrency`` requests
in flight until ``--requests`` are done. It reports throughput and client-side p50/p90/p99
(which include queueing when the machine is saturated) next to the server's own time per
request (``Server-Timing``). Exit status 1 when any request failed (not 200/404).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

PATH = "/api/loyalty/points"


@dataclass
class Result:
    members: int
    requests: int
    concurrency: int
    server_workers: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_p50_ms: float
    server_p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    target_p99_ms: float = 50.0
    target_met: bool = False


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_program(dsn: str, program_id: str, members: int, days: int, seed: int) -> int:
    """Members in the program, generating it first when it has fewer than ``members``."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        have = conn.execute("SELECT count(*) FROM loyalty.members WHERE program_id = %s", (program_id,)).fetchone()[0]
    if have >= members:
        return have
    from loyalty_moengage.devtools.generator import generate

    print(f"generating program {program_id!r} with {members:,} members ({days} days)...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    generate(dsn, program_id=program_id, members=members, days=days, seed=seed)
    print(f"generated in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM loyalty.members WHERE program_id = %s", (program_id,)).fetchone()[0]


def sample_phones(dsn: str, program_id: str, n: int, unknown_share: float, rng: random.Random) -> list[str]:
    """Real phones in the styles people write them, plus unknown ones (expected 404)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT phone FROM loyalty.members WHERE program_id = %s AND phone IS NOT NULL "
            "ORDER BY md5(member_id::text || %s) LIMIT %s", (program_id, str(rng.random()), n)).fetchall()
    styles = [
        lambda p: p,                                            # +919876543210
        lambda p: "0" + p[3:] if p.startswith("+91") else p,    # 09876543210
        lambda p: p[3:] if p.startswith("+91") else p,          # 9876543210
        lambda p: f"{p[:3]} {p[3:8]} {p[8:]}",                  # +91 98765 43210
    ]
    phones = [rng.choice(styles)(r[0]) for r in rows]
    unknown = int(len(phones) * unknown_share)
    phones[:unknown] = [f"+9155{rng.randrange(10**7, 10**8)}" for _ in range(unknown)]
    rng.shuffle(phones)
    return phones


def start_server(dsn: str, program_id: str, api_key: str, store_id: str, store_key: str, workers: int,
                 pool_max: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {
        **os.environ,
        "LOYALTY_API_DSN": dsn,
        "LOYALTY_API_PROGRAMS": program_id,
        f"AIRFLOW_CONN_LOYALTY_API_{program_id.upper()}": json.dumps(
            {"conn_type": "generic", "password": api_key, "extra": {"store_keys": {store_id: store_key}}}),
        "LOYALTY_API_POOL_MIN": str(min(4, pool_max)),
        "LOYALTY_API_POOL_MAX": str(pool_max),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "loyalty_moengage.api", "--port", str(port), "--no-access-log",
         "--log-level", "warning", "--workers", str(workers)], env=env)
    return proc, f"http://127.0.0.1:{port}"


async def _wait_ready(url: str, params: dict[str, str], timeout: float = 60) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url + PATH, params=params) as r:
                    if r.status in (200, 404):
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server at {url} not ready within {timeout}s")
            await asyncio.sleep(0.2)


async def drive(url: str, api_key: str, store_key: str, phones: list[str], requests: int,
                concurrency: int) -> tuple[float, list[float], list[float], dict[str, int], int]:
    """Keep ``concurrency`` lookups in flight until ``requests`` are done."""
    import aiohttp

    latencies: list[float] = []
    server_ms: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=5)  # MoEngage waits at most 5 s

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in counter:
            params = {"api_key": api_key, "store_key": store_key, "customer_phone": phones[i % len(phones)]}
            t0 = time.perf_counter()
            try:
                async with session.get(url + PATH, params=params, headers={"Accept": "application/json"}) as r:
                    await r.read()
                    status = r.status
                    timing = r.headers.get("server-timing", "")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
                statuses["transport_error"] = statuses.get("transport_error", 0) + 1
                continue
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status not in (200, 404):
                errors += 1
            if timing.startswith("app;dur="):
                server_ms.append(float(timing[8:]))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    return seconds, latencies, server_ms, statuses, errors


def run(args: argparse.Namespace) -> Result:
    rng = random.Random(args.seed)
    if args.url:
        api_key, store_key, url, proc = args.api_key, args.store_key, args.url.rstrip("/"), None
        dsn = args.dsn or _dsn()
        members = ensure_program(dsn, args.program, 0, args.days, args.seed)
    else:
        from loyalty_moengage.db import apply_schema

        dsn = args.dsn or _dsn()
        apply_schema(dsn)
        members = ensure_program(dsn, args.program, args.members, args.days, args.seed)
        import psycopg

        with psycopg.connect(dsn) as conn:
            store_id = conn.execute("SELECT min(store_id) FROM loyalty.stores WHERE program_id = %s",
                                    (args.program,)).fetchone()[0]
        api_key, store_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        proc, url = start_server(dsn, args.program, api_key, store_id, store_key, args.workers, args.pool_max)
    phones = sample_phones(dsn, args.program, min(args.requests, 50_000), args.unknown_share, rng)
    try:
        probe = {"api_key": api_key, "store_key": store_key, "customer_phone": phones[0]}
        asyncio.run(_wait_ready(url, probe))
        asyncio.run(drive(url, api_key, store_key, phones, min(1000, args.requests), args.concurrency))  # warm-up
        seconds, lat, srv, statuses, errors = asyncio.run(
            drive(url, api_key, store_key, phones, args.requests, args.concurrency))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
    p99 = _pct(lat, 0.99)
    return Result(
        members=members, requests=args.requests, concurrency=args.concurrency, server_workers=args.workers,
        seconds=round(seconds, 2), throughput_rps=round(args.requests / seconds, 1),
        p50_ms=_pct(lat, 0.50), p90_ms=_pct(lat, 0.90), p99_ms=p99, max_ms=round(max(lat, default=0), 2),
        server_p50_ms=_pct(srv, 0.50), server_p99_ms=_pct(srv, 0.99), statuses=statuses, errors=errors,
        target_p99_ms=args.target_p99_ms, target_met=errors == 0 and p99 < args.target_p99_ms,
    )


def _dsn() -> str:
    from loyalty_moengage.db import loyalty_dsn

    return loyalty_dsn()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loyalty_moengage.devtools.bench_api", description=__doc__.splitlines()[0])
    p.add_argument("--dsn", help="loyalty database (default: the project's rule: connection, LOYALTY_DB_URL, embedded)")
    p.add_argument("--program", default="bench_api", help="program id to generate/use (default bench_api)")
    p.add_argument("--members", type=int, default=1_000_000, help="members the program must have (default 1,000,000)")
    p.add_argument("--days", type=int, default=30, help="days of history when generating (default 30)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--requests", type=int, default=20_000, help="timed lookups (default 20,000)")
    p.add_argument("--concurrency", type=int, default=500, help="lookups in flight (default 500)")
    p.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    p.add_argument("--pool-max", type=int, default=16, help="DB connections per server process (default 16)")
    p.add_argument("--unknown-share", type=float, default=0.05, help="share of unknown phones (404) (default 0.05)")
    p.add_argument("--target-p99-ms", type=float, default=50.0)
    p.add_argument("--url", help="bench a running server instead (needs --api-key and --store-key)")
    p.add_argument("--api-key")
    p.add_argument("--store-key")
    p.add_argument("--json", dest="json_path", help="also write the result as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.url and not (args.api_key and args.store_key):
        build_parser().error("--url needs --api-key and --store-key")
    result = run(args)
    text = json.dumps(asdict(result), indent=2)
    print(text)
    if args.json_path:
        with open(args.json_path, "w") as f:
            f.write(text + "\n")
    print(f"{result.requests:,} lookups, {result.concurrency} concurrent, {result.members:,} members: "
          f"{result.throughput_rps:,.0f} req/s, p50 {result.p50_ms} ms, p99 {result.p99_ms} ms "
          f"(server p99 {result.server_p99_ms} ms), errors {result.errors}; "
          f"target p99 < {result.target_p99_ms:g} ms {'met' if result.target_met else 'NOT met'}", file=sys.stderr)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
