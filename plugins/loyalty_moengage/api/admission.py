"""Load shedding: past a number of requests in flight in this process, a fast 503.

MoEngage calls a Content API in parallel batches (about 1,000 at once), waits at most 5 s and
retries a timeout up to 3 times. A request queued behind thousands of others answers after
MoEngage gave up, and each retry adds to the queue; a 503 in a millisecond, with
``Retry-After``, is an answer its retry can use. So requests beyond a limit in flight are
refused at once, before any work.

Reads and writes have budgets of their own: reads (GET, HEAD: the Content API) up to
``LOYALTY_API_MAX_IN_FLIGHT``, writes (every other method: the connector webhook) up to
``LOYALTY_API_MAX_IN_FLIGHT_WRITES``, per server process, 0 meaning no limit. One budget let
uploads that stall mid-body (or a webhook storm) hold every slot and turn every Content API call
into a 503. A pure ASGI middleware: two integers per request, no task or body of its own.
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
READ_METHODS = frozenset({"GET", "HEAD"})


class Budget:
    """Requests of one kind in flight, their limit (0: none) and how many were refused."""

    __slots__ = ("kind", "setting", "limit", "in_flight", "shed")

    def __init__(self, kind: str, setting: str, limit: int) -> None:
        self.kind = kind
        self.setting = setting
        self.limit = limit
        self.in_flight = 0
        self.shed = 0


class Admission:
    def __init__(self, app: Any, *, limit: int, write_limit: int = 0) -> None:
        self.app = app
        self.reads = Budget("reads", "LOYALTY_API_MAX_IN_FLIGHT", limit)
        self.writes = Budget("writes", "LOYALTY_API_MAX_IN_FLIGHT_WRITES", write_limit)
        self._logged_at = 0.0

    @property
    def in_flight(self) -> int:
        return self.reads.in_flight + self.writes.in_flight

    @property
    def shed(self) -> int:
        return self.reads.shed + self.writes.shed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        budget = self.reads if scope["method"] in READ_METHODS else self.writes
        if budget.limit <= 0:
            await self.app(scope, receive, send)
            return
        if budget.in_flight >= budget.limit:
            await self._refuse(budget, send)
            return
        budget.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            budget.in_flight -= 1

    async def _refuse(self, budget: Budget, send: Any) -> None:
        budget.shed += 1
        now = time.monotonic()
        if now - self._logged_at > 10:
            self._logged_at = now
            log.warning("shedding load: %d %s in flight (%s=%d); %d %s answered 503 so far",
                        budget.in_flight, budget.kind, budget.setting, budget.limit, budget.shed, budget.kind)
        await send({"type": "http.response.start", "status": 503, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": _BODY})
