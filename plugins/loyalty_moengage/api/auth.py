"""The key checks every route makes before any database work: API key and its scope, the
key's rate, then (points route only) the store key.

Scopes (keys.py): the points route takes a read key, the connector webhook a write key; the
wrong scope is 403, an unknown key 401. A key travels in a header, ``X-API-Key`` or
``Authorization: Bearer``, and the store key in ``X-Store-Key``; the query parameters
``api_key``/``store_key`` stay accepted because existing Content API URLs carry them. A header
wins; a header and a query value that differ are a 400, as which one the caller meant would
be a guess.

This runs on every Content API call (MoEngage sends bursts of about a thousand), so it reads the
raw ASGI headers in one pass and the query string itself rather than declaring FastAPI
parameters, looks the app's state up once, and keeps the rate limiters in a registry keyed by
the app's ``ApiState`` (a dict lookup; starlette's ``app.state`` attributes cost more than the
whole key check). The functions work as FastAPI dependencies and as plain awaitables (the
points route is a plain Starlette route and awaits ``read_access``).
"""

from __future__ import annotations

import logging
import time
import weakref

from fastapi import Depends
from starlette.requests import Request

from loyalty_moengage.api.access_log import query_pairs
from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.keys import READ, WRITE, KeyMatch, KeyRing
from loyalty_moengage.api.ratelimit import RateLimiter, retry_after
from loyalty_moengage.api.settings import Settings
from loyalty_moengage.api.state import ApiState, api_state

log = logging.getLogger(__name__)

_MAX_KEY_LENGTH = 256


class RateLimits:
    """The per-key limiters of one app: read keys and write keys have rates of their own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.read = RateLimiter(settings.read_rate_per_key)
        self.write = RateLimiter(settings.write_rate_per_key)
        self._logged_at = 0.0

    def check(self, who: KeyMatch) -> None:
        """Take one of ``who``'s tokens, or raise the 429 (a warning at most every 10 s, the key
        named by its id only)."""
        limiter = self.read if who.scope == READ else self.write
        wait = limiter.wait(who.key_id)
        if not wait:
            return
        now = time.monotonic()
        if now - self._logged_at > 10:
            self._logged_at = now
            log.warning("rate limit: %s key %s of program %s over %g requests/s; %d refused so far",
                        who.scope, who.key_id, who.program_id, limiter.rate, limiter.refused)
        raise ApiError(429, "api_key", f"this key is over its rate limit ({limiter.rate:g} requests/s per "
                       "server process), retry later", headers={"Retry-After": retry_after(wait)})


#: id(ApiState) -> (weak reference to it, its limiters); an entry leaves with its ApiState.
RATE_LIMITS_BY_APP: dict[int, tuple[weakref.ref, RateLimits]] = {}


def rate_limits(api: ApiState) -> RateLimits:
    """The limiters of ``api``'s app, made on first use (again if its settings were replaced)."""
    entry = RATE_LIMITS_BY_APP.get(id(api))
    if entry is not None and entry[0]() is api and entry[1].settings is api.settings:
        return entry[1]
    key = id(api)
    limits = RateLimits(api.settings)
    RATE_LIMITS_BY_APP[key] = (weakref.ref(api, lambda _ref: RATE_LIMITS_BY_APP.pop(key, None)), limits)
    return limits


def _sent(request: Request, *, store: bool) -> tuple[str | None, str | None]:
    """(API key, store key or None) as sent: header first, else query; 400 on a mismatch."""
    api_h = bearer = store_h = None
    for name, value in request.scope["headers"]:   # ASGI: names are lower case
        if name == b"x-api-key":
            api_h = value.decode("latin-1") or None
        elif name == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = value[7:].decode("latin-1").strip() or None
        elif name == b"x-store-key":
            store_h = value.decode("latin-1") or None
    if bearer is not None:
        if api_h is not None and api_h != bearer:
            raise ApiError(400, "api_key", "the X-API-Key header and the Authorization Bearer token differ; "
                                           "send the key once")
        api_h = bearer
    query = query_pairs(request.scope)[1]
    api_key = _one(api_h, query.get("api_key"), "api_key")
    return api_key, (_one(store_h, query.get("store_key"), "store_key") if store else None)


def _one(header: str | None, query: str | None, field: str) -> str | None:
    if header is None:
        return query
    if query and query != header:
        raise ApiError(400, field, f"the key in the header and the {field} query parameter differ; "
                                   "send the key once")
    return header


def _wrong_scope(ring: KeyRing, who: KeyMatch) -> ApiError:
    if who.scope == WRITE:
        return ApiError(403, "api_key", "this key can only write (the connector webhook); the Content API "
                                        "needs a read key of the program")
    if not ring.has_write_keys(who.program_id):
        return ApiError(401, "api_key", "no write key is configured for this program (write_keys in the "
                                        "connection extra); a read key cannot enrol or credit points")
    return ApiError(403, "api_key", "this key can only read (the Content API); the connector needs a "
                                    "write key of the program")


def _authorize(api: ApiState, ring: KeyRing, api_key: str | None, scope: str) -> KeyMatch:
    """Who ``api_key`` is, if it may act in ``scope`` now; 401/403/429 otherwise."""
    if not api_key or len(api_key) > _MAX_KEY_LENGTH:
        raise ApiError(401, "api_key", "missing or invalid API key")
    who = ring.match(api_key)
    if who is None:
        raise ApiError(401, "api_key", "missing or invalid API key")
    if who.scope != scope:
        raise _wrong_scope(ring, who)
    rate_limits(api).check(who)
    return who


def _store(ring: KeyRing, program_id: str, store_key: str | None) -> tuple[str, str]:
    if not store_key or len(store_key) > _MAX_KEY_LENGTH:
        raise ApiError(401, "store_key", "missing or invalid store key")
    store_id = ring.store_for(program_id, store_key)
    if store_id is None:
        raise ApiError(401, "store_key", "missing or invalid store key")
    return program_id, store_id


async def authenticate(request: Request, scope: str) -> KeyMatch:
    """Who the request's API key is, if it may act in ``scope`` (``READ``/``WRITE``) now;
    400/401/403/429 otherwise, all before any database work."""
    api_key, _ = _sent(request, store=False)
    api = api_state(request)
    return _authorize(api, await api.keyring(), api_key, scope)


async def read_access(request: Request) -> tuple[str, str]:
    """(program_id, store_id) of a request that may read (the Content API): read key + store key."""
    return await read_access_of(api_state(request), request)


async def read_access_of(api: ApiState, request: Request) -> tuple[str, str]:
    """``read_access`` for a caller that has the app's ``ApiState`` already (the points route)."""
    api_key, store_key = _sent(request, store=True)
    ring = await api.keyring()
    who = _authorize(api, ring, api_key, READ)
    return _store(ring, who.program_id, store_key)


async def write_access(request: Request) -> str:
    """The program of a request that may write (the connector webhook): a write key. No store
    key: the webhook's store_id is in its body, checked against the database."""
    return (await authenticate(request, WRITE)).program_id


async def program_from_api_key(request: Request) -> str:
    """The program of a valid read key (the Content API's scope), as a FastAPI dependency."""
    return (await authenticate(request, READ)).program_id


async def store_from_store_key(request: Request, program_id: str = Depends(program_from_api_key)) -> tuple[str, str]:
    """(program_id, store_id) of a valid read key + store (outlet) key pair, as a FastAPI dependency."""
    _, store_key = _sent(request, store=True)
    return _store(await api_state(request).keyring(), program_id, store_key)
