"""Phone readings as MoEngage renders them: float noise, lost '+', valid before merely possible
(no database)."""

from __future__ import annotations

import pytest

from loyalty_moengage.api.phone import PhoneError, is_valid_reading, normalize_phone, phone_candidates

IN_MOBILE = "+919876543210"


@pytest.mark.parametrize("raw", [
    "9876543210.0", "9876543210.00", " 9876543210.0 ", "9.87654321E9", "9.87654321e+09", "9.87654321e9",
    "9.87654321E+09", 9876543210, 9876543210.0, 919876543210, 919876543210.0, str(919876543210.0),
    "919876543210.0", "+919876543210.0", "+9.1987654321E11",
])
def test_numeric_renderings_read_as_the_integer(raw):
    assert normalize_phone(raw, "IN") == IN_MOBILE
    assert phone_candidates(raw, "IN")[0] == IN_MOBILE


@pytest.mark.parametrize("raw", ["09876543210", "00919876543210", "+91 98765 43210", "919876543210",
                                 "9876543210", "+91-98765-43210", "0091 98765 43210"])
def test_indian_forms_keep_working(raw):
    assert normalize_phone(raw, "IN") == IN_MOBILE


@pytest.mark.parametrize("raw, expected", [
    ("+1 415 555 0123", ["+14155550123"]),
    (" 14155550123", ["+14155550123", "+9114155550123"]),     # '+' decoded as a space
    ("1 415 555 0123", ["+14155550123", "+9114155550123"]),   # stored without its '+'
    ("14155550123", ["+14155550123", "+9114155550123"]),
    ("447911123456", ["+447911123456", "+91447911123456"]),
    ("+44 7911 123456", ["+447911123456"]),
])
def test_a_valid_international_reading_beats_a_possible_national_one(raw, expected):
    assert phone_candidates(raw, "IN") == expected
    assert normalize_phone(raw, "IN") == expected[0]


def test_valid_national_comes_before_valid_international_and_possible_ones_last():
    got = phone_candidates("9876543210", "IN")
    assert got[0] == IN_MOBILE and is_valid_reading(got[0])
    assert all(not is_valid_reading(c) for c in got[1:])
    assert len(got) == len(set(got))


def test_only_possible_readings_are_still_candidates_but_not_valid():
    got = phone_candidates("12345678", "IN")
    assert got and not any(is_valid_reading(c) for c in got)


@pytest.mark.parametrize("raw", ["919876543210", "+91 98765 43210", "00919876543210", "09876543210"])
def test_candidates_have_no_duplicates(raw):
    assert phone_candidates(raw, "IN") == [IN_MOBILE]


@pytest.mark.parametrize("e164, valid", [
    ("+14155550123", True), ("+919876543210", True), ("+9114155550123", False), ("+9112345678", False),
    ("919876543210", False), ("", False), ("+91 98765 43210", False), (None, False), ("+0123456789", False),
])
def test_is_valid_reading(e164, valid):
    assert is_valid_reading(e164) is valid


@pytest.mark.parametrize("raw", [
    "", "   ", "123", "98765abc10", "1-800-FLOWERS", "+91 98765 43210 ext 5", "98765+43210", "++919876543210",
    "9" * 20, "0", "nan", "NaN", "inf", float("nan"), float("inf"), "9876543210.5", "9876543210.25", 9876543210.5,
    "9.8765432105E9", "1e-5", True, None, ["9876543210"], {"$ne": 1}, "٩٨٧٦٥٤٣٢١٠",
])
def test_refuses_what_is_not_a_phone(raw):
    with pytest.raises(PhoneError):
        phone_candidates(raw, "IN")
    with pytest.raises(PhoneError):
        normalize_phone(raw, "IN")


@pytest.mark.parametrize("raw", ["98765abc10", "9876543210.5", "12", "+91 98765 43210 ext 5", "1-800-FLOWERS"])
def test_the_message_never_echoes_the_number(raw):
    with pytest.raises(PhoneError) as info:
        phone_candidates(raw, "IN")
    message = str(info.value)
    assert raw not in message and not any(ch.isdigit() for ch in message.replace("32", ""))
