"""Access logging that never writes a key.

``api_key`` and ``store_key`` travel in the query string (that is how MoEngage's Content API
and connector forms send them), so every access log line is a leak risk. This ASGI middleware

* replaces their values with ``***`` in ``scope["query_string"]`` once the response is sent (and
  those of any parameter whose name, spelt any way, says key, token, secret or password: a key
  sent as ``api-key`` or ``storeKey`` is still a key), and a phone number or email to its last two
  characters (a customer's phone in every line is personal data the log does not need), and so a
  ``customer_id`` made from a phone (``PH-919876543210`` -> ``PH-**********10``), so
  an outer logger that reads the scope afterwards (Airflow's ``HttpAccessLogMiddleware`` reads it
  after the app returns) logs the redacted form too;
* when ``enabled`` (the standalone server, which turns uvicorn's own access log off) writes one
  line per request to the ``loyalty_moengage.api.access`` logger;
* adds ``Server-Timing: app;dur=<ms>`` so the benchmark can tell server time from queueing.

The redaction runs on every request, so it is cheap: the query string is parsed once per request
(``query_pairs``, which the routes and the key check read too, instead of each parsing it
again) and what a parameter's name says (secret, personal or neither) is worked out once per
name, not once per request.
"""

from __future__ import annotations

import logging
import re
import time
from functools import lru_cache
from typing import Any
from urllib.parse import quote_plus, unquote

log = logging.getLogger("loyalty_moengage.api.access")

SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "auth")
PERSONAL_WORDS = ("phone", "mobile", "msisdn", "email", "number")
#: Names of a member reference: logged as sent unless it is one made from a phone (``PH-<digits>``).
REFERENCE_NAMES = ("customerid", "uid", "relationreference", "reference")
_PHONE_REFERENCE = re.compile(r"(?i)^(ph-)(\+?\d{3,})$")
#: Where a request's parsed query string is kept in its ASGI scope: (query_string, pairs, last values).
QUERY_SCOPE_KEY = "loyalty_moengage.query"
_SAFE = "*+"


def _kind(name: str) -> str | None:
    """'secret', 'personal' or None, from the parameter's name however it is spelt."""
    normal = re.sub(r"[^a-z0-9]", "", name.lower())
    if any(word in normal for word in SECRET_WORDS):
        return "secret"
    if any(word in normal for word in PERSONAL_WORDS):
        return "personal"
    if normal in REFERENCE_NAMES:
        return "reference"
    return None


@lru_cache(maxsize=512)
def _name(name: str) -> tuple[str, str | None]:
    """(the name as written back, its kind): a function of the name alone, and a campaign's
    calls all use the same few names (api_key, store_key, customer_phone)."""
    return quote_plus(name, safe=_SAFE), _kind(name)


def parse_query(query: bytes | str) -> list[tuple[str, str]]:
    """The (name, value) pairs of a query string, exactly as starlette reads them
    (``parse_qsl(query.decode("latin-1"), keep_blank_values=True)``), with less work per field."""
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    pairs = []
    if not text:
        return pairs
    for field in text.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        if "+" in name:
            name = name.replace("+", " ")
        if "%" in name:
            name = unquote(name)
        if "+" in value:
            value = value.replace("+", " ")
        if "%" in value:
            value = unquote(value)
        pairs.append((name, value))
    return pairs


def query_pairs(scope: dict[str, Any]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(pairs, last value of each name) of the request's query string, parsed once per request:
    the key check, the route and the redaction all read it. ``dict`` keeps the last value of a
    repeated name, as starlette's ``request.query_params.get`` does."""
    raw = scope.get("query_string", b"")
    cached = scope.get(QUERY_SCOPE_KEY)
    if cached is not None and cached[0] is raw:
        return cached[1], cached[2]
    pairs = parse_query(raw)
    values = dict(pairs)
    scope[QUERY_SCOPE_KEY] = (raw, pairs, values)
    return pairs, values


def redact_pairs(pairs: list[tuple[str, str]]) -> str:
    """The query string of ``pairs`` with secrets and personal data redacted (see the module doc),
    written back as ``urlencode(..., safe="*+")`` would."""
    out = []
    for name, value in pairs:
        written, kind = _name(name)
        if kind == "secret":
            out.append(written + "=***")
        elif kind == "personal":
            out.append(written + "=" + _masked(value))
        elif kind == "reference" and (phone := _PHONE_REFERENCE.match(value)):
            out.append(written + "=" + quote_plus(phone.group(1), safe=_SAFE) + _masked(phone.group(2)))
        else:
            out.append(written + "=" + quote_plus(value, safe=_SAFE))
    return "&".join(out)


def _masked(value: str) -> str:
    return "*" * max(len(value) - 2, 0) + quote_plus(value[-2:], safe=_SAFE)


def redact_query(query: bytes | str) -> str:
    return redact_pairs(parse_query(query))


class RedactingAccessLog:
    """Outermost: a request shed by admission or answered before routing is redacted too, in
    the scope the server (and Airflow's access log) passed in."""

    def __init__(self, app, enabled: bool = False) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_timed(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed = (time.perf_counter() - start) * 1000
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", f"app;dur={elapsed:.2f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            query = redact_pairs(query_pairs(scope)[0])
            scope["query_string"] = query.encode("latin-1")
            scope.pop(QUERY_SCOPE_KEY, None)
            if self.enabled:
                client = scope.get("client")
                log.info('%s "%s %s%s" %d %.1fms', f"{client[0]}:{client[1]}" if client else "-",
                         scope.get("method", ""), scope.get("path", ""),
                         f"?{query}" if query else "", status, (time.perf_counter() - start) * 1000)
