"""One error shape for every failure, ``{"error": {"field": ..., "message": ...}}``, so a MoEngage
test call or an operator reading a log sees which input was wrong without guessing."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Raised anywhere in a request; the app turns it into a JSON response of ``status``."""

    def __init__(self, status: int, field: str | None, message: str, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {field}: {message}")
        self.status = status
        self.field = field
        self.message = message
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.field, self.message)


def error_body(field: str | None, message: str) -> dict[str, Any]:
    return {"error": {"field": field, "message": message}}
