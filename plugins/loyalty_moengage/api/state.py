"""What every route needs from its app, kept in ``app.state.api``: settings, keys, programs, pool.

Routes read it with ``api_state(request)`` rather than from a closure, so a router works on any
app that holds an ``ApiState`` (a test mounts one router on an app of its own).

Dropped connections: a Postgres restart, a failover or a proxy's idle timeout closes the pooled
connections while they sit idle, and psycopg_pool hands them out as they are. So every borrow
first polls the connection's socket (no round trip: a closed idle connection is readable) and
drops a dead one for the next; and ``run`` does a request's database work once more on a fresh
connection when the server closes it under the work (``ConnectionLost``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import psycopg
from psycopg import AsyncConnection
from psycopg.pq import ConnStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.requests import Request

from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.keys import CachedKeys, KeyRing, load_keys
from loyalty_moengage.api.programs import ProgramCache, ProgramInfo
from loyalty_moengage.api.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Longest wait for a free database connection (and for the warm-up): well inside MoEngage's 5 s.
POOL_TIMEOUT_S = 3.0
#: SQLSTATEs that say the server is ending the session: admin_shutdown (a terminated backend, a
#: fast shutdown), crash_shutdown, cannot_connect_now; class 08 is "connection exception".
_SESSION_ENDING = ("57P01", "57P02", "57P03")


#: Tries of one request's database work when its connection is lost under it.
RUN_ATTEMPTS = 3


class ConnectionLost(psycopg.OperationalError):
    """The server closed a borrowed connection under a request. Work that failed this way did
    not happen (an error before COMMIT rolls the transaction back), except when the connection
    died at COMMIT itself, where the outcome is unknown; ``ApiState.run`` runs it once more."""


def closed_by_server(conn: AsyncConnection) -> bool:
    """True when the server has closed (or is closing) this idle connection. An idle connection
    of ours (no LISTEN) has nothing to read, so a readable socket is the server's goodbye: the
    FATAL message of a terminated backend, then EOF. Anything else costs at most a reconnect.
    One poll(2), no round trip: cheap enough for every borrow."""
    pgconn = conn.pgconn
    if pgconn.status != ConnStatus.OK:
        return True
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


async def _answers(conn: AsyncConnection) -> bool:
    """One round trip; False (and the connection closed) when it fails."""
    try:
        await conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        await conn.close()
        return False


def lost(conn: AsyncConnection, exc: psycopg.OperationalError) -> bool:
    """Whether ``exc`` means the connection is gone (rather than, say, a statement timeout)."""
    state = exc.sqlstate or ""
    return conn.closed or conn.broken or state.startswith("08") or state in _SESSION_ENDING


class ApiState:
    """Per-app resources: settings, cached keys and programs, and the lazily opened pool."""

    def __init__(self, settings: Settings, key_loader=None) -> None:
        self.settings = settings
        self.keys = CachedKeys(settings.keys_ttl_s, key_loader or (lambda: load_keys(settings.programs)))
        self.programs = ProgramCache(ttl=60.0)
        self.pool: AsyncConnectionPool | None = None
        self._pool_lock: asyncio.Lock | None = None
        self.dropped = 0    # dead idle connections found at borrow
        self.retried = 0    # works run again after losing their connection
        self._logged_at = 0.0

    async def get_pool(self) -> AsyncConnectionPool:
        """The pool, opened on first use without waiting: while the database is down it keeps
        reconnecting in the background and each borrow fails after ``POOL_TIMEOUT_S`` (503)."""
        if self.pool is not None:
            return self.pool
        if self._pool_lock is None:
            self._pool_lock = asyncio.Lock()
        async with self._pool_lock:
            if self.pool is None:
                s = self.settings
                dsn = await anyio.to_thread.run_sync(s.resolve_dsn)
                pool = AsyncConnectionPool(
                    dsn, min_size=s.pool_min, max_size=s.pool_max, timeout=POOL_TIMEOUT_S, open=False,
                    name="loyalty_api", kwargs={
                        "autocommit": True, "application_name": "loyalty_moengage_api",
                        # A session whose client vanished mid-transaction frees its row locks
                        # (a member's, an idempotency claim) in 10 s, not at the next keepalive.
                        "options": f"-c statement_timeout={int(s.statement_timeout_ms)} "
                                   "-c idle_in_transaction_session_timeout=10000",
                        # A peer that vanished without closing (a failover, a middlebox) shows
                        # as a readable, failed socket within ~90 s instead of two hours.
                        "keepalives": 1, "keepalives_idle": 60, "keepalives_interval": 10,
                        "keepalives_count": 3})
                await pool.open(wait=False)
                self.pool = pool
                log.debug("loyalty database pool opened (min %d, max %d, statement timeout %d ms) in process %d",
                          s.pool_min, s.pool_max, s.statement_timeout_ms, os.getpid())
        return self.pool

    async def warm_up(self) -> None:
        """Keys and ``pool_min`` connections now; a pool that cannot fill in time is closed and
        opened again by the first request."""
        await self.keyring()
        pool = await self.get_pool()
        try:
            await pool.wait(timeout=POOL_TIMEOUT_S)
        except PoolTimeout:
            self.pool = None  # wait() closed it
            raise

    def connection(self):
        """``async with state.connection() as conn`` borrowing a live connection from the pool
        (autocommit; use ``conn.transaction()`` for writes; a connection left mid-transaction is
        rolled back). Raises ``ConnectionLost`` when the server closes it under the block."""
        return self._borrow()

    @asynccontextmanager
    async def _borrow(self, *, verify: bool = False) -> AsyncIterator[AsyncConnection]:
        pool = await self.get_pool()
        conn = await self._live_connection(pool, verify=verify)
        try:
            async with conn:
                yield conn
        except psycopg.OperationalError as exc:
            if isinstance(exc, ConnectionLost) or not lost(conn, exc):
                raise
            raise ConnectionLost(f"connection lost: {exc}") from exc
        finally:
            await pool.putconn(conn)

    async def _live_connection(self, pool: AsyncConnectionPool, *, verify: bool = False) -> AsyncConnection:
        """A pooled connection the server has not closed; a dead one goes back to the pool closed
        (which replaces it) and the next is tried at once, without the pool's check backoff.
        ``verify`` adds a round trip: after a loss, the other connections the same restart killed
        may not show their goodbye on the socket yet."""
        deadline = time.monotonic() + POOL_TIMEOUT_S
        while True:
            conn = await pool.getconn(timeout=max(deadline - time.monotonic(), 0.0))
            if not closed_by_server(conn) and (not verify or await _answers(conn)):
                return conn
            self.dropped += 1
            self._note("dropped a pooled connection the database had closed")
            await conn.close()
            await pool.putconn(conn)

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``await work(conn)`` on a pooled connection and, if the server closes that connection
        under it, once more on a fresh one, so a database restart fails no request.

        ``work`` must be safe to run twice. A read is. A write must be one transaction: an
        error before COMMIT rolled it back; an error at COMMIT leaves it unknown, which is safe
        only where the write is idempotent (the webhook's idempotency key replays a committed
        first run). Any other error (statement timeout, ApiError) is not retried."""
        for attempt in range(RUN_ATTEMPTS):
            try:
                async with self._borrow(verify=attempt > 0) as conn:
                    return await work(conn)
            except ConnectionLost:
                if attempt == RUN_ATTEMPTS - 1:
                    raise
                self.retried += 1
                self._note("database connection lost under a request; running it again")
        raise AssertionError("unreachable")

    def _note(self, what: str) -> None:
        """One warning per 10 s at most: a restart drops every connection at once."""
        now = time.monotonic()
        if now - self._logged_at > 10:
            self._logged_at = now
            log.warning("%s (so far: %d dropped at borrow, %d requests retried)", what, self.dropped, self.retried)

    async def keyring(self) -> KeyRing:
        if self.keys.is_fresh():
            return self.keys.get()
        return await anyio.to_thread.run_sync(self.keys.get)

    async def program(self, program_id: str) -> ProgramInfo:
        """The program's settings; 403 when its keys exist but its row does not: a configuration
        error that no retry mends, so not a 503 for MoEngage to retry for ever."""
        try:
            info = await self.programs.get(self.connection, program_id)
        except ConnectionLost:
            self.retried += 1
            info = await self.programs.get(self.connection, program_id)
        if info is None:
            raise ApiError(403, None, f"program {program_id} has API keys but no row in loyalty.programs; "
                                      "add the program to the loyalty database")
        return info

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None


def api_state(request: Request) -> ApiState:
    """The ``ApiState`` of the app serving ``request``."""
    return request.app.state.api
