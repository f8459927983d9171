"""The key checks every route makes before any database work: api_key, then store_key.

They read the query string themselves (``request.query_params``) rather than declaring
``Query`` parameters: FastAPI's parameter machinery costs more per request than the lookup
itself, and MoEngage calls in bursts of about a thousand. Both work as FastAPI dependencies
and as plain awaitables (the points route is a plain Starlette route and awaits them).
"""

from __future__ import annotations

from fastapi import Depends
from starlette.requests import Request

from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.state import api_state

_MAX_KEY_LENGTH = 256


async def program_from_api_key(request: Request) -> str:
    """The program the api_key belongs to; 401 otherwise, before any database work."""
    api_key = request.query_params.get("api_key")
    if not api_key or len(api_key) > _MAX_KEY_LENGTH:
        raise ApiError(401, "api_key", "missing or invalid API key")
    program_id = (await api_state(request).keyring()).program_for(api_key)
    if program_id is None:
        raise ApiError(401, "api_key", "missing or invalid API key")
    return program_id


async def store_from_store_key(request: Request, program_id: str = Depends(program_from_api_key)) -> tuple[str, str]:
    """(program_id, store_id) of a valid api_key + store (outlet) key pair; 401 otherwise."""
    store_key = request.query_params.get("store_key")
    if not store_key or len(store_key) > _MAX_KEY_LENGTH:
        raise ApiError(401, "store_key", "missing or invalid store key")
    store_id = (await api_state(request).keyring()).store_for(program_id, store_key)
    if store_id is None:
        raise ApiError(401, "store_key", "missing or invalid store key")
    return program_id, store_id
