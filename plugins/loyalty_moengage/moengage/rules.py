"""MoEngage's own rules on what it accepts: refused customer ids, name and value limits.

They hold for any data sent to MoEngage (the nightly templates, the presence import, the API's
enrolments), so they live beside the hook, not in the loyalty contract that applies them.
Source: MoEngage's Data Tracking Policies and Data API documentation.
"""

from __future__ import annotations

import re

# MoEngage refuses these as customer_id (compared lower-cased and stripped).
DISALLOWED_CUSTOMER_IDS = frozenset({
    "unknown", "guest", "null", "0", "1", "true", "false", "user_attribute_unique_id", "",
    "na", "n/a", "''", "dummy_seller_code", "user_id", "id", "customer_id", "uid", "userid",
    "none", "-2", "-1", "2",
})
# MoEngage stores only the first 512 characters of an attribute value (Data Tracking Policies).
MAX_VALUE_CHARS = 512
# MoEngage documents no length limit for customer_id; a value is kept to its first 512
# characters, so a longer id would be stored as a different one: refused above the value limit.
MAX_CUSTOMER_ID_CHARS = MAX_VALUE_CHARS
# JSON numbers are read as doubles: integers beyond 2^53 lose digits on MoEngage's side.
MAX_SAFE_INTEGER = 2**53
MAX_NAME_CHARS = 200
MAX_EVENT_ATTRIBUTES = 100
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\- ]*$")


def attribute_name_problem(name: str, *, user: bool) -> str | None:
    """Why MoEngage would refuse or mangle this attribute name, or None."""
    if not name:
        return "attribute names cannot be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"attribute names are limited to {MAX_NAME_CHARS} characters by MoEngage"
    if name.lower().startswith("moe_"):
        return "MoEngage reserves the 'moe_' prefix; rename the column"
    if user and name in {"id", "_id"}:
        return "MoEngage blocks the user attribute names 'id' and '_id'; rename the column"
    if not _ATTRIBUTE_NAME.match(name):
        return "use letters, digits, underscores, hyphens or spaces in attribute names"
    return None
