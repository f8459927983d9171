"""Checks of the connector payload that need no database, run before anything is written.

The payload is the Xeno-style ``{"customer_details": {...}}`` or ``{"customer_details": [...]}``
with ``number, email_id, name, gender, amount, channel, store_id, admin_id``, an optional
``customer_id`` (the user's MoEngage ID, e.g. ``"{{UserAttribute['ID']}}"``) and an optional
purchase id (``purchase_id``, else ``order_id``, else ``transaction_id``). MoEngage renders a
missing user attribute as an empty string, so ``""`` means "not given" for optional fields.

One odd field must not cost a customer their enrolment and purchase, so:

* Required fields refuse the request (422 naming the field, e.g. ``customer_details[2].store_id``):
  the body's shape, ``number`` missing or not text/number (whether it reads as a phone is
  decided later, with the program's country), ``store_id`` missing or malformed.
* An odd *optional* field is left out (None) and reported in ``CustomerIn.problems`` as a
  ``FieldProblem`` (full field path and a reason that never echoes the value).

Readings of the optional fields:

* ``amount``: a JSON number or text such as ``1,299.00``, ``1,00,000.50`` (Indian grouping),
  ``₹499``, ``Rs. 499``, ``INR 499``, ``$12.50``, ``499 INR``, ``499/-``; rounded half up to
  0.01 (float noise such as ``1499.6999999999998`` -> 1499.70). The currency mark is not
  checked against the program's. Negative, over ``max_amount``, or unreadable (``abc``,
  ``1.299,00``: a decimal comma is ambiguous) -> problem. Empty or missing: no purchase.
* ``gender``: free text mapped to male/female/other (the schema's values); "prefer not to
  say"-like answers -> None without problem; anything else -> problem.
* ``email_id``: placeholders (``null``, ``N/A``, ``none``, ``-`` ...) -> None without problem;
  internationalised addresses (Unicode local part and domain) are accepted; the structure is
  checked (one ``@``, a domain with a dot, no spaces or control characters, 254 at most).
* ``customer_id`` and the purchase id: any printable text, 1-128 characters after stripping;
  a customer_id in MoEngage's disallowed list (``unknown``, ``null`` ..., any case) -> problem.
  The purchase id is the first of its keys that holds a value; an unusable one is not replaced
  by the next key's (the problem names the key that was read).
* ``name`` with characters that have no place in a name, odd ``channel``/``admin_id`` -> problem.
* Any optional text that is still an unrendered template (``{{...}}``) -> problem.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation, ROUND_HALF_UP
from typing import Any

from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.moengage.rules import DISALLOWED_CUSTOMER_IDS

_STORE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_CHANNEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,39}$")
# Apostrophes and hyphens are real in names (O'Brien, Anne-Marie); these are not.
_NAME_BAD = re.compile(r"[\x00-\x1f\x7f<>\"`;=\\{}]|--")
_TEMPLATE = re.compile(r"\{\{.*\}\}|\{%.*%\}", re.S)
_MAX_ID = 128
_PURCHASE_KEYS = ("purchase_id", "order_id", "transaction_id")
# What people and CRMs put in a field they have no value for.
_PLACEHOLDERS = frozenset({"", "null", "n/a", "na", "none", "undefined", "-", "nil", "unknown"})

_CURRENCY = (r"₹|rs\.?|inr|\$|us\$|usd|€|eur|£|gbp|¥|jpy|cny|aed|sar|qar|kwd|omr|bhd|sgd|aud|cad|"
             r"nzd|hkd|myr|idr|php|thb|lkr|npr|bdt|pkr|zar|chf")
_CURRENCY_BEFORE = re.compile(rf"^(?:{_CURRENCY})\s*", re.I)
_CURRENCY_AFTER = re.compile(rf"\s*(?:{_CURRENCY}|/-)$", re.I)
# Plain 1299.50, western 1,299.50 or Indian 1,00,000.50 grouping; a "." is always the decimal point.
_AMOUNT = re.compile(r"^(?:[0-9]{1,15}|[0-9]{1,3}(?:,[0-9]{3})+|[0-9]{1,2}(?:,[0-9]{2})*,[0-9]{3})"
                     r"(?:\.[0-9]{0,20})?$|^\.[0-9]{1,20}$")

_GENDERS = {
    "male": "male", "m": "male", "man": "male", "boy": "male",
    "female": "female", "f": "female", "woman": "female", "girl": "female",
    "other": "other", "o": "other", "transgender": "other", "trans": "other",
    "non-binary": "other", "non binary": "other", "nonbinary": "other", "nb": "other",
    "genderqueer": "other", "gender queer": "other",
}
_GENDER_UNSAID = _PLACEHOLDERS | {
    "u", "not specified", "unspecified", "not disclosed", "undisclosed", "prefer not to say",
    "prefer not to disclose", "rather not say", "not known", "not applicable",
}
_EMAIL_LOCAL_MARKS = frozenset(".!#$%&'*+/=?^_`{|}~-")


class _Unusable(ValueError):
    """An optional field's value cannot be used; the message is the reason (never the value)."""


@dataclass(frozen=True)
class FieldProblem:
    """An optional field left out of a customer, so the caller can say what it ignored."""

    field: str   # full path, e.g. "customer_details[2].gender"
    reason: str  # never echoes the value (it may be personal data)


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
    purchase_id: str | None = None  # the caller's id of the purchase (purchase_id/order_id/transaction_id)
    problems: tuple[FieldProblem, ...] = ()  # optional fields left out, and why

    def audit(self) -> dict[str, Any]:
        data = asdict(self)
        data["amount"] = None if self.amount is None else str(self.amount)
        data["problems"] = [asdict(p) for p in self.problems]
        return data


def idempotency_key_ok(value: str) -> bool:
    """Whether an Idempotency-Key header can be used: 1-255 printable characters, spaces and
    non-ASCII included (senders build keys from event names), no control characters."""
    return isinstance(value, str) and 1 <= len(value) <= 255 and value.isprintable()


def _required(value: Any, field: str, limit: int) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ApiError(422, field, "is required")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ApiError(422, field, "must be a string")
    text = str(value).strip()
    if len(text) > limit:
        raise ApiError(422, field, f"is longer than {limit} characters")
    return text


def _number(value: Any, field: str) -> str:
    """The phone as raw text: a JSON number as its digits (a float's repr is read by phone.py)."""
    if isinstance(value, float):
        return repr(value)
    return _required(value, field, 32)


def _text(value: Any, limit: int) -> str | None:
    """Optional text, stripped; None when not given."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Unusable("must be a string")
    text = str(value).strip()
    if len(text) > limit:
        raise _Unusable(f"is longer than {limit} characters")
    if _TEMPLATE.search(text):
        raise _Unusable("is an unrendered template")
    return text


def _read_amount(value: Any, max_amount: int) -> Decimal | None:
    """A purchase amount, rounded half up to 0.01; None when not given."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Unusable("must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Unusable("must be a finite number")
    if isinstance(value, str):
        text = value.strip()
        negative = text.startswith("-")
        text = _CURRENCY_BEFORE.sub("", text.lstrip("-").strip(), count=1)
        negative = negative or text.startswith("-")
        text = _CURRENCY_AFTER.sub("", text.lstrip("-").strip(), count=1)
        if not _AMOUNT.match(text):
            raise _Unusable("is not an amount such as 1299.50 or 1,299.50")
        amount = Decimal(text.replace(",", ""))
    else:
        amount = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
        negative = amount < 0
    if negative and amount != 0:
        raise _Unusable("must not be negative")
    if abs(amount) > max_amount:
        raise _Unusable(f"exceeds the maximum of {max_amount}")
    return abs(amount).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _read_gender(value: Any) -> str | None:
    text = _text(value, 40)
    if text is None:
        return None
    key = " ".join(text.lower().replace("_", " ").split())
    if key in _GENDERS:
        return _GENDERS[key]
    if key in _GENDER_UNSAID:
        return None
    raise _Unusable("must be male, female, other or empty")


def _email_part_ok(part: str, marks: frozenset[str]) -> bool:
    """Letters, digits and combining marks of any script, plus the given ASCII marks."""
    return bool(part) and all(ch in marks or unicodedata.category(ch)[0] in "LNM" for ch in part)


def _read_email(value: Any) -> str | None:
    text = _text(value, 254)
    if text is None or text.lower() in _PLACEHOLDERS:
        return None
    local, at, domain = text.partition("@")
    labels = domain.split(".")
    if (not at or "@" in domain or not _email_part_ok(local, _EMAIL_LOCAL_MARKS)
            or local.startswith(".") or local.endswith(".") or ".." in local or len(labels) < 2
            or not all(_email_part_ok(label, frozenset("-")) and len(label) <= 63
                       and not label.startswith("-") and not label.endswith("-") for label in labels)):
        raise _Unusable("is not an email address")
    return text


def _read_name(value: Any) -> str | None:
    text = _text(value, 200)
    if text is not None and _NAME_BAD.search(text):
        raise _Unusable("contains characters not allowed in a name")
    return text


def _read_id(value: Any) -> str | None:
    """Any printable text, 1-128 characters after stripping (MoEngage allows any string)."""
    text = _text(value, _MAX_ID)
    if text is not None and not text.isprintable():
        raise _Unusable("contains control or invisible characters")
    return text


def _read_customer_id(value: Any) -> str | None:
    text = _read_id(value)
    if text is not None and text.lower() in DISALLOWED_CUSTOMER_IDS:
        raise _Unusable("is one of the ids MoEngage does not allow as customer_id")
    return text


#: What a campaign renders for an attribute the event does not carry: never a purchase's id, since
#: every such purchase would share it and only the first would ever count.
_PLACEHOLDER_IDS = frozenset({"null", "none", "nil", "undefined", "nan", "na", "n/a", "0", "-", "-1", "unknown",
                              "false", "true"})


def _read_purchase_id(value: Any) -> str | None:
    """Any printable text up to 1,000 characters (a long id is digested into the transaction id)."""
    text = _text(value, 1000)
    if text is None:
        return None
    if not text.isprintable():
        raise _Unusable("contains control or invisible characters")
    if text.lower() in _PLACEHOLDER_IDS:
        raise _Unusable("is a placeholder, not a purchase's id (is the event attribute set?)")
    return text


def _matching(pattern: re.Pattern[str], limit: int, rule: str) -> Callable[[Any], str | None]:
    """A reader of optional text that must match ``pattern``."""
    def read(value: Any) -> str | None:
        text = _text(value, limit)
        if text is not None and not pattern.match(text):
            raise _Unusable(rule)
        return text
    return read


_read_channel = _matching(_CHANNEL, 40, "may hold letters, digits, space, _ . - (40 at most)")
_read_admin_id = _matching(_STORE_ID, 64, "may hold letters, digits, _ . - (64 at most)")


def _purchase_key(item: dict[str, Any]) -> str:
    """The first of purchase_id/order_id/transaction_id that holds a value."""
    for key in _PURCHASE_KEYS:
        value = item.get(key)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return key
    return _PURCHASE_KEYS[0]


def _customer(item: Any, index: int, path: str, max_amount: int) -> CustomerIn:
    if not isinstance(item, dict):
        raise ApiError(422, path, "must be an object")
    problems: list[FieldProblem] = []

    def optional(key: str, read: Callable[[Any], Any]) -> Any:
        try:
            return read(item.get(key))
        except _Unusable as exc:
            problems.append(FieldProblem(f"{path}.{key}", str(exc)))
            return None

    number = _number(item.get("number"), f"{path}.number")
    store_id = _required(item.get("store_id"), f"{path}.store_id", 64)
    if not _STORE_ID.match(store_id):
        raise ApiError(422, f"{path}.store_id", "may hold letters, digits, _ . - (64 at most)")
    return CustomerIn(
        index, path, number,
        email=optional("email_id", _read_email),
        name=optional("name", _read_name),
        gender=optional("gender", _read_gender),
        amount=optional("amount", lambda v: _read_amount(v, max_amount)),
        channel=optional("channel", _read_channel),
        store_id=store_id,
        admin_id=optional("admin_id", _read_admin_id),
        customer_id=optional("customer_id", _read_customer_id),
        purchase_id=optional(_purchase_key(item), _read_purchase_id),
        problems=tuple(problems))


def parse_customers(body: Any, *, max_amount: int, max_customers: int) -> list[CustomerIn]:
    """Every element read, or the first ApiError (a required field); nothing partial. Odd
    optional fields are left out and listed in each customer's ``problems``."""
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
