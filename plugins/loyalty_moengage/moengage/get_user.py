"""MoEngage's Get User API: what a lookup asks, how its 429s are explained, and what its answer says.

Lookups read which customers exist (an event for an unknown customer_id would create a profile)
and the receipt attribute of a batch's carriers. The API takes at most :data:`BATCH` identifiers a
request and has its own budget (1,000 users/min unless MoEngage raised it), which the hook paces
on ``lookups_per_minute``. A lookup is idempotent: the send loop retries what a send could not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from loyalty_moengage.moengage.answers import Answer, error_text
from loyalty_moengage.moengage.connection import MoEngageConfig
from loyalty_moengage.moengage.errors import MoEngageAuthError, MoEngagePermanentError
from loyalty_moengage.moengage.sending import LoopOwner, RequestKind

BATCH = 20  # identifiers per Get User API request


def lookup_advice(owner: LoopOwner) -> str:
    """The fix when lookups keep getting 429s: who else spends the budget, and what this task paces at."""
    cfg = owner.config
    pace = (f"this task paces lookups at {cfg.lookups_per_minute * owner.share:g} users/min"
            if cfg.pacing else "pacing is off in the connection (the pacing extra)")
    return (f"The workspace's Get User API budget (MoEngage: 1,000 users/min unless raised) is spent: another job "
            f"is looking users up in this workspace, or the lookups_per_minute extra ({cfg.lookups_per_minute:g}; "
            f"{pace}) is higher than MoEngage's budget. Lower lookups_per_minute in {cfg.name}, run fewer lookups "
            "at once, or ask MoEngage to raise the budget; then retry the run.")


LOOKUP = RequestKind(idempotent=True, budget="the Get User API (customer lookups)", advice=lookup_advice)


def export_path(workspace_id: str) -> str:
    return f"/v1/customers/export?app_id={workspace_id}"


def batches(customer_ids: list[str]) -> Iterator[list[str]]:
    """The customer ids, :data:`BATCH` at a time, in order."""
    for start in range(0, len(customer_ids), BATCH):
        yield customer_ids[start:start + BATCH]


def request_body(customer_ids: list[str], fields: list[str]) -> bytes:
    """Ask for ``fields`` (``customer_id`` always first, no duplicates) of these customers."""
    wanted = list(dict.fromkeys(["customer_id", *fields]))
    return orjson.dumps({"data": {"identifiers": [{"identifier_type": "customer_id", "identifier": c}
                                                  for c in customer_ids],
                                  "user_fields_to_export": wanted}})


def users_found(answer: Answer, cfg: MoEngageConfig) -> dict[str, dict[str, Any]]:
    """The attributes of each customer the answer has, by customer_id; a refusal raises, saying why."""
    response, doc = answer.response, answer.doc
    if response.status_code != 200 or doc.get("status") != "success":
        detail = f"{response.status_code} {error_text(doc, response)}"
        cause = f"the Get User API refused the lookup ({detail}) on {cfg.where}"
        fix = ("Check the connection's credentials and that MoEngage enabled the Get User API for the "
               "workspace (your customer success manager does): customer checks (verify_customers) and "
               "receipts (receipts) need it.")
        error = MoEngageAuthError if response.status_code in (401, 403) else MoEngagePermanentError
        raise error.of(cause, fix, status=response.status_code, request_id=answer.request_id)
    found: dict[str, dict[str, Any]] = {}
    for user in (doc.get("data") or {}).get("users") or []:
        attributes = user.get("user_attributes") or {}
        cid = attributes.get("customer_id")
        if isinstance(cid, str):
            found[cid] = attributes
    return found
