"""Checks of the connector payload that need no database, run before anything is written.

The payload is the Xeno-style ``{"customer_details": {...}}`` or ``{"customer_details": [...]}``
with ``number, email_id, name, gender, amount, channel, store_id, admin_id`` and an optional
``customer_id`` (the user's MoEngage ID, e.g. ``"{{UserAttribute['ID']}}"``: 1-128 of letters,
digits and ``_ . - : @ +``, not one of MoEngage's disallowed ids such as ``unknown`` or ``null``,
compared case-insensitively). MoEngage renders a missing user attribute as an empty string, so
``""`` means "not given" for optional fields. Every error names the field, e.g.
``customer_details[2].amount``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation, ROUND_HALF_UP
from typing import Any

from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.moengage.rules import DISALLOWED_CUSTOMER_IDS

_STORE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_CHANNEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,39}$")
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&*+/=?^_`{|}~\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)+$")
# Apostrophes and hyphens are real in names (O'Brien, Anne-Marie); these are not.
_NAME_BAD = re.compile(r"[\x00-\x1f\x7f<>\"`;=\\{}]|--")
_CUSTOMER_ID = re.compile(r"^[A-Za-z0-9_.\-:@+]{1,128}$")
_AMOUNT = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,6})?$")
_GENDERS = {
    "male": "male", "m": "male", "man": "male",
    "female": "female", "f": "female", "woman": "female",
    "other": "other", "o": "other", "non-binary": "other", "nonbinary": "other",
}
_GENDER_UNKNOWN = {"", "unknown", "u", "not specified", "prefer not to say", "na", "n/a", "none", "null"}


@dataclass(frozen=True)
class CustomerIn:
    """One validated element of customer_details; the phone is still raw (its country is the
    store's program's, known only after the store lookup)."""

    index: int
    path: str  # field prefix for errors: "customer_details" or "customer_details[3]"
    number: str
    email: str | None
    name: str | None
    gender: str | None
    amount: Decimal | None
    channel: str | None
    store_id: str
    admin_id: str | None
    customer_id: str | None = None  # the MoEngage ID to use as a new member's relation_reference

    def audit(self) -> dict[str, Any]:
        data = asdict(self)
        data["amount"] = None if self.amount is None else str(self.amount)
        return data


def _text(value: Any, field: str, *, required: bool = False, limit: int = 200) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ApiError(422, field, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ApiError(422, field, "must be a string")
    text = str(value).strip()
    if len(text) > limit:
        raise ApiError(422, field, f"is longer than {limit} characters")
    return text


def _amount(value: Any, field: str, max_amount: int) -> Decimal | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ApiError(422, field, "must be a number")
    text = value.strip() if isinstance(value, str) else repr(value)
    if text.startswith("-"):
        raise ApiError(422, field, "must not be negative")
    if not _AMOUNT.match(text):
        raise ApiError(422, field, "must be a plain decimal number such as 499.50")
    try:
        amount = Decimal(text).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        raise ApiError(422, field, "must be a number") from None
    if amount > max_amount:
        raise ApiError(422, field, f"exceeds the maximum of {max_amount}")
    return amount


def _customer(item: Any, index: int, path: str, max_amount: int) -> CustomerIn:
    if not isinstance(item, dict):
        raise ApiError(422, path, "must be an object")

    def f(name: str) -> str:
        return f"{path}.{name}"

    number = _text(item.get("number"), f("number"), required=True, limit=32)
    email = _text(item.get("email_id"), f("email_id"), limit=254)
    if email is not None and not _EMAIL.match(email):
        raise ApiError(422, f("email_id"), "is not an email address")
    name = _text(item.get("name"), f("name"), limit=200)
    if name is not None and _NAME_BAD.search(name):
        raise ApiError(422, f("name"), "contains characters not allowed in a name")
    gender_raw = _text(item.get("gender"), f("gender"), limit=20)
    gender = None
    if gender_raw is not None:
        key = gender_raw.lower()
        if key in _GENDERS:
            gender = _GENDERS[key]
        elif key not in _GENDER_UNKNOWN:
            raise ApiError(422, f("gender"), "must be male, female, other or empty")
    amount = _amount(item.get("amount"), f("amount"), max_amount)
    channel = _text(item.get("channel"), f("channel"), limit=40)
    if channel is not None and not _CHANNEL.match(channel):
        raise ApiError(422, f("channel"), "may hold letters, digits, space, _ . - (40 at most)")
    store_id = _text(item.get("store_id"), f("store_id"), required=True, limit=64)
    if not _STORE_ID.match(store_id):
        raise ApiError(422, f("store_id"), "may hold letters, digits, _ . - (64 at most)")
    admin_id = _text(item.get("admin_id"), f("admin_id"), limit=64)
    if admin_id is not None and not _STORE_ID.match(admin_id):
        raise ApiError(422, f("admin_id"), "may hold letters, digits, _ . - (64 at most)")
    customer_id = _text(item.get("customer_id"), f("customer_id"), limit=128)
    if customer_id is not None:
        if not _CUSTOMER_ID.match(customer_id):
            raise ApiError(422, f("customer_id"), "may hold letters, digits, _ . - : @ + (128 at most)")
        if customer_id.lower() in DISALLOWED_CUSTOMER_IDS:
            raise ApiError(422, f("customer_id"), f"{customer_id!r} is not allowed as a MoEngage customer_id")
    return CustomerIn(index, path, number, email, name, gender, amount, channel, store_id, admin_id,
                      customer_id)


def parse_customers(body: Any, *, max_amount: int, max_customers: int) -> list[CustomerIn]:
    """Every element validated, or the first ApiError; nothing partial."""
    if not isinstance(body, dict):
        raise ApiError(422, "body", 'must be a JSON object {"customer_details": ...}')
    if "customer_details" not in body:
        raise ApiError(422, "customer_details", "is required")
    details = body["customer_details"]
    if isinstance(details, dict):
        return [_customer(details, 0, "customer_details", max_amount)]
    if not isinstance(details, list):
        raise ApiError(422, "customer_details", "must be an object or a list of objects")
    if not details:
        raise ApiError(422, "customer_details", "is empty")
    if len(details) > max_customers:
        raise ApiError(422, "customer_details", f"holds more than {max_customers} customers")
    return [_customer(item, i, f"customer_details[{i}]", max_amount) for i, item in enumerate(details)]
