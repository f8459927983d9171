"""One odd optional field no longer costs an enrolment: it is left out and reported, while the
required fields still refuse the request (no database)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.validation import CustomerIn, FieldProblem, idempotency_key_ok, parse_customers
from loyalty_moengage.moengage.rules import DISALLOWED_CUSTOMER_IDS

BASE = {"number": "9876543210", "store_id": "A123"}
MAX = 1_000_000


def one(**fields) -> CustomerIn:
    [c] = parse_customers({"customer_details": {**BASE, **fields}}, max_amount=MAX, max_customers=10)
    return c


def left_out(field: str, **fields) -> FieldProblem:
    """The customer still parses, the field is None and exactly one problem names it."""
    c = one(**fields)
    [problem] = c.problems
    assert problem.field == f"customer_details.{field}"
    return problem


# -- amount -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("1,299.00", "1299.00"), ("1,00,000.50", "100000.50"), ("1,23,456", "123456.00"), ("₹499", "499.00"),
    ("₹ 1,299", "1299.00"), ("Rs. 499", "499.00"), ("Rs.499", "499.00"), ("rs 499", "499.00"),
    ("INR 499", "499.00"), ("inr499", "499.00"), ("$12.50", "12.50"), ("USD 12.5", "12.50"),
    ("499 INR", "499.00"), ("499/-", "499.00"), ("1499.6999999999998", "1499.70"), ("0.005", "0.01"),
    ("0.004", "0.00"), ("  499 ", "499.00"), ("\u00a0499\u00a0", "499.00"), ("499.", "499.00"), (".5", "0.50"),
    ("0", "0.00"), ("1000000", "1000000.00"), (499, "499.00"), (0, "0.00"), (499.5, "499.50"),
    (1499.6999999999998, "1499.70"), (1e3, "1000.00"), ("1234.50", "1234.50"),
])
def test_amount_readings(raw, expected):
    c = one(amount=raw)
    assert c.amount == Decimal(expected) and c.problems == ()


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_no_amount_is_an_enrolment_without_purchase(raw):
    c = one(amount=raw)
    assert c.amount is None and c.problems == ()


def test_missing_amount_is_no_problem():
    assert one().amount is None and one().problems == ()


@pytest.mark.parametrize("raw, reason", [
    ("-5", "negative"), (-5, "negative"), (-0.5, "negative"), ("₹-5", "negative"), ("-₹5", "negative"),
    ("1000000.01", "maximum"), (1e12, "maximum"), (10**30, "maximum"), ("9,99,99,999", "maximum"),
    ("abc", "amount"), ("1.299,00", "amount"), ("12,50", "amount"), ("1,2,3", "amount"), ("1e5", "amount"),
    ("NaN", "amount"), ("Infinity", "amount"), ("12abc", "amount"), ("1; DROP TABLE loyalty.members", "amount"),
    ("{{EventAttribute['price']}}", "amount"), ("१२३", "amount"), ("1 299", "amount"),
    (True, "number"), ([499], "number"), ({"v": 1}, "number"), (float("nan"), "finite"), (float("inf"), "finite"),
])
def test_unusable_amount_is_left_out_with_a_problem(raw, reason):
    problem = left_out("amount", amount=raw)
    assert one(amount=raw).amount is None
    assert reason in problem.reason


# -- gender -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    *[(v, "male") for v in ("male", "m", "man", "boy", "Male", "MALE", " M ")],
    *[(v, "female") for v in ("female", "f", "woman", "girl", "Female", "FEMALE")],
    *[(v, "other") for v in ("transgender", "trans", "non-binary", "nonbinary", "Non Binary", "nb", "NB",
                             "genderqueer", "other", "o", "Other")],
    *[(v, None) for v in ("Not Disclosed", "prefer not to say", "Prefer_not_to_say", "unknown", "na", "n/a",
                          "N/A", "none", "null", "NULL", "undefined", "-", "", None)],
])
def test_gender_readings(raw, expected):
    c = one(gender=raw)
    assert c.gender == expected and c.problems == ()


@pytest.mark.parametrize("raw", ["' OR 1=1", "Alien", "x" * 41, 1, True, ["male"]])
def test_odd_gender_is_left_out(raw):
    left_out("gender", gender=raw)
    assert one(gender=raw).gender is None


# -- email ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["null", "N/A", "NA", "none", "None", "undefined", "-", "nil", "NIL", "", None])
def test_email_placeholders_are_no_email_and_no_problem(raw):
    c = one(email_id=raw)
    assert c.email is None and c.problems == ()


@pytest.mark.parametrize("raw", [
    "ravi@example.com", "Ravi.Kumar+tag@mail.example.co.in", "o'brien@example.ie", "josé@exämple.com",
    "用户@例子.广告", "राम@उदाहरण.भारत", "user@xn--80ak6aa92e.com", "a_b-c@sub-domain.example.org",
])
def test_email_accepted_including_internationalised(raw):
    c = one(email_id=raw)
    assert c.email == raw and c.problems == ()


@pytest.mark.parametrize("raw", [
    "not-an-email", "a@b", "@example.com", "ravi@", "ra vi@example.com", "a@b.com'; DROP TABLE x;--",
    "a@@b.com", "a@b@c.com", ".a@b.com", "a.@b.com", "a..b@c.com", "a@-b.com", "a@b-.com", "a@b..com",
    "a\x00@b.com", "a\n@b.com", "a\u200b@b.com", "x" * 250 + "@b.com", "{{UserAttribute['Email (Standard)']}}",
    12345, ["a@b.com"],
])
def test_malformed_email_is_left_out_without_echoing_it(raw):
    problem = left_out("email_id", email_id=raw)
    assert one(email_id=raw).email is None
    assert str(raw).strip() not in problem.reason


# -- customer_id ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("moe-user_42@x.com:+1.a", "moe-user_42@x.com:+1.a"), ("  has space  ", "has space"), ("#42/7", "#42/7"),
    ("José Müller", "José Müller"), ("用户-7", "用户-7"), ("abc'; DROP TABLE loyalty.members;--",
                                                        "abc'; DROP TABLE loyalty.members;--"),
    ("x" * 128, "x" * 128), (12345, "12345"), ("", None), (None, None),
])
def test_customer_id_accepts_any_printable_text(raw, expected):
    c = one(customer_id=raw)
    assert c.customer_id == expected and c.problems == ()


@pytest.mark.parametrize("raw", sorted(DISALLOWED_CUSTOMER_IDS - {""}) + ["Unknown", " NULL ", "N/A", "ID"])
def test_disallowed_customer_id_is_left_out_and_the_member_still_enrolled(raw):
    c = one(customer_id=raw, amount="499")
    [problem] = c.problems
    assert c.customer_id is None and c.amount == Decimal("499.00") and c.number == "9876543210"
    assert problem == FieldProblem("customer_details.customer_id",
                                   "is one of the ids MoEngage does not allow as customer_id")


@pytest.mark.parametrize("raw", ["x" * 129, "a\tb", "a\x00b", "a\u200bb", "{{UserAttribute['ID']}}", True, ["u-1"],
                                 1.5])
def test_unusable_customer_id_is_left_out(raw):
    left_out("customer_id", customer_id=raw)


# -- name, channel, admin_id ------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["Robert'); DROP TABLE loyalty.members;--", "{{ 7*7 }}", "<script>alert(1)</script>",
                                 "x" * 201, "a\x00b", "a;b", ["Ravi"]])
def test_odd_name_is_left_out(raw):
    left_out("name", name=raw)
    assert one(name=raw).name is None


@pytest.mark.parametrize("raw", ["Ravi Kumar", "O'Brien", "Anne-Marie", "José Müller", "राम", "  Asha  "])
def test_names_kept(raw):
    c = one(name=raw)
    assert c.name == raw.strip() and c.problems == ()


@pytest.mark.parametrize("field, raw", [("channel", "Web'; --"), ("channel", "x" * 41), ("channel", {"a": 1}),
                                        ("admin_id", "1 OR 1=1"), ("admin_id", "x" * 65), ("admin_id", True)])
def test_odd_channel_or_admin_id_is_left_out(field, raw):
    left_out(field, **{field: raw})
    assert getattr(one(**{field: raw}), field) is None


def test_channel_and_admin_id_kept():
    c = one(channel="Website", admin_id=123)
    assert (c.channel, c.admin_id, c.problems) == ("Website", "123", ())


# -- purchase id ------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, expected", [
    ({"purchase_id": "P-1"}, "P-1"), ({"order_id": " ORD #7/2 "}, "ORD #7/2"), ({"transaction_id": "T1"}, "T1"),
    ({"purchase_id": "", "order_id": "O1", "transaction_id": "T1"}, "O1"),
    ({"purchase_id": None, "order_id": "  ", "transaction_id": "T1"}, "T1"),
    ({"purchase_id": "P", "order_id": "O"}, "P"), ({"order_id": 98765}, "98765"), ({"order_id": "订单-1"}, "订单-1"),
    ({}, None), ({"purchase_id": ""}, None),
])
def test_purchase_id_is_the_first_given_of_its_keys(fields, expected):
    c = one(**fields)
    assert c.purchase_id == expected and c.problems == ()


@pytest.mark.parametrize("fields, field", [
    ({"purchase_id": "x" * 1001}, "purchase_id"), ({"purchase_id": "null"}, "purchase_id"), ({"order_id": "a\nb"}, "order_id"),
    ({"transaction_id": True}, "transaction_id"), ({"order_id": "{{EventAttribute['order_id']}}"}, "order_id"),
    ({"purchase_id": "a\x7fb", "order_id": "O1"}, "purchase_id"),
])
def test_unusable_purchase_id_is_left_out(fields, field):
    left_out(field, **fields)
    assert one(**fields).purchase_id is None


# -- required fields, several problems, audit --------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (9876543210, "9876543210"), (9876543210.0, "9876543210.0"), (919876543210.0, "919876543210.0"),
    (" 98765 43210 ", "98765 43210"), ("9876543210.0", "9876543210.0"),
])
def test_number_is_kept_as_raw_text(raw, expected):
    assert one(number=raw).number == expected


@pytest.mark.parametrize("fields, field", [
    ({"number": None}, "number"), ({"number": ""}, "number"), ({"number": {"$ne": 1}}, "number"),
    ({"number": True}, "number"), ({"number": "9" * 33}, "number"), ({"store_id": None}, "store_id"),
    ({"store_id": "A123' OR '1'='1"}, "store_id"), ({"store_id": 1.5}, "store_id"),
])
def test_required_fields_still_refuse_the_request(fields, field):
    with pytest.raises(ApiError) as info:
        one(**fields)
    assert info.value.status == 422 and info.value.field == f"customer_details.{field}"


def test_problems_name_the_list_element_and_keep_the_rest():
    body = {"customer_details": [
        {**BASE, "amount": "1,299.00", "gender": "F"},
        {**BASE, "email_id": "ravi@@x", "name": "Ravi", "gender": "Alien", "amount": "-1", "customer_id": "null"},
    ]}
    first, second = parse_customers(body, max_amount=MAX, max_customers=10)
    assert first.problems == () and first.amount == Decimal("1299.00") and first.gender == "female"
    assert [p.field for p in second.problems] == [
        "customer_details[1].email_id", "customer_details[1].gender", "customer_details[1].amount",
        "customer_details[1].customer_id"]
    assert second.name == "Ravi" and (second.email, second.gender, second.amount, second.customer_id) == (None,) * 4


def test_a_required_field_in_any_element_refuses_the_whole_request():
    body = {"customer_details": [{**BASE, "gender": "Alien"}, {**BASE, "store_id": ""}]}
    with pytest.raises(ApiError) as info:
        parse_customers(body, max_amount=MAX, max_customers=10)
    assert info.value.field == "customer_details[1].store_id"


def test_problems_never_echo_personal_data():
    c = one(email_id="ravi kumar@example.com", customer_id="null", name="<Ravi>", amount="₹-1,299")
    text = json.dumps(c.audit()["problems"])
    assert "ravi" not in text.lower() and "1,299" not in text and "null" not in text


def test_audit_is_json_with_problems_as_dicts():
    c = one(amount="₹499", gender="Alien", order_id="O-1")
    data = c.audit()
    assert data["amount"] == "499.00" and data["purchase_id"] == "O-1"
    assert data["problems"] == [{"field": "customer_details.gender", "reason": "must be male, female, other or empty"}]
    json.dumps(data)


def test_field_problem_is_frozen():
    problem = FieldProblem("customer_details.gender", "odd")
    with pytest.raises(AttributeError):
        problem.reason = "x"  # type: ignore[misc]


# -- Idempotency-Key --------------------------------------------------------------------------

@pytest.mark.parametrize("value, ok", [
    ("evt-42", True), ("has space", True), (" leading and trailing ", True), ("Kauf #42 für José", True),
    ("用户事件", True), ("x" * 255, True), ("x" * 256, False), ("", False), ("a\tb", False), ("a\nb", False),
    ("a\x00b", False), ("a\x7fb", False), ("\udcff", False), ("a\u200bb", False), (None, False), (42, False),
])
def test_idempotency_key_ok(value, ok):
    assert idempotency_key_ok(value) is ok
