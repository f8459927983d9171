"""Element rules of the MoEngage Data API, as documented, applied by the sandbox.

Two kinds of failure, as on MoEngage: a *structural* error (no ``customer_id``, no ``actions``)
makes a single-endpoint request fail with 400; everything else (disallowed ids, future
``current_time``, bad offsets, blocked attribute names, wrong-case ``type``) is dropped quietly
while the request still gets 200. Unlike MoEngage, every drop is returned with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

DISALLOWED_CUSTOMER_IDS = frozenset(
    {
        "unknown", "guest", "null", "0", "1", "true", "false", "user_attribute_unique_id", "",
        "na", "n/a", "''", "dummy_seller_code", "user_id", "id", "customer_id", "uid", "userid",
        "none", "-2", "-1", "2",
    }
)
BLOCKED_USER_ATTRIBUTES = frozenset({"id", "_id", ""})
#: Standard attributes MoEngage itself names with the reserved ``moe_`` prefix.
STANDARD_MOE_ATTRIBUTES = frozenset(
    {
        "moe_wa_subscription", "moe_em_unsub_categories", "moe_sub_w", "moe_spam", "moe_unsubscribe",
        "moe_hard_bounce", "moe_sms_subscription", "moe_email_optin_status", "moe_gaid", "moe_mobile",
        "moe_email",
    }
)
EVENT_NAME_FORBIDDEN = re.compile(r"[\s$.<>+%!`&*#|{}?\"=/:\\@']")
OFFSET_MIN, OFFSET_MAX = -54000, 54000
MAX_NAME = 200
MAX_VALUE = 512
MAX_ARRAY = 50
MAX_EVENT_ATTRIBUTES = 100
MAX_UNIQUE_EVENTS = 512
MAX_UNIQUE_USER_ATTRIBUTES = 256
ELEMENT_TYPES = ("customer", "event", "device")


class StructuralError(ValueError):
    """The element cannot be read at all: 400 on a single endpoint, a drop in a bulk request."""

    def __init__(self, message: str, attribute: str | None = None) -> None:
        super().__init__(message)
        self.attribute = attribute


@dataclass(slots=True)
class Drop:
    kind: str  # "element", "action" or "attribute"
    reason: str
    customer_id: str | None = None
    action_index: int | None = None
    name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kind", "reason", "customer_id", "action_index", "name")}


@dataclass(slots=True)
class Action:
    action: str
    attributes: dict[str, Any]
    current_time: Any
    time: float  # epoch seconds
    user_timezone_offset: int | None
    stamped: bool  # current_time was missing and the receive time was used


@dataclass(slots=True)
class Checked:
    """An element after the rules: what would be applied, and what was dropped."""

    type: str
    customer_id: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    update_existing_only: bool = False
    drops: list[Drop] = field(default_factory=list)
    rejected: bool = False  # the whole element is dropped (see drops)


def parse_time(value: Any) -> float:
    """Epoch seconds for ISO 8601 (``Z`` or offset) or epoch seconds/milliseconds; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("boolean")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\d{9,13}(\.\d+)?", value.strip()):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})", text):
            raise ValueError("not ISO 8601 with a time zone")
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return parsed.astimezone(timezone.utc).timestamp()
    else:
        raise ValueError(type(value).__name__)
    return number / 1000.0 if number > 100_000_000_000 else number


def _check_customer_id(element: dict[str, Any]) -> str:
    if "customer_id" not in element:
        raise StructuralError("customer_id is not found in the payload", "customer_id")
    customer_id = element["customer_id"]
    if not isinstance(customer_id, str):
        raise StructuralError("customer_id is expected to be String or Unicode String.", "customer_id")
    if not customer_id.strip():
        raise StructuralError("customer_id can not be empty Unicode String", "customer_id")
    return customer_id


def _clean_value(value: Any) -> tuple[Any, str | None]:
    """Value as MoEngage would keep it, or a reason to drop it."""
    if isinstance(value, str):
        return value[:MAX_VALUE], None
    if isinstance(value, list):
        if len(value) > MAX_ARRAY:
            return None, f"array has {len(value)} items; at most {MAX_ARRAY} are allowed"
        if len({type(v) for v in value}) > 1:
            return None, "array items must all have one type"
        return [v[:MAX_VALUE] if isinstance(v, str) else v for v in value], None
    return value, None


def check_user_attributes(attributes: Any, known: set[str], customer_id: str | None, drops: list[Drop]) -> dict[str, Any]:
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise StructuralError("attributes is expected to be a JSON object", "attributes")
    kept: dict[str, Any] = {}
    for name, value in attributes.items():
        reason = None
        if name in BLOCKED_USER_ATTRIBUTES:
            reason = f"user attribute name {name!r} is blocked"
        elif name.startswith("moe_") and name not in STANDARD_MOE_ATTRIBUTES:
            reason = f"user attribute {name!r} uses the reserved moe_ prefix"
        elif name[:MAX_NAME] not in known and len(known) >= MAX_UNIQUE_USER_ATTRIBUTES:
            reason = f"workspace already has {MAX_UNIQUE_USER_ATTRIBUTES} user attributes"
        else:
            value, reason = _clean_value(value)
        if reason:
            drops.append(Drop("attribute", reason, customer_id, name=name))
            continue
        known.add(name[:MAX_NAME])
        kept[name[:MAX_NAME]] = value
    return kept


def _check_action(
    index: int, action: Any, customer_id: str, known_events: set[str], now: float, tolerance: float, drops: list[Drop]
) -> Action | None:
    if not isinstance(action, dict):
        raise StructuralError("each action is expected to be a JSON object", "actions")
    name = action.get("action")
    if name is None:
        raise StructuralError("action is not found in the payload", "action")
    if not isinstance(name, str) or not name:
        raise StructuralError("action cannot be empty Unicode string", "action")

    def drop(reason: str) -> None:
        drops.append(Drop("action", reason, customer_id, action_index=index, name=name))

    if EVENT_NAME_FORBIDDEN.search(name):
        drop(f"event name {name!r} contains a space or one of $ . < > + % ! ` & * # | {{ }} ? \" = / : \\ @ '")
        return None
    name = name[:MAX_NAME]
    if name not in known_events and len(known_events) >= MAX_UNIQUE_EVENTS:
        drop(f"workspace already has {MAX_UNIQUE_EVENTS} unique events")
        return None
    raw_time = action.get("current_time")
    if raw_time is None:
        event_time, stamped = now, True
    else:
        try:
            event_time, stamped = parse_time(raw_time), False
        except ValueError:
            drop(f"current_time {raw_time!r} is neither ISO 8601 (e.g. 2026-11-22T14:05:09Z) nor epoch seconds")
            return None
        if event_time > now + tolerance:
            drop(f"current_time {raw_time!r} is in the future; future-dated events are not accepted")
            return None
    offset = action.get("user_timezone_offset")
    if offset is not None:
        if isinstance(offset, bool) or not isinstance(offset, int):
            drop(f"user_timezone_offset {offset!r} is not an integer number of seconds")
            return None
        if not OFFSET_MIN <= offset <= OFFSET_MAX:
            drop(f"user_timezone_offset {offset} is outside {OFFSET_MIN}..{OFFSET_MAX}")
            return None
    attributes = action.get("attributes") or {}
    if not isinstance(attributes, dict):
        drop("attributes is expected to be a JSON object")
        return None
    kept: dict[str, Any] = {}
    for attr, value in attributes.items():
        reason = None
        if attr == "":
            reason = "event attribute name is empty"
        elif len(kept) >= MAX_EVENT_ATTRIBUTES:
            reason = f"event has more than {MAX_EVENT_ATTRIBUTES} attributes"
        else:
            value, reason = _clean_value(value)
        if reason:
            drops.append(Drop("attribute", reason, customer_id, action_index=index, name=attr))
            continue
        kept[attr[:MAX_NAME]] = value
    known_events.add(name)
    return Action(name, kept, raw_time, event_time, offset, stamped)


def check_element(
    element: Any,
    *,
    now: float,
    known_events: set[str],
    known_attributes: set[str],
    future_tolerance: float = 0.0,
    expected_type: str | None = None,
) -> Checked:
    """Apply the documented rules to one element. Raises StructuralError when it cannot be read."""
    if not isinstance(element, dict):
        raise StructuralError("each element is expected to be a JSON object", "elements")
    kind = element.get("type")
    if not isinstance(kind, str):
        raise StructuralError("type in elements should be customer/event/device", "type")
    if expected_type and kind != expected_type:
        if kind.lower() == expected_type:
            return _rejected(kind, element, f"type {kind!r} must be lowercase {expected_type!r}; not processed")
        raise StructuralError(f"type should be {expected_type}", "type")
    if kind not in ELEMENT_TYPES:
        if kind.lower() in ELEMENT_TYPES:
            return _rejected(kind, element, f"type {kind!r} must be lowercase {kind.lower()!r}; not processed")
        raise StructuralError("type in elements should be customer/event/device", "type")
    customer_id = _check_customer_id(element)
    if customer_id.strip().lower() in DISALLOWED_CUSTOMER_IDS:
        return _rejected(kind, element, f"customer_id {customer_id!r} is a disallowed value")
    checked = Checked(type=kind, customer_id=customer_id)
    checked.update_existing_only = element.get("update_existing_only") is True
    if kind == "customer":
        checked.attributes = check_user_attributes(element.get("attributes"), known_attributes, customer_id, checked.drops)
    elif kind == "event":
        actions = element.get("actions")
        if actions is None:
            raise StructuralError("actions is not found in the payload", "actions")
        if not isinstance(actions, list) or not actions:
            raise StructuralError("actions can not be empty Array", "actions")
        for index, action in enumerate(actions):
            checked_action = _check_action(
                index, action, customer_id, known_events, now, future_tolerance, checked.drops
            )
            if checked_action is not None:
                checked.actions.append(checked_action)
    return checked


def _rejected(kind: str, element: dict[str, Any], reason: str) -> Checked:
    customer_id = element.get("customer_id") if isinstance(element.get("customer_id"), str) else None
    return Checked(type=kind, customer_id=customer_id, rejected=True, drops=[Drop("element", reason, customer_id)])
