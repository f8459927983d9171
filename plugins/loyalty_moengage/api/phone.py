"""Phone numbers as people write them, normalised to the E.164 form the members table keys on.

The rule (documented in the README):

1. Only digits, spaces, ``+ - . ( ) /`` are allowed, at most 32 characters; letters (vanity
   numbers, extensions) are refused.
2. A leading ``00`` means ``+`` (international dialling prefix).
3. A number starting with ``+`` is read as international.
4. Otherwise it is read as a national number of the program's ``default_country`` (so a trunk
   ``0`` is dropped: ``09876543210`` -> ``+919876543210`` for IN).
5. If that is not a possible number there, the digits are retried as international without the
   ``+`` (``919876543210``, or ``+91 ...`` whose ``+`` arrived as a space in a query string).
6. The result must be a *possible* number for its country (length check, not carrier
   validity: the loyalty platform holds numbers we would not want to reject on a metadata
   update) and match the schema's ``^\\+[1-9][0-9]{6,14}$``.
"""

from __future__ import annotations

import re

import phonenumbers

_ALLOWED = re.compile(r"^[0-9 +\-.()/]{1,32}$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


class PhoneError(ValueError):
    """The text cannot be read as a phone number; the message says why, without echoing it."""


def _try(text: str, region: str | None) -> str | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164 if _E164.match(e164) else None


def normalize_phone(raw: str, default_country: str) -> str:
    """E.164 for ``raw`` (see the module rule) or PhoneError."""
    if not isinstance(raw, str):
        raise PhoneError("must be a string")
    text = raw.strip()
    if not text:
        raise PhoneError("is empty")
    if not _ALLOWED.match(text):
        raise PhoneError("may hold only digits, spaces and + - . ( ) /, at most 32 characters")
    if text.count("+") > 1 or ("+" in text and not text.startswith("+")):
        raise PhoneError("has a misplaced '+'")
    digits = re.sub(r"\D", "", text)
    if not 6 <= len(digits) <= 17:
        raise PhoneError("has too few or too many digits")
    if digits.startswith("00") and not text.startswith("+"):
        text, digits = "+" + digits[2:], digits[2:]
    if text.startswith("+"):
        result = _try("+" + digits, None)
    else:
        result = _try(digits, default_country.upper()) or _try("+" + digits, None)
    if result is None:
        raise PhoneError(f"is not a possible phone number (default country {default_country.upper()})")
    return result
