"""``POST /api/customers/add``: the MoEngage connector's webhook, which enrolls or updates
customers and credits their accruals, once per request (see ../idempotency.py)."""

from __future__ import annotations

import random

import orjson
from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from loyalty_moengage.api import idempotency
from loyalty_moengage.api.auth import program_from_api_key
from loyalty_moengage.api.enroll import enroll
from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.state import api_state
from loyalty_moengage.api.validation import parse_customers

ADD_CUSTOMER_PATH = "/api/customers/add"

router = APIRouter()


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


@router.post(ADD_CUSTOMER_PATH)
async def add_customers(request: Request, program_id: str = Depends(program_from_api_key)) -> Response:
    """Enroll/update customers and credit accruals; a replay answers what the first call did."""
    state = api_state(request)
    settings = state.settings
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
