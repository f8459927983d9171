"""The JSON response every route and error handler sends: orjson, never cached."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    base = {"Cache-Control": "no-store"}
    if headers:
        base.update(headers)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=base)
