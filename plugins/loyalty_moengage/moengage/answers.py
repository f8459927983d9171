"""Reading MoEngage's answers: the body, the request id, the error text, the rate-limit headers,
and what a data send's final answer means.

Every request the hook makes is answered the same way (JSON, a ``request_id`` in the body or in
``x-request-id``, ``x-ratelimit-*`` headers), so the send loop (:mod:`loyalty_moengage.moengage.sending`),
the lookups and the preflight read answers through these functions. A send's answer is judged
here (:func:`judge`): MoEngage has no per-element report, so a 2xx is "accepted" unless it says
``"status": "fail"``, and every other final status is permanent, with the cause and the fix.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import requests

from loyalty_moengage.moengage.connection import MoEngageConfig
from loyalty_moengage.moengage.errors import MoEngageAuthError, MoEngagePermanentError
from loyalty_moengage.moengage.pacing import ServerWindow, TokenBucket
from loyalty_moengage.moengage.packing import SINGLE_MAX_BYTES, TRANSITION_MAX_BYTES


@dataclass(frozen=True, slots=True)
class Answer:
    """MoEngage's final answer to one request (no 429, 5xx or 408)."""

    response: requests.Response
    doc: dict[str, Any]
    request_id: str | None


def read_body(response: requests.Response) -> dict[str, Any]:
    """The answer's JSON object; ``{}`` when it is not one (a proxy's HTML page, an empty body)."""
    try:
        doc = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def request_id(doc: dict[str, Any], response: requests.Response) -> str | None:
    """MoEngage's id for the request, wherever this answer put it (what its support asks for)."""
    error = doc.get("error")
    return (
        doc.get("request_id")
        or (error.get("request_id") if isinstance(error, dict) else None)
        or response.headers.get("x-request-id")
    )


def error_text(doc: dict[str, Any], response: requests.Response) -> str:
    """What MoEngage said went wrong, in one line, from whichever error shape it answered with."""
    error = doc.get("error")
    if isinstance(error, dict):
        parts = [str(error[k]) for k in ("type", "message") if error.get(k)]
        if error.get("attribute"):
            parts.append(f"attribute {error['attribute']!r}")
        return ": ".join(parts) if parts else str(error)
    if isinstance(error, str):
        return error
    return doc.get("message") or response.reason or "no error message"


Pacer = tuple["Sequence[ServerWindow]", "Sequence[TokenBucket]"]  # a request's server windows and buckets


def header_number(response: requests.Response, name: str) -> float | None:
    """A numeric header, or None when absent or unreadable (a bad header must not fail a send)."""
    raw = response.headers.get(name)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def reset_seconds(response: requests.Response) -> float | None:
    """``x-ratelimit-reset`` (or ``Retry-After``) as seconds from now: seconds or an epoch; None if absent."""
    value = header_number(response, "x-ratelimit-reset")
    if value is None:
        value = header_number(response, "retry-after")
    if value is None:
        return None
    wait = value - time.time() if value > 1_000_000_000 else value
    return wait if wait >= 0 else None


def observe(pacer: Pacer, response: requests.Response) -> None:
    """Tell the request's server windows what ``x-ratelimit-remaining`` / ``-reset`` say."""
    windows = pacer[0]
    if not windows:
        return
    remaining = header_number(response, "x-ratelimit-remaining")
    reset = reset_seconds(response) if remaining is not None else None
    for window in windows:
        window.observe(remaining, reset)


def bank(pacer: Pacer, seconds: float) -> None:
    """Credit a wait to the request's buckets: the budget not spent meanwhile is still owed."""
    for bucket in pacer[1]:
        bucket.bank(seconds)


UNCERTAIN_FIX = ("The outbox settles it: a users batch is sent again (attributes are last-write-wins); an "
                 "events batch is settled by its receipt (README, Backfills and reruns).")

FIXES: dict[int, tuple[str, str]] = {
    400: ("MoEngage could not read the request",
          "Fix the payload: the message names the field. A bulk body is "
          '{"type":"transition","elements":[...]} with lowercase element types.'),
    401: ("MoEngage rejected the credentials",
          "Check the Workspace ID, the Data API key and the data centre in {conn}."),
    403: ("MoEngage refused the workspace (suspended, blocked or behind an IP allowlist)",
          "Ask the workspace admin or MoEngage support; if an IP allowlist is on, add the workers' egress IP."),
    409: ("The Workspace ID in the URL differs from the one in Basic auth",
          "Use a single Workspace ID: check the login (Workspace ID) of {conn} for spaces or a stale value."),
    413: ("The request body exceeds MoEngage's size limit",
          f"Pack with loyalty_moengage.moengage.packing.pack_spans: at most {TRANSITION_MAX_BYTES} bytes per "
          f"transition request, {SINGLE_MAX_BYTES} per single request."),
    415: ("MoEngage requires Content-Type: application/json",
          "Send JSON with Content-Type: application/json (the hook does; check proxies that rewrite headers)."),
}


def judge(answer: Answer, cfg: MoEngageConfig, attempts: int) -> None:
    """A send's final answer: a 2xx is accepted unless it says ``"status": "fail"``; the rest is permanent."""
    response, doc, rid = answer.response, answer.doc, answer.request_id
    status = response.status_code
    if not 200 <= status < 300:
        raise permanent(answer, cfg, attempts)
    if doc.get("status") == "fail":
        cause = (f"MoEngage answered {status} but reported a failure ({error_text(doc, response)}) "
                 f"on {cfg.where}")
        fix = "The request was not accepted: fix what the message names; do not count it as sent."
        raise MoEngagePermanentError.of(cause, fix, detail=f"; request_id {rid}", status=status,
                                        request_id=rid, attempts=attempts)


def permanent(answer: Answer, cfg: MoEngageConfig, attempts: int) -> MoEngagePermanentError:
    """The error for a refused send: what the status means and how to fix it (401/403: an auth error)."""
    response, rid = answer.response, answer.request_id
    status = response.status_code
    what, fix = FIXES.get(status, (f"MoEngage refused the request with HTTP {status}",
                                   "Check the endpoint and the payload; this status is not retried."))
    fix = fix.replace("{conn}", cfg.name)
    cause = f"{what} ({status} {error_text(answer.doc, response)}) on {cfg.where}"
    error = MoEngageAuthError if status in (401, 403) else MoEngagePermanentError
    return error.of(cause, fix, detail=f"; request_id {rid}", status=status, request_id=rid,
                    attempts=attempts)


def too_large(size: int, limit: int) -> MoEngagePermanentError:
    """A body over MoEngage's size limit, refused before it is sent (MoEngage would answer 413)."""
    cause = f"request body is {size} bytes; MoEngage accepts at most {limit} (not sent)"
    return MoEngagePermanentError.of(cause, FIXES[413][1], status=None)
