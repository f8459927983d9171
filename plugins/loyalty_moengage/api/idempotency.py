"""Once-only handling of connector webhooks that MoEngage may deliver twice.

The key is ``hdr:<Idempotency-Key>`` when the header is sent (window ``LOYALTY_API_IDEMPOTENCY_HOURS``,
default 24 h), else ``body:<sha256>`` of the canonical body (keys sorted) with the short window
``LOYALTY_API_RETRY_WINDOW_SECONDS`` (default 300 s): an identical body that soon is MoEngage
retrying, while the same body an hour later is a second purchase and counts. Both are scoped by
the program the key belongs to; within its window a second request with the key gets the first
one's stored response. A purchase that carries its own id is counted once by that id for ever,
whatever the window (purchases.py).

Concurrency: ``claim`` is an ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`` inside the
request's transaction. A concurrent duplicate blocks on the unique key until the first
transaction ends: if it committed, the duplicate reads its response; if it rolled back (bad
input, error), the duplicate claims the key and does the work itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.validation import idempotency_key_ok

_CLAIM = """
INSERT INTO loyalty_api.idempotency (program_id, idem_key, request_hash)
VALUES (%(program_id)s, %(key)s, %(hash)s)
ON CONFLICT (program_id, idem_key) DO UPDATE
   SET request_hash = EXCLUDED.request_hash, status_code = NULL, response = NULL,
       request = NULL, created_at = now()
 WHERE loyalty_api.idempotency.created_at < now() - make_interval(secs => %(window)s)
RETURNING 1
"""
_STORED = """
SELECT request_hash, status_code, response FROM loyalty_api.idempotency
WHERE program_id = %(program_id)s AND idem_key = %(key)s
"""
_SAVE = """
UPDATE loyalty_api.idempotency SET status_code = %(status)s, response = %(response)s, request = %(request)s
WHERE program_id = %(program_id)s AND idem_key = %(key)s
"""
_PRUNE = """
DELETE FROM loyalty_api.idempotency WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM loyalty_api.idempotency
    WHERE created_at < now() - make_interval(secs => %(window)s) LIMIT 1000))
"""


@dataclass(frozen=True)
class RequestKey:
    key: str
    body_hash: str
    window_s: int

    def describe(self) -> dict[str, Any]:
        """What the answer says about deduplication, so a caller knows what a repeat will do."""
        by = "idempotency_key" if self.key.startswith("hdr:") else "retry_window"
        return {"request": by, "window_seconds": self.window_s, "purchases": "purchase_id when given"}


def request_key(body: Any, header: str | None, *, header_window_s: int, body_window_s: int) -> RequestKey:
    """The idempotency key of a parsed body and optional Idempotency-Key header."""
    body_hash = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    if header is None or header == "":
        return RequestKey(f"body:{body_hash}", body_hash, body_window_s)
    if not idempotency_key_ok(header):
        raise ApiError(400, "Idempotency-Key", "must be 1-255 printable characters")
    return RequestKey(f"hdr:{header}", body_hash, header_window_s)


async def claim(conn: AsyncConnection, program_id: str, rk: RequestKey) -> bytes | None:
    """None when this request owns the key (do the work), else the stored response body to replay."""
    params = {"program_id": program_id, "key": rk.key, "hash": rk.body_hash, "window": rk.window_s}
    cur = await conn.execute(_CLAIM, params)
    if await cur.fetchone() is not None:
        return None
    cur = await conn.execute(_STORED, params)
    row = await cur.fetchone()
    if row is None:  # gone between the two statements (pruned): try once more
        cur = await conn.execute(_CLAIM, params)
        if await cur.fetchone() is not None:
            return None
        raise ApiError(409, "Idempotency-Key", "concurrent deliveries of this request; retry")
    stored_hash, status, response = row
    if stored_hash != rk.body_hash:
        raise ApiError(422, "Idempotency-Key", "was already used with a different body")
    if status is None or response is None:
        raise ApiError(409, "Idempotency-Key", "the first delivery of this request is still being processed")
    return response.encode()


async def save(conn: AsyncConnection, program_id: str, rk: RequestKey, status: int,
               response: bytes, request: Any) -> None:
    await conn.execute(_SAVE, {"program_id": program_id, "key": rk.key, "status": status,
                               "response": response.decode(), "request": Jsonb(request)})


async def prune(conn: AsyncConnection, window_s: int) -> None:
    """Forget keys older than ``window_s``, the longest window (bounded work; called now and then)."""
    await conn.execute(_PRUNE, {"window": window_s})
