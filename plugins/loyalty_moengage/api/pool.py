"""A small asyncio connection pool for psycopg 3.

psycopg_pool is not installed in this project's pinned environment; the API needs only
"reuse up to N open connections, wait for one when all are busy, drop broken ones", which
this does in a few lines. Connections open lazily up to ``max_size``; ``min_size`` are opened
at startup so the first burst does not pay for connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

log = logging.getLogger(__name__)


class PoolTimeout(Exception):
    """No connection became free in time."""


class AsyncPool:
    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 2,
        max_size: int = 16,
        timeout: float = 3.0,
        statement_timeout_ms: int = 4000,
        application_name: str = "loyalty_moengage_api",
    ) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self._options = f"-c statement_timeout={int(statement_timeout_ms)}"
        self._application_name = application_name
        self._idle: asyncio.LifoQueue[AsyncConnection] = asyncio.LifoQueue()
        self._size = 0
        self._closed = False
        self._slots = asyncio.Semaphore(max_size)

    async def _connect(self) -> AsyncConnection:
        return await AsyncConnection.connect(
            self.dsn, autocommit=True, application_name=self._application_name, options=self._options
        )

    async def open(self) -> None:
        """Open ``min_size`` connections now (fails fast when the database is unreachable)."""
        while self._size < self.min_size:
            self._size += 1
            try:
                self._idle.put_nowait(await self._connect())
            except BaseException:
                self._size -= 1
                raise

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """Borrow a connection in autocommit mode; use ``conn.transaction()`` for writes."""
        if self._closed:
            raise PoolTimeout("pool is closed")
        if self._slots.locked():  # all busy: wait, bounded (wait_for costs a task, so only here)
            try:
                await asyncio.wait_for(self._slots.acquire(), self.timeout)
            except TimeoutError as exc:
                raise PoolTimeout(f"no database connection free within {self.timeout}s") from exc
        else:
            await self._slots.acquire()
        conn: AsyncConnection | None = None
        try:
            try:
                conn = self._idle.get_nowait()
            except asyncio.QueueEmpty:
                self._size += 1
                try:
                    conn = await self._connect()
                except BaseException:
                    self._size -= 1
                    raise
            yield conn
        finally:
            if conn is not None:
                self._give_back(conn)
            self._slots.release()

    def _give_back(self, conn: AsyncConnection) -> None:
        healthy = (
            not self._closed
            and not conn.closed
            and conn.info.transaction_status == TransactionStatus.IDLE
        )
        if healthy:
            self._idle.put_nowait(conn)
            return
        self._size -= 1
        if not conn.closed:
            # A connection left mid-transaction (cancelled request) or broken: never reuse it.
            asyncio.get_running_loop().create_task(_close_quietly(conn))

    async def close(self) -> None:
        self._closed = True
        while True:
            try:
                conn = self._idle.get_nowait()
            except asyncio.QueueEmpty:
                break
            self._size -= 1
            await _close_quietly(conn)


async def _close_quietly(conn: AsyncConnection) -> None:
    with contextlib.suppress(psycopg.Error, OSError):
        await conn.close()
