"""The connector payload's customer_id obeys the same disallowed list as the nightly sync: a
disallowed one is left out (the member is still enrolled) and reported as a problem."""

from __future__ import annotations

import pytest

from loyalty_moengage.api.validation import parse_customers
from loyalty_moengage.sync.chunk import contract

BASE = {"number": "+91 99887 76655", "store_id": "A123"}


def test_api_uses_the_contracts_list():
    from loyalty_moengage.api import validation

    assert validation.DISALLOWED_CUSTOMER_IDS is contract.DISALLOWED_CUSTOMER_IDS


@pytest.mark.parametrize("value", sorted(contract.DISALLOWED_CUSTOMER_IDS - {""}))
def test_every_disallowed_id_is_left_out(value):
    [c] = parse_customers({"customer_details": {**BASE, "customer_id": value.upper()}}, max_amount=10**6,
                          max_customers=10)
    assert c.customer_id is None and [p.field for p in c.problems] == ["customer_details.customer_id"]
