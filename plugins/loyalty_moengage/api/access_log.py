"""Access logging that never writes a key.

``api_key`` and ``store_key`` travel in the query string (that is how MoEngage's Content API
and connector forms send them), so every access log line is a leak risk. This ASGI middleware

* replaces their values with ``***`` in ``scope["query_string"]`` once the response is sent (and
  those of any parameter whose name, spelt any way, says key, token, secret or password: a key
  sent as ``api-key`` or ``storeKey`` is still a key), and a phone number or email to its last two
  characters (a customer's phone in every line is personal data the log does not need), so
  an outer logger that reads the scope afterwards (Airflow's ``HttpAccessLogMiddleware`` reads it
  after the app returns) logs the redacted form too;
* when ``enabled`` (the standalone server, which turns uvicorn's own access log off) writes one
  line per request to the ``loyalty_moengage.api.access`` logger;
* adds ``Server-Timing: app;dur=<ms>`` so the benchmark can tell server time from queueing.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import parse_qsl, urlencode

log = logging.getLogger("loyalty_moengage.api.access")

SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "auth")
PERSONAL_WORDS = ("phone", "mobile", "msisdn", "email", "number")


def _kind(name: str) -> str | None:
    """'secret', 'personal' or None, from the parameter's name however it is spelt."""
    normal = re.sub(r"[^a-z0-9]", "", name.lower())
    if any(word in normal for word in SECRET_WORDS):
        return "secret"
    if any(word in normal for word in PERSONAL_WORDS):
        return "personal"
    return None


def _redacted(name: str, value: str) -> str:
    kind = _kind(name)
    if kind == "secret":
        return "***"
    if kind == "personal":
        return "*" * max(len(value) - 2, 0) + value[-2:]
    return value


def redact_query(query: bytes | str) -> str:
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    if not text:
        return ""
    pairs = parse_qsl(text, keep_blank_values=True)
    return urlencode([(k, _redacted(k, v)) for k, v in pairs], safe="*+")


class RedactingAccessLog:
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
            query = redact_query(scope.get("query_string", b""))
            scope["query_string"] = query.encode("latin-1")
            if self.enabled:
                client = scope.get("client")
                log.info('%s "%s %s%s" %d %.1fms', f"{client[0]}:{client[1]}" if client else "-",
                         scope.get("method", ""), scope.get("path", ""),
                         f"?{query}" if query else "", status, (time.perf_counter() - start) * 1000)
