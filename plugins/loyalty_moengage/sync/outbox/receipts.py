"""Receipts: MoEngage's own evidence that an events request was applied, for the requests whose
answer was lost.

MoEngage cannot read events back, but it can read user attributes back (Get User API). So
each events POST carries one more element, applied with the batch: an ``update_existing_only``
user element that sets the receipt attribute (``receipt_attribute``, default
``loyalty_sync_receipt``) on a *carrier* to a token naming this POST (``b<batch>.<attempt>.<nonce>``).
The carrier is a customer of the batch MoEngage is known to have (``customer_presence``), whom no
other POST to the same MoEngage workspace used during the last :func:`ReceiptSettings.quiet_seconds`
and whose last receipt is not still unsettled. Carriers are taken per workspace, whichever program
writes it (programs sharing a workspace write the same attribute by default), so no other write of
the attribute on that user can land near ours, in whatever order MoEngage applies them, and only
the exact token counts as evidence. An absent receipt means "not applied" only ``wait_seconds``
after the request left, never sooner than the connection's ``visibility_seconds`` plus its request
timeout (a request in flight that long may still land).
``sync/send/settle.py`` reads the receipts back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from loyalty_moengage.moengage.packing import BODY_SUFFIX, TRANSITION_MAX_BYTES

#: Bytes an events body leaves free for its receipt element (packing reserves them).
RECEIPT_RESERVE = 600
#: A carrier is used again only after this long (and never while its receipt is unsettled).
MIN_QUIET_SECONDS = 6 * 3600.0


@dataclass(frozen=True)
class ReceiptSettings:
    attribute: str = "loyalty_sync_receipt"
    wait_seconds: float = 900.0     # how long after a POST left an absent receipt means "not applied"
    workspace: str = ""             # the MoEngage workspace receipts are written to: carriers' key
    presence_hours: float = 168.0   # a carrier's confirmation must be younger (presence_lifetime_hours)

    @property
    def quiet_seconds(self) -> float:
        return max(MIN_QUIET_SECONDS, 4 * self.wait_seconds)

    @classmethod
    def of(cls, program: Any, config: Any = None) -> "ReceiptSettings | None":
        """The program's receipts on the workspace of ``config`` (its MoEngageConfig), or None when
        they are off (lost answers then wait for a person). The wait is never shorter than the
        connection's ``visibility_seconds`` plus its request timeout: an absence seen sooner proves
        nothing."""
        if not getattr(program, "receipts", False):
            return None
        wait = float(program.receipt_wait_seconds)
        if config is not None:
            # A request still in flight (up to the read timeout) may land after a later probe.
            wait = max(wait, float(config.visibility_seconds) + float(config.timeout))
        return cls(attribute=program.receipt_attribute, wait_seconds=wait, workspace=workspace_key(config),
                   presence_hours=float(getattr(program, "presence_lifetime_hours", 168)))


def workspace_key(config: Any) -> str:
    """One MoEngage workspace whatever connection names it: data centre and Workspace ID."""
    return "" if config is None else f"{config.data_center}:{config.workspace_id}"


@dataclass(frozen=True)
class Stamp:
    carrier: str
    token: str
    body: bytes     # the batch's body with the receipt element appended


def element(carrier: str, attribute: str, token: str) -> bytes:
    return orjson.dumps({"type": "customer", "customer_id": carrier, "update_existing_only": True,
                         "attributes": {attribute: token}})


def probe_body(carrier: str, attribute: str, token: str) -> bytes:
    return b'{"type":"transition","elements":[' + element(carrier, attribute, token) + BODY_SUFFIX


def stamp(conn: Any, *, program_id: str, batch_id: int, attempt: int, body: bytes,
          settings: ReceiptSettings) -> Stamp | None:
    """Take a carrier for this POST (in the caller's transaction, committed with its 'sending'
    mark) and append its receipt; None when no customer of the batch can carry one."""
    token = f"b{batch_id}.{attempt}.{uuid.uuid4().hex[:6]}"
    carrier = take_carrier(conn, program_id=program_id, workspace=settings.workspace,
                           candidates=_event_customers(body), token=token, batch_id=batch_id,
                           quiet_seconds=settings.quiet_seconds, presence_hours=settings.presence_hours)
    if carrier is None:
        return None
    stamped = body[: -len(BODY_SUFFIX)] + b"," + element(carrier, settings.attribute, token) + BODY_SUFFIX
    if len(stamped) > TRANSITION_MAX_BYTES:
        return None
    return Stamp(carrier=carrier, token=token, body=stamped)


def take_carrier(conn: Any, *, program_id: str, workspace: str, candidates: list[str] | None, token: str,
                 batch_id: int | None, quiet_seconds: float, presence_hours: float = 168.0) -> str | None:
    """Atomically take one of ``candidates`` (any present customer when None) as a carrier in
    ``workspace``: free only when no POST of any program to that workspace used it within the quiet
    period and its last receipt (any program's batch) is settled. Only a customer the Get User API
    confirmed within the presence lifetime carries one (an imported presence is no evidence): a
    carrier erased in MoEngage would never show its receipt."""
    free = ("(r.used_at IS NULL OR (r.used_at < now() - make_interval(secs => %(quiet)s) AND NOT EXISTS ("
            "SELECT 1 FROM moengage_sync.batches b WHERE b.batch_id = r.batch_id "
            "AND b.state IN ('sending', 'uncertain'))))")
    params: dict[str, Any] = {"p": program_id, "c": candidates, "quiet": quiet_seconds, "token": token,
                              "batch": batch_id, "ws": workspace or f"program:{program_id}",
                              "hours": presence_hours}
    rows = conn.execute(
        "SELECT p.customer_id FROM moengage_sync.customer_presence p LEFT JOIN moengage_sync.receipt_carriers r "
        "ON r.workspace = %(ws)s AND r.customer_id = p.customer_id "
        "WHERE p.program_id = %(p)s AND p.present AND NOT p.imported "
        "AND p.checked_at > now() - make_interval(hours => %(hours)s::int) AND " + ("p.customer_id = ANY(%(c)s) AND " if candidates else "")
        + free + (" LIMIT 8" if candidates else " ORDER BY p.checked_at DESC LIMIT 8"), params).fetchall()
    for (cid,) in rows:
        taken = conn.execute(
            "INSERT INTO moengage_sync.receipt_carriers AS r (workspace, program_id, customer_id, token, batch_id) "
            "VALUES (%(ws)s, %(p)s, %(cid)s, %(token)s, %(batch)s) ON CONFLICT (workspace, customer_id) DO UPDATE "
            "SET program_id = EXCLUDED.program_id, token = EXCLUDED.token, batch_id = EXCLUDED.batch_id, "
            "used_at = now() WHERE " + free + " RETURNING r.customer_id", {**params, "cid": cid}).fetchone()
        if taken:
            return cid
    return None


def _event_customers(body: bytes) -> list[str]:
    """The distinct customers of an events body, in order (at most 200 are tried)."""
    seen: dict[str, None] = {}
    for el in orjson.loads(body)["elements"]:
        cid = el.get("customer_id")
        if isinstance(cid, str) and el.get("type") == "event":
            seen.setdefault(cid, None)
            if len(seen) >= 200:
                break
    return list(seen)
