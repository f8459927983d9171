"""The FastAPI app: ``GET /api/loyalty/points`` and ``POST /api/customers/add``.

Served under ``/loyalty-moengage`` by Airflow's API server (plugin) or at the root by
``python -m loyalty_moengage.api``. Airflow adds no auth to plugin apps, so auth is a
dependency of every route here; there is no docs/openapi page and no unauthenticated route.

The routes live in ``routes/`` and take their dependencies from ``app.state.api`` (an
``ApiState``, state.py); this module builds that state, the error handlers and the lifespan.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from loyalty_moengage.api.access_log import RedactingAccessLog
from loyalty_moengage.api.admission import Admission
from loyalty_moengage.api.errors import ApiError, error_body
from loyalty_moengage.api.responses import json_response
from loyalty_moengage.api.routes import customers, points
from loyalty_moengage.api.settings import Settings
from loyalty_moengage.api.state import ApiState

log = logging.getLogger(__name__)

#: Log line format of the standalone server (``__main__`` and the workers' loyalty_moengage lines).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LOG_HANDLER = "loyalty_moengage_api"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Warm up, but never fail the host: inside Airflow's API server an exception here would
    take the whole server down. Whatever fails is retried on the first request."""
    state: ApiState = app.state.api
    try:
        await state.warm_up()
    except Exception as exc:
        log.warning("loyalty API warm-up failed (%s); retrying on first request", type(exc).__name__)
    if getattr(app.state, "tune_collector", False):
        tune_collector()
    try:
        yield
    finally:
        await state.close()


#: Young-generation threshold of the standalone server's collector (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """Tune the garbage collector of a standalone server worker (a process of its own; never
    inside Airflow's API server, whose heap is not ours to tune).

    * Freeze every object alive now (the imports: Airflow, FastAPI, pydantic, ~200k objects) out
      of the collector's reach (``gc.freeze``). Objects of requests in flight survive young
      collections and count toward a full one, so under load the collector ran a full
      collection every few thousand requests, and a full collection walks the whole startup
      heap: 150-200 ms with the server answering nothing (measured on 2 cores), the p99 of every
      burst it fell into. Frozen, a full collection walks only what was allocated since.
    * Collect the young generation after ``GC_YOUNG_THRESHOLD`` net allocations, not 700: a
      young collection walks every young object alive, most of them those of the requests in
      flight, so its cost hardly depends on the threshold while the number of collections does
      (a lookup allocates a few dozen objects; at 700, several collections per 100 requests).
      Requests make almost no reference cycles, so garbage waits no longer for it."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_YOUNG_THRESHOLD), gen1, gen2)
    log.debug("froze %d startup objects out of the garbage collector; thresholds %s",
              gc.get_freeze_count(), gc.get_threshold())


# ---- error handlers: every failure leaves as errors.py's one JSON shape -------------------

async def _api_error(request: Request, exc: ApiError) -> Response:
    return json_response(exc.body(), exc.status, exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    return json_response(error_body(None, str(exc.detail)), exc.status_code)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return json_response(error_body(field, first.get("msg", "invalid request")), 422)


#: Seconds a caller is told to wait when the loyalty database is down (a restart or failover).
DB_DOWN_RETRY_AFTER = 5
#: Retry-After of a 503 that did not set its own (see ``RetryAfterOn503``).
DEFAULT_RETRY_AFTER = str(DB_DOWN_RETRY_AFTER).encode()


async def _db_down(request: Request, exc: Exception) -> Response:
    log.warning("loyalty database unavailable: %s", type(exc).__name__)
    return json_response(error_body(None, "loyalty database unavailable, retry later"), 503,
                         headers={"Retry-After": str(DB_DOWN_RETRY_AFTER)})


async def _db_busy(request: Request, exc: Exception) -> Response:
    """A statement over LOYALTY_API_STATEMENT_TIMEOUT_MS (say, behind a member's row lock): the
    database is up, so say busy, not unavailable."""
    log.warning("loyalty database busy: a statement was cancelled by the statement timeout")
    return json_response(error_body(None, "loyalty database busy (statement timeout), retry shortly"), 503,
                         headers={"Retry-After": "1"})


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error in %s: %s", request.url.path, type(exc).__name__, exc_info=exc)
    return json_response(error_body(None, "internal error"), 500)


def add_error_handlers(app: FastAPI) -> None:
    """The handlers on ``app``; without them an ``ApiError`` would leave as a bare 500."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PoolTimeout, _db_down)
    app.add_exception_handler(psycopg.OperationalError, _db_down)
    app.add_exception_handler(psycopg.errors.QueryCanceled, _db_busy)
    app.add_exception_handler(Exception, _unexpected)


class RetryAfterOn503:
    """Every 503 leaves with ``Retry-After``: MoEngage and other callers read a 503 as "try
    again", and one without the header (a route's ``ApiError(503, ...)``) gets ``DEFAULT_RETRY_AFTER``.
    Pure ASGI: the wrapped ``send`` looks at one integer per response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    headers.append((b"retry-after", DEFAULT_RETRY_AFTER))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)


class TrailingSlash:
    """``/api/loyalty/points/`` is ``/api/loyalty/points``: the path is trimmed before routing, in
    the caller's scope (the outer access log then logs, and redacts, the request it served)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope["path"] = path.rstrip("/") or "/"
        await self.app(scope, receive, send)


# ---- the app ------------------------------------------------------------------------------

def apply_log_level(level: str | None, *, own_handler: bool = False) -> None:
    """Set the ``loyalty_moengage`` loggers to ``level`` (``LOYALTY_API_LOG_LEVEL``). Their own
    level, not ``logging.basicConfig``: that is a no-op once anything configured logging, and
    uvicorn's spawned workers never see the parent's configuration. ``own_handler`` (the
    standalone server) also writes them to stderr through a handler of their own: Airflow, once
    imported, puts an INFO handler on the root logger that would drop every DEBUG line."""
    if not level:
        return
    logger = logging.getLogger("loyalty_moengage")
    logger.setLevel(level.upper())
    if own_handler and not any(h.get_name() == LOG_HANDLER for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.set_name(LOG_HANDLER)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False


def create_app(settings: Settings | None = None, *, key_loader=None) -> FastAPI:
    """A new app; ``settings`` default to the environment (see settings.py)."""
    settings = settings or Settings.from_env()
    apply_log_level(settings.log_level)
    app = FastAPI(title="Loyalty API for MoEngage", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    # A trailing slash is served, not redirected: a redirect would repeat both keys in Location.
    app.router.redirect_slashes = False
    app.state.api = ApiState(settings, key_loader)
    add_error_handlers(app)
    app.include_router(points.router)
    app.include_router(customers.router)
    app.add_middleware(RetryAfterOn503)
    app.add_middleware(TrailingSlash)
    # sheds before any work; reads and writes have budgets of their own
    app.add_middleware(Admission, limit=settings.max_in_flight, write_limit=settings.max_in_flight_writes)
    # outermost: every request's keys and phones are redacted, a shed one's too
    app.add_middleware(RedactingAccessLog, enabled=settings.access_log)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory for the standalone server (access log on unless LOYALTY_API_ACCESS_LOG=0),
    run in each worker: ``--log-level`` reaches it as LOYALTY_API_LOG_LEVEL (see ``apply_log_level``)."""
    import os

    settings = Settings.from_env(access_log=os.environ.get("LOYALTY_API_ACCESS_LOG", "1") != "0")
    apply_log_level(settings.log_level, own_handler=True)
    app = create_app(settings)
    # A process of its own: its collector is ours to tune (never inside Airflow's API server).
    app.state.tune_collector = True
    return app


_default_app: FastAPI | None = None


def get_app() -> FastAPI:
    """The process-wide app the Airflow plugin mounts (created on first use)."""
    global _default_app
    if _default_app is None:
        _default_app = create_app()
    return _default_app
