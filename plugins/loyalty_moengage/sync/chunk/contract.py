"""The SQL output contract between analysts' templates and the code.

Event templates return ``event_id, event_name, customer_id, event_time`` and any further
columns, each of which becomes an event attribute. The member template returns
``customer_id`` and the guide's 13 attributes (14 columns), and any further column becomes a user
attribute.
A template that breaks the contract fails the task with a message naming the template and the
column; a row that breaks it is quarantined with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loyalty_moengage.moengage.rules import (  # noqa: F401  (MoEngage's rules, named here for templates)
    DISALLOWED_CUSTOMER_IDS,
    MAX_CUSTOMER_ID_CHARS,
    MAX_EVENT_ATTRIBUTES,
    MAX_NAME_CHARS,
    MAX_SAFE_INTEGER,
    MAX_VALUE_CHARS,
    attribute_name_problem,
)
from loyalty_moengage.paths import sql_dir

EVENT_NAMES = (
    "loyalty_points_earned",
    "loyalty_points_redeemed",
    "loyalty_points_expired",
    "loyalty_points_expiring_soon",
    "loyalty_tier_upgraded",
    "loyalty_tier_downgraded",
    "loyalty_segment_entered",
    "loyalty_segment_exited",
    "loyalty_redemption_reversed",
    "loyalty_member_activated",
    "loyalty_member_suspended",
)
EARNING_TYPES = ("accrual", "campaign_bonus", "manual_bonus", "tier_bonus")
MEMBER_STATUSES = ("active", "inactive", "suspended", "blocked", "cancelled")
MEMBER_ATTRIBUTES = (
    "points_available",
    "points_accrued_lifetime",
    "points_redeemed_lifetime",
    "points_expired_lifetime",
    "tier",
    "status",
    "enrollment_date",
    "last_transaction_date",
    "total_transactions",
    "days_since_last_activity",
    "points_expiring_30d",
    "points_expiring_60d",
    "points_expiring_90d",
)
# The guide's tables name these 13 attributes; with customer_id they are the 14 columns the
# member template must return.
EVENT_REQUIRED = ("event_id", "event_name", "customer_id", "event_time")
MEMBER_REQUIRED = ("customer_id",) + MEMBER_ATTRIBUTES

# Columns that must hold numbers when present (a text column with "abc" is quarantined).
NUMERIC_COLUMNS = frozenset({
    "points", "points_returned", "amount", "days_out",
    "points_available", "points_accrued_lifetime", "points_redeemed_lifetime",
    "points_expired_lifetime", "total_transactions", "days_since_last_activity",
    "points_expiring_30d", "points_expiring_60d", "points_expiring_90d",
})

# Columns that cannot be negative (points_available can: a balance may be overdrawn).
NON_NEGATIVE_COLUMNS = frozenset({
    "points", "points_returned", "amount", "days_out",
    "points_accrued_lifetime", "points_redeemed_lifetime", "points_expired_lifetime",
    "total_transactions", "days_since_last_activity",
    "points_expiring_30d", "points_expiring_60d", "points_expiring_90d",
})
# Dates and times are sent only within these years (a contract choice, not a MoEngage limit):
# 'infinity', year 0001 or 9999 are placeholders on loyalty platforms, never real dates.
# SENDABLE_YEAR_RE must match the same range; include/sql/members/attributes.sql uses 2200 too.
MIN_SENDABLE_YEAR, MAX_SENDABLE_YEAR = 1900, 2199
SENDABLE_YEAR_RE = "(19|20|21)[0-9]{2}"
# A member attribute computed from another one is left out with it (a last transaction in
# year 0001 makes days_since_last_activity meaningless too).
DERIVED_ATTRIBUTES = {"days_since_last_activity": "last_transaction_date"}
# In event rows a bad value in these columns quarantines the event; a bad value in any other
# attribute column is left out of the event (with a quarantine record). In member rows only a
# bad customer_id quarantines the row; a bad attribute is left out (with a record).
EVENT_ROW_COLUMNS = frozenset(EVENT_REQUIRED) | NUMERIC_COLUMNS | {"earning_type"}


class ContractError(ValueError):
    """A template's output columns break the contract (names the template and the column)."""


class TemplateError(ContractError):
    """A template Postgres cannot run as written (syntax, unknown column, a bare ``%``)."""


class TemplateDataError(RuntimeError):
    """A template failed on the data of one chunk (an infinite date in arithmetic, say): the
    same rows fail every retry, so the message names the template and the rows to look at."""


@dataclass(frozen=True)
class Template:
    name: str          # path relative to include/sql, e.g. "events/points_earned.sql"
    kind: str          # "events" | "members"
    sql: str


def load_templates(root: Path | None = None) -> list[Template]:
    root = root or sql_dir()
    templates = [
        Template(str(p.relative_to(root)), "events", p.read_text())
        for p in sorted((root / "events").glob("*.sql"))
    ]
    templates += [
        Template(str(p.relative_to(root)), "members", p.read_text())
        for p in sorted((root / "members").glob("*.sql"))
    ]
    if not any(t.kind == "members" for t in templates):
        raise ContractError(f"{root}/members: no member attribute template (*.sql) found")
    return templates


def check_columns(template: Template, columns: list[str]) -> None:
    """Fail loudly when a template's columns break the contract."""
    required = EVENT_REQUIRED if template.kind == "events" else MEMBER_REQUIRED
    for column in required:
        if column not in columns:
            raise ContractError(
                f"SQL template {template.name!r} does not return the required column {column!r} "
                f"(it returns: {', '.join(columns) or 'nothing'}). Required for {template.kind} "
                f"templates: {', '.join(required)}. See README, 'The SQL contract'."
            )
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise ContractError(f"SQL template {template.name!r} returns column {column!r} twice")
        seen.add(column)
        if column in required:
            continue
        problem = attribute_name_problem(column, user=template.kind == "members")
        if problem:
            raise ContractError(f"SQL template {template.name!r}, column {column!r}: {problem}")
    if template.kind == "events":
        extra = [c for c in columns if c not in EVENT_REQUIRED]
        if len(extra) > MAX_EVENT_ATTRIBUTES:
            raise ContractError(
                f"SQL template {template.name!r} returns {len(extra)} attribute columns; "
                f"MoEngage allows at most {MAX_EVENT_ATTRIBUTES} attributes per event"
            )
