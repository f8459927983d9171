"""``GET /api/loyalty/points``: one member's live points, flat JSON for MoEngage Content APIs
(``ContentApi.Name().points_available``).

A plain Starlette route: FastAPI's parameter and dependency machinery cost more per call than
the lookup (bench/results/api-latest.md), and this route takes MoEngage's bursts.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loyalty_moengage.api.auth import program_from_api_key, store_from_store_key
from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.phone import PhoneError, normalize_phone
from loyalty_moengage.api.points import lookup
from loyalty_moengage.api.responses import json_response
from loyalty_moengage.api.state import api_state

POINTS_PATH = "/api/loyalty/points"
_CUSTOMER_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@/+-")


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


async def get_points(request: Request) -> Response:
    """Live points of one member, found by customer_phone or customer_id (exactly one)."""
    program_id, _store_id = await store_from_store_key(request, await program_from_api_key(request))
    customer_phone = request.query_params.get("customer_phone")
    customer_id = request.query_params.get("customer_id")
    if _blank(customer_phone) and _blank(customer_id):
        raise ApiError(422, "customer_phone", "customer_phone or customer_id is required")
    if not _blank(customer_phone) and not _blank(customer_id):
        raise ApiError(422, "customer_id", "give customer_phone or customer_id, not both")
    state = api_state(request)
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
        result = await lookup(conn, program_id, phone=phone, customer_id=reference)
    if result is None:
        raise ApiError(404, field, "no member with this identifier in the program")
    return json_response(result)


# include_router copies a Starlette Route as a Starlette Route, so the route stays plain.
router = APIRouter(routes=[Route(POINTS_PATH, get_points, methods=["GET"], include_in_schema=False)])
