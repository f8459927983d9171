"""What every route needs from its app, kept in ``app.state.api``: settings, keys, programs, pool.

Routes read it with ``api_state(request)`` rather than from a closure, so a router works on any
app that holds an ``ApiState`` (a test mounts one router on an app of its own).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import anyio
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.requests import Request

from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.keys import CachedKeys, KeyRing, load_keys
from loyalty_moengage.api.programs import ProgramCache, ProgramInfo
from loyalty_moengage.api.settings import Settings

# Longest wait for a free database connection (and for the warm-up): well inside MoEngage's 5 s.
POOL_TIMEOUT_S = 3.0


class ApiState:
    """Per-app resources: settings, cached keys and programs, and the lazily opened pool."""

    def __init__(self, settings: Settings, key_loader=None) -> None:
        self.settings = settings
        self.keys = CachedKeys(settings.keys_ttl_s, key_loader or (lambda: load_keys(settings.programs)))
        self.programs = ProgramCache(ttl=60.0)
        self.pool: AsyncConnectionPool | None = None
        self._pool_lock: asyncio.Lock | None = None

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
                        "options": f"-c statement_timeout={int(s.statement_timeout_ms)}"})
                await pool.open(wait=False)
                self.pool = pool
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
        """``async with state.connection() as conn`` borrowing from the pool (autocommit; use
        ``conn.transaction()`` for writes; a connection left mid-transaction is rolled back)."""
        state = self

        @asynccontextmanager
        async def borrow():
            pool = await state.get_pool()
            async with pool.connection() as conn:
                yield conn

        return borrow()

    async def keyring(self) -> KeyRing:
        if self.keys.is_fresh():
            return self.keys.get()
        return await anyio.to_thread.run_sync(self.keys.get)

    async def program(self, program_id: str) -> ProgramInfo:
        info = await self.programs.get(self.connection, program_id)
        if info is None:
            raise ApiError(503, None, "this program is not in the loyalty database")
        return info

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None


def api_state(request: Request) -> ApiState:
    """The ``ApiState`` of the app serving ``request``."""
    return request.app.state.api
