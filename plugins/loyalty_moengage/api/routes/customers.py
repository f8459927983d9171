"""``POST /api/customers/add``: the MoEngage connector's webhook, which enrolls or updates
customers and credits their accruals, once per request (see ../idempotency.py)."""

from __future__ import annotations

import random

import orjson
from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from loyalty_moengage.api import idempotency
from loyalty_moengage.api.auth import write_access
from loyalty_moengage.api.body import read_body, require_json
from loyalty_moengage.api.enroll import enroll
from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.policy import program_policy
from loyalty_moengage.api.state import api_state
from loyalty_moengage.api.validation import parse_customers

ADD_CUSTOMER_PATH = "/api/customers/add"

router = APIRouter()


_TRUE = {"1", "true", "yes"}


def is_test_call(request: Request) -> bool:
    """MoEngage's Test button, as the campaign marks it: header ``X-Loyalty-Test: true`` or ``?test=true``."""
    flag = request.headers.get("x-loyalty-test") or request.query_params.get("test") or ""
    return flag.strip().lower() in _TRUE


@router.post(ADD_CUSTOMER_PATH)
async def add_customers(request: Request, program_id: str = Depends(write_access)) -> Response:
    """Enroll/update customers and credit purchases; a replay answers what the first call did."""
    state = api_state(request)
    settings = state.settings
    require_json(request)
    test = is_test_call(request)
    rk_header = request.headers.get("idempotency-key")
    raw = await read_body(request, settings.max_body_bytes)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "body", "is not valid JSON") from None
    customers = parse_customers(body, max_amount=settings.max_amount,
                                max_customers=settings.max_customers)
    header_window_s = settings.idempotency_hours * 3600
    rk = idempotency.request_key(body, rk_header, header_window_s=header_window_s,
                                 body_window_s=settings.retry_window_s)
    program = await state.program(program_id)
    policy = await program_policy(request, program_id)

    async def work(conn) -> tuple[bytes, bool]:
        # Run again on a fresh connection if the database drops this one: safe, since a first
        # run that committed is found by its idempotency claim and replayed.
        answer = await enroll(conn, program, policy, customers, rk, ref_prefix=settings.ref_prefix, test=test)
        if not answer[1] and not test and random.random() < 0.01:
            await idempotency.prune(conn, max(header_window_s, settings.retry_window_s))
        return answer

    response, replayed = await state.run(work)
    return Response(response, 200, media_type="application/json", headers={
        "Cache-Control": "no-store", "Idempotent-Replayed": "true" if replayed else "false",
        "Loyalty-Test": "true" if test else "false"})
