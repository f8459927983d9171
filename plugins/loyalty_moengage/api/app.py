"""The FastAPI app: ``GET /api/loyalty/points`` and ``POST /api/customers/add``.

Served under ``/loyalty-moengage`` by Airflow's API server (plugin) or at the root by
``python -m loyalty_moengage.api``. Airflow adds no auth to plugin apps, so auth is a
dependency of every route here; there is no docs/openapi page and no unauthenticated route.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from loyalty_moengage.api import idempotency, points
from loyalty_moengage.api.access_log import RedactingAccessLog
from loyalty_moengage.api.enroll import enroll
from loyalty_moengage.api.errors import ApiError, error_body
from loyalty_moengage.api.keys import CachedKeys, KeyRing, load_keys
from loyalty_moengage.api.phone import PhoneError, normalize_phone
from loyalty_moengage.api.programs import ProgramCache, ProgramInfo
from loyalty_moengage.api.settings import Settings
from loyalty_moengage.api.validation import parse_customers

log = logging.getLogger(__name__)

POINTS_PATH = "/api/loyalty/points"
ADD_CUSTOMER_PATH = "/api/customers/add"
_MAX_KEY_LENGTH = 256
_CUSTOMER_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@/+-")
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


def _state(request: Request) -> ApiState:
    return request.app.state.api


# ---- auth dependencies -------------------------------------------------------------------

# Dependencies read the query string themselves (``request.query_params``) rather than declaring
# ``Query`` parameters: FastAPI's parameter machinery costs more per request than the lookup
# itself, and MoEngage calls in bursts of about a thousand.

async def program_from_api_key(request: Request) -> str:
    """The program the api_key belongs to; 401 otherwise, before any database work."""
    api_key = request.query_params.get("api_key")
    if not api_key or len(api_key) > _MAX_KEY_LENGTH:
        raise ApiError(401, "api_key", "missing or invalid API key")
    program_id = (await _state(request).keyring()).program_for(api_key)
    if program_id is None:
        raise ApiError(401, "api_key", "missing or invalid API key")
    return program_id


async def store_from_store_key(request: Request, program_id: str = Depends(program_from_api_key)) -> tuple[str, str]:
    """(program_id, store_id) of a valid api_key + store (outlet) key pair; 401 otherwise."""
    store_key = request.query_params.get("store_key")
    if not store_key or len(store_key) > _MAX_KEY_LENGTH:
        raise ApiError(401, "store_key", "missing or invalid store key")
    store_id = (await _state(request).keyring()).store_for(program_id, store_key)
    if store_id is None:
        raise ApiError(401, "store_key", "missing or invalid store key")
    return program_id, store_id


# ---- helpers -----------------------------------------------------------------------------

def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    base = {"Cache-Control": "no-store"}
    if headers:
        base.update(headers)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=base)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to exceed ``limit`` (header or streamed size)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise ApiError(400, "Content-Length", "is not a number") from None
        if too_big:
            raise ApiError(413, "body", f"is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body", f"is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON: a form or text post is a misconfigured connector,
    and guessing at it could credit points from a body nobody meant as JSON."""
    declared = request.headers.get("content-type")
    media_type = (declared or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        got = repr(declared) if declared else "no Content-Type"
        raise ApiError(415, "Content-Type", f"must be application/json (got {got})")


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


# ---- the app -----------------------------------------------------------------------------

def create_app(settings: Settings | None = None, *, key_loader=None) -> FastAPI:
    """A new app; ``settings`` default to the environment (see settings.py)."""
    settings = settings or Settings.from_env()
    state = ApiState(settings, key_loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Warm up, but never fail the host: inside Airflow's API server an exception here would
        # take the whole server down. Whatever fails is retried on the first request.
        try:
            await state.warm_up()
        except Exception as exc:
            log.warning("loyalty API warm-up failed (%s); retrying on first request", type(exc).__name__)
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(title="Loyalty API for MoEngage", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return json_response(exc.body(), exc.status, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return json_response(error_body(None, str(exc.detail)), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return json_response(error_body(field, first.get("msg", "invalid request")), 422)

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _db_down(request: Request, exc: Exception) -> Response:
        log.warning("loyalty database unavailable: %s", type(exc).__name__)
        return json_response(error_body(None, "loyalty database unavailable, retry later"), 503)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error in %s: %s", request.url.path, type(exc).__name__, exc_info=exc)
        return json_response(error_body(None, "internal error"), 500)

    async def get_points(request: Request) -> Response:
        """Live points of one member, flat JSON for ``ContentApi.Name().points_available``."""
        program_id, _store_id = await store_from_store_key(request, await program_from_api_key(request))
        customer_phone = request.query_params.get("customer_phone")
        customer_id = request.query_params.get("customer_id")
        if _blank(customer_phone) and _blank(customer_id):
            raise ApiError(422, "customer_phone", "customer_phone or customer_id is required")
        if not _blank(customer_phone) and not _blank(customer_id):
            raise ApiError(422, "customer_id", "give customer_phone or customer_id, not both")
        program = await state.program(program_id)
        phone = reference = None
        field = "customer_phone"
        if not _blank(customer_phone):
            try:
                phone = normalize_phone(customer_phone, program.default_country)
            except PhoneError as exc:
                raise ApiError(422, "customer_phone", str(exc)) from None
        else:
            field = "customer_id"
            reference = customer_id.strip()
            if len(reference) > 128 or not set(reference) <= _CUSTOMER_ID_CHARS:
                raise ApiError(422, "customer_id", "may hold letters, digits and _ . : @ / + - (128 at most)")
        async with state.connection() as conn:
            result = await points.lookup(conn, program_id, phone=phone, customer_id=reference)
        if result is None:
            raise ApiError(404, field, "no member with this identifier in the program")
        return json_response(result)

    # A plain Starlette route: FastAPI's parameter and dependency machinery cost more per call
    # than the lookup (bench/results/api-latest.md), and this route takes MoEngage's bursts.
    app.router.add_route(POINTS_PATH, get_points, methods=["GET"], include_in_schema=False)

    @app.post(ADD_CUSTOMER_PATH)
    async def add_customers(request: Request, program_id: str = Depends(program_from_api_key)) -> Response:
        """Enroll/update customers and credit accruals, once per request (see idempotency.py)."""
        require_json(request)
        idempotency_key = request.headers.get("idempotency-key")
        raw = await read_body(request, settings.max_body_bytes)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, "body", "is not valid JSON") from None
        customers = parse_customers(body, max_amount=settings.max_amount,
                                    max_customers=settings.max_customers)
        rk = idempotency.request_key(body, idempotency_key)
        program = await state.program(program_id)
        async with state.connection() as conn:
            response, replayed = await enroll(conn, program, customers, rk, ref_prefix=settings.ref_prefix,
                                              idempotency_hours=settings.idempotency_hours)
            if not replayed and random.random() < 0.01:
                await idempotency.prune(conn, settings.idempotency_hours)
        return Response(response, 200, media_type="application/json", headers={
            "Cache-Control": "no-store", "Idempotent-Replayed": "true" if replayed else "false"})

    app.add_middleware(RedactingAccessLog, enabled=settings.access_log)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory for the standalone server (access log on unless LOYALTY_API_ACCESS_LOG=0)."""
    import os

    return create_app(Settings.from_env(access_log=os.environ.get("LOYALTY_API_ACCESS_LOG", "1") != "0"))


_default_app: FastAPI | None = None


def get_app() -> FastAPI:
    """The process-wide app the Airflow plugin mounts (created on first use)."""
    global _default_app
    if _default_app is None:
        _default_app = create_app()
    return _default_app
