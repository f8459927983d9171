"""Reading a connector request's body: declared JSON, bounded in size and in time."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.settings import Settings


def body_timeout(request: Request) -> float:
    """The app's ``body_timeout_s`` (``LOYALTY_API_BODY_TIMEOUT``), the default on an app without
    an ``ApiState``."""
    state = getattr(getattr(request.scope.get("app"), "state", None), "api", None)
    settings = getattr(state, "settings", None)
    return settings.body_timeout_s if settings is not None else Settings.model_fields["body_timeout_s"].default


async def read_body(request: Request, limit: int, *, timeout: float | None = None) -> bytes:
    """The body, or 413 as soon as it is known to exceed ``limit`` (header or streamed size),
    or 408 when all of it has not arrived within ``timeout`` seconds (default: the app's
    ``body_timeout_s``): a client that stalls mid-upload would otherwise hold its admission slot
    and its memory for as long as it likes."""
    if timeout is None:
        timeout = body_timeout(request)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise ApiError(400, "Content-Length", "is not a number") from None
        if too_big:
            raise ApiError(413, "body", f"is larger than {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "body", f"is larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        # Connection: close, since the rest of the body may still arrive and is not a request.
        raise ApiError(408, "body", f"did not arrive within {timeout:g} s ({size} bytes received)",
                       headers={"Connection": "close"}) from None
    return b"".join(chunks)


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON: a form or text post is a misconfigured connector,
    and guessing at it could credit points from a body nobody meant as JSON."""
    declared = request.headers.get("content-type")
    media_type = (declared or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        got = repr(declared) if declared else "no Content-Type"
        raise ApiError(415, "Content-Type", f"must be application/json (got {got})")
