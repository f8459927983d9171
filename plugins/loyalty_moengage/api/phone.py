"""Phone numbers as people (and MoEngage templates) write them, read as E.164 candidates.

The rule (documented in the README):

1. MoEngage renders a numeric user attribute as a float: ``9876543210.0``, ``9876543210.00``,
   ``9.87654321E9``, ``9.87654321e+09``. A whole-number float (text or JSON number) is read as
   its integer; the ``.0`` is never a digit of the number. A fractional one
   (``9876543210.5``) is refused.
2. Otherwise only digits, spaces and ``+ - . ( ) /`` are allowed, at most 32 characters;
   letters (vanity numbers, extensions) are refused.
3. A leading ``00`` means ``+`` (international dialling prefix).
4. A number starting with ``+`` is read as international only.
5. Otherwise it has two readings: national in the program's ``default_country`` (a trunk ``0``
   is dropped: ``09876543210`` -> ``+919876543210`` for IN) and international without its
   ``+`` (``14155550123``: a ``+`` that became a space in a query string, or a number stored
   without it).
6. A reading must be a *possible* number for its country (length check) and match the
   schema's ``^\\+[1-9][0-9]{6,14}$``. Readings that phonenumbers also calls *valid* come
   first (national, then international), then the possible-only ones (national, then
   international), so ``1 415 555 0123`` in an IN program is ``+14155550123`` first, not the
   merely possible ``+9114155550123``.

``phone_candidates`` returns every reading in that order, so a caller can match an existing
member by any of them; it should create a new member only from a reading for which
``is_valid_reading`` holds (never a phantom member from a misread phone). ``normalize_phone``
is the first candidate. Error messages never echo the number.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

import phonenumbers

_ALLOWED = re.compile(r"^[0-9 +\-.()/]{1,32}$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
# Float renderings: "9876543210.0", "+919876543210.00" (a 1-2 digit fraction that is not zero
# is a float too, refused; longer ones may be dot-separated groups such as "98765.43210").
_FLOAT = re.compile(r"^(\+?[0-9]{6,17})\.([0-9]{1,6})$")
# Scientific renderings: "9.87654321E9", "9.87654321e+09".
_SCIENTIFIC = re.compile(r"^\+?[0-9](?:\.[0-9]{1,17})?[eE]\+?[0-9]{1,2}$")


class PhoneError(ValueError):
    """The text cannot be read as a phone number; the message says why, without echoing it."""


def _possible(text: str, region: str | None) -> tuple[str, phonenumbers.PhoneNumber] | None:
    """(E.164, parsed number) of one reading, or None when it is not even a possible number.
    Whether it is *valid* is asked later, and only when the order of two readings depends on it."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not _E164.match(e164):
        return None
    return e164, number


def _reading(text: str, region: str | None) -> tuple[str, bool] | None:
    """(E.164, valid) of one reading, or None when it is not even a possible number."""
    found = _possible(text, region)
    return None if found is None else (found[0], phonenumbers.is_valid_number(found[1]))


def _whole(value: Decimal | float) -> str:
    """The integer a float rendering stands for; a fraction would be a digit we cannot place."""
    if isinstance(value, float) and not math.isfinite(value):
        raise PhoneError("is not a number")
    if value != int(value):
        raise PhoneError("is a fractional number, not a phone number")
    return str(int(value))


def _text(raw: str | int | float) -> str:
    """``raw`` as phone text: JSON numbers and MoEngage's float renderings as their integer."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise PhoneError("must be a string")
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        return _whole(raw)
    text = raw.strip()
    if "." not in text and "e" not in text and "E" not in text:
        return text     # neither a float nor a scientific rendering (both need one of these)
    if _SCIENTIFIC.match(text):
        try:
            return ("+" if text.startswith("+") else "") + _whole(Decimal(text.lstrip("+")))
        except InvalidOperation:
            raise PhoneError("is not a number") from None
    match = _FLOAT.match(text)
    if match and not match.group(2).strip("0"):
        return match.group(1)
    if match and len(match.group(2)) <= 2:
        raise PhoneError("is a fractional number, not a phone number")
    return text


#: What _ALLOWED lets through besides the digits: dropped to leave the digits.
_PUNCTUATION = str.maketrans("", "", " +-.()/")


def phone_candidates(raw: str | int | float, default_country: str) -> list[str]:
    """Every E.164 reading of ``raw``, most likely first (see the module rule), or PhoneError.

    The same readings and order as parsing every reading and asking each whether it is valid,
    with less phonenumbers work (the Content API reads a phone on every call): a reading
    ``+0...`` is never a number (no country code starts with 0), so it is not parsed, and
    validity is asked only where it decides the order of two different readings."""
    text = _text(raw)
    if not text:
        raise PhoneError("is empty")
    if not _ALLOWED.match(text):
        raise PhoneError("may hold only digits, spaces and + - . ( ) /, at most 32 characters")
    plus = text.startswith("+")
    if text.count("+") > (1 if plus else 0):
        raise PhoneError("has a misplaced '+'")
    digits = text.translate(_PUNCTUATION)
    if not 6 <= len(digits) <= 17:
        raise PhoneError("has too few or too many digits")
    if digits.startswith("00") and not plus:
        plus, digits = True, digits[2:]
    if plus:
        national = None
        international = _possible("+" + digits, None)
    else:
        national = _possible(digits, default_country.upper())
        international = None if digits.startswith("0") else _possible("+" + digits, None)
    if national is None or international is None or national[0] == international[0]:
        found = national or international
        if found is None:
            raise PhoneError(f"is not a possible phone number (default country {default_country.upper()})")
        return [found[0]]
    # Two different readings: valid ones first (national, then international), then the others.
    if not phonenumbers.is_valid_number(national[1]) and phonenumbers.is_valid_number(international[1]):
        return [international[0], national[0]]
    return [national[0], international[0]]


def normalize_phone(raw: str | int | float, default_country: str) -> str:
    """The most likely E.164 reading of ``raw`` (see the module rule) or PhoneError."""
    return phone_candidates(raw, default_country)[0]


def is_valid_reading(e164: str) -> bool:
    """Whether phonenumbers calls this E.164 number valid, not merely possible: only such a
    reading may create a new member."""
    if not isinstance(e164, str) or not _E164.match(e164):
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return False


def readings_to_match(candidates: list[str]) -> list[str]:
    """The readings a member may be found by: the likeliest alone when it is valid, so a member
    under a less likely reading never answers for this number (``6499962283`` in India is not New
    Zealand's ``+64 9996 2283``); every reading when the likeliest is only possible."""
    if len(candidates) > 1 and is_valid_reading(candidates[0]):
        return candidates[:1]
    return candidates
