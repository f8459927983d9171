"""Load shedding: past a number of requests in flight in this process, a fast 503.

MoEngage calls a Content API in parallel batches (about 1,000 at once), waits at most 5 s and
retries a timeout up to 3 times. A request queued behind thousands of others answers after
MoEngage gave up, and each retry adds to the queue; a 503 in a millisecond, with
``Retry-After``, is an answer its retry can use. So requests beyond ``limit`` in flight
(``LOYALTY_API_MAX_IN_FLIGHT`` per server process) are refused at once, before any work.
A pure ASGI middleware: one integer per request, no task or body of its own.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

log = logging.getLogger(__name__)

_BODY = orjson.dumps({"error": {"field": None, "message": "busy: too many requests in flight, retry shortly"}})
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode()),
            (b"retry-after", b"1"), (b"cache-control", b"no-store")]


class Admission:
    def __init__(self, app: Any, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0
        self.shed = 0
        self._logged_at = 0.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.limit <= 0:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.shed += 1
            now = time.monotonic()
            if now - self._logged_at > 10:
                self._logged_at = now
                log.warning("shedding load: %d requests in flight (LOYALTY_API_MAX_IN_FLIGHT=%d); %d answered 503 "
                            "so far", self.in_flight, self.limit, self.shed)
            await send({"type": "http.response.start", "status": 503, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": _BODY})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
