"""``GET /api/loyalty/points``: one member's live points, flat JSON for MoEngage Content APIs
(``ContentApi.Name().points_available``).

A plain Starlette route: FastAPI's parameter and dependency machinery cost more per call than
the lookup (bench/results/api-latest.md), and this route takes MoEngage's bursts.

For someone who is not a member (or whose phone cannot be read) the answer is a 404, unless the
program's ``api.non_member_answer`` is ``default``: then a 200 with ``"member": false`` and points
0, because MoEngage drops a user's message when its Content API call fails.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loyalty_moengage.api.access_log import query_pairs
from loyalty_moengage.api.auth import read_access_of
from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.phone import PhoneError, phone_candidates, readings_to_match
from loyalty_moengage.api.points import lookup, non_member
from loyalty_moengage.api.policy import program_policy
from loyalty_moengage.api.programs import ProgramInfo
from loyalty_moengage.api.responses import json_response
from loyalty_moengage.api.state import api_state

POINTS_PATH = "/api/loyalty/points"


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


def customer_id_problem(reference: str) -> str | None:
    """Why ``reference`` cannot be a MoEngage customer_id (any printable text, 128 at most), or None."""
    if len(reference) > 128:
        return "is longer than 128 characters"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in reference):
        return "contains control characters"
    if "{{" in reference or "}}" in reference:
        return "is a template MoEngage did not render (check the attribute name in the Content API URL)"
    return None


async def _not_found(request: Request, program: ProgramInfo, field: str, message: str, status: int) -> Response:
    """The program's answer for a non-member: the error, or its default body."""
    policy = await program_policy(request, program.program_id)
    if policy.non_member_answer == "default":
        today = dt.datetime.now(ZoneInfo(program.time_zone)).date().isoformat()
        return json_response(non_member(today))
    raise ApiError(status, field, message)


async def get_points(request: Request) -> Response:
    """Live points of one member, found by customer_phone or customer_id (exactly one)."""
    state = api_state(request)
    program_id, _store_id = await read_access_of(state, request)
    query = query_pairs(request.scope)[1]   # parsed once, with the keys (access_log.py)
    customer_phone = query.get("customer_phone")
    customer_id = query.get("customer_id")
    if not _blank(customer_phone) and not _blank(customer_id):
        raise ApiError(422, "customer_id", "give customer_phone or customer_id, not both")
    program = await state.program(program_id)
    if _blank(customer_phone) and _blank(customer_id):
        return await _not_found(request, program, "customer_phone",
                                "customer_phone or customer_id is required", 422)
    phones = reference = None
    field = "customer_phone"
    if not _blank(customer_phone):
        try:
            phones = readings_to_match(phone_candidates(customer_phone, program.default_country))
        except PhoneError as exc:
            return await _not_found(request, program, "customer_phone", str(exc), 422)
    else:
        field = "customer_id"
        reference = customer_id.strip()
        problem = customer_id_problem(reference)
        if problem:
            raise ApiError(422, "customer_id", problem)
    result = await state.run(lambda conn: lookup(conn, program_id, phones=phones, customer_id=reference))
    if result is None:
        return await _not_found(request, program, field, "no member with this identifier in the program", 404)
    return json_response(result)


# include_router copies a Starlette Route as a Starlette Route, so the route stays plain.
router = APIRouter(routes=[Route(POINTS_PATH, get_points, methods=["GET"], include_in_schema=False)])
