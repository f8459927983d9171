"""The FastAPI app: ``GET /api/loyalty/points`` and ``POST /api/customers/add``.

Served under ``/loyalty-moengage`` by Airflow's API server (plugin) or at the root by
``python -m loyalty_moengage.api``. Airflow adds no auth to plugin apps, so auth is a
dependency of every route here; there is no docs/openapi page and no unauthenticated route.

The routes live in ``routes/`` and take their dependencies from ``app.state.api`` (an
``ApiState``, state.py); this module builds that state, the error handlers and the lifespan.
"""

from __future__ import annotations

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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Warm up, but never fail the host: inside Airflow's API server an exception here would
    take the whole server down. Whatever fails is retried on the first request."""
    state: ApiState = app.state.api
    try:
        await state.warm_up()
    except Exception as exc:
        log.warning("loyalty API warm-up failed (%s); retrying on first request", type(exc).__name__)
    try:
        yield
    finally:
        await state.close()


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


async def _db_down(request: Request, exc: Exception) -> Response:
    log.warning("loyalty database unavailable: %s", type(exc).__name__)
    return json_response(error_body(None, "loyalty database unavailable, retry later"), 503,
                         headers={"Retry-After": str(DB_DOWN_RETRY_AFTER)})


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
    app.add_exception_handler(Exception, _unexpected)


class TrailingSlash:
    """``/api/loyalty/points/`` is ``/api/loyalty/points``: the path is trimmed before routing."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
        await self.app(scope, receive, send)


# ---- the app ------------------------------------------------------------------------------

def create_app(settings: Settings | None = None, *, key_loader=None) -> FastAPI:
    """A new app; ``settings`` default to the environment (see settings.py)."""
    settings = settings or Settings.from_env()
    app = FastAPI(title="Loyalty API for MoEngage", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    # A trailing slash is served, not redirected: a redirect would repeat both keys in Location.
    app.router.redirect_slashes = False
    app.state.api = ApiState(settings, key_loader)
    add_error_handlers(app)
    app.include_router(points.router)
    app.include_router(customers.router)
    app.add_middleware(RedactingAccessLog, enabled=settings.access_log)
    app.add_middleware(TrailingSlash)
    app.add_middleware(Admission, limit=settings.max_in_flight)   # outermost: sheds before any work
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
