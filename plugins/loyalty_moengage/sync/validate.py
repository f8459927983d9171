"""Row checks: which extracted rows may not be sent, and why.

Checks are vectorised over a whole extract; each returns a reason per row (NULL = fine). The
first failing check names the row's reason. Rejected rows go to the quarantine with the
template, the reason and the row; the rest of the night proceeds.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from loyalty_moengage.sync.contract import (
    DISALLOWED_CUSTOMER_IDS,
    EARNING_TYPES,
    EVENT_NAMES,
    MAX_VALUE_CHARS,
    MEMBER_STATUSES,
    NUMERIC_COLUMNS,
)

_NUMBER_RE = r"^\s*-?[0-9]+(\.[0-9]+)?\s*$"
_TIMESTAMP_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?\+00$"


def _first(reasons: pa.Array, mask: pa.Array, reason: str) -> pa.Array:
    """Set ``reason`` where mask is true and no earlier reason was set."""
    mask = pc.fill_null(mask, False)
    return pc.if_else(pc.and_(mask, pc.is_null(reasons)), pa.scalar(reason), reasons)


def _customer_id_reasons(reasons: pa.Array, cid: pa.Array) -> pa.Array:
    missing = pc.or_(pc.is_null(cid), pc.equal(pc.utf8_trim_whitespace(cid), ""))
    reasons = _first(reasons, missing, "missing customer_id")
    normal = pc.utf8_lower(pc.utf8_trim_whitespace(cid))
    disallowed = pc.is_in(normal, pa.array(sorted(DISALLOWED_CUSTOMER_IDS)))
    return _first(reasons, disallowed, "customer_id is a value MoEngage refuses")


def _value_reasons(reasons: pa.Array, table: pa.Table, kinds: dict[str, str], skip: tuple[str, ...]) -> pa.Array:
    for name in table.column_names:
        if name in skip:
            continue
        col = table.column(name).combine_chunks()
        kind = kinds.get(name, "text")
        if name in NUMERIC_COLUMNS and kind in ("text", "json"):
            bad = pc.and_(pc.is_valid(col), pc.invert(pc.match_substring_regex(col, _NUMBER_RE)))
            reasons = _first(reasons, bad, f"non-numeric {name}")
        if kind in ("text", "json"):
            reasons = _first(reasons, pc.greater(pc.utf8_length(col), MAX_VALUE_CHARS),
                             f"{name} is longer than {MAX_VALUE_CHARS} characters")
    return reasons


def event_reasons(table: pa.Table, kinds: dict[str, str], window_end: datetime) -> pa.Array:
    n = table.num_rows
    reasons = pa.nulls(n, pa.string())
    event_id = table.column("event_id").combine_chunks()
    reasons = _first(reasons, pc.or_(pc.is_null(event_id), pc.equal(event_id, "")), "missing event_id")
    reasons = _customer_id_reasons(reasons, table.column("customer_id").combine_chunks())
    name = table.column("event_name").combine_chunks()
    reasons = _first(reasons, pc.invert(pc.is_in(name, pa.array(EVENT_NAMES))), "unknown event name")
    event_time = table.column("event_time").combine_chunks()
    reasons = _first(reasons, pc.is_null(event_time), "missing event_time")
    # Postgres prints UTC timestamps as 'YYYY-MM-DD HH:MM:SS[.ffffff]+00'; anything else
    # (year 10000, BC, infinity) cannot be sent as MoEngage's current_time.
    reasons = _first(reasons, pc.invert(pc.match_substring_regex(event_time, _TIMESTAMP_RE)),
                     "event_time out of range")
    end = window_end.strftime("%Y-%m-%d %H:%M:%S")
    # Timestamps arrive as UTC text with a fixed layout, so text order is time order.
    late = pc.greater_equal(pc.utf8_slice_codeunits(event_time, 0, 19), end)
    reasons = _first(reasons, late, "event_time after the night's end")
    if "earning_type" in table.column_names:
        et = table.column("earning_type").combine_chunks()
        bad = pc.and_(pc.is_valid(et), pc.invert(pc.is_in(et, pa.array(EARNING_TYPES))))
        reasons = _first(reasons, bad, "unknown earning_type")
    return _value_reasons(reasons, table, kinds, ("event_id", "event_name", "customer_id", "event_time"))


def member_reasons(table: pa.Table, kinds: dict[str, str]) -> pa.Array:
    reasons = pa.nulls(table.num_rows, pa.string())
    reasons = _customer_id_reasons(reasons, table.column("customer_id").combine_chunks())
    status = table.column("status").combine_chunks()
    bad = pc.and_(pc.is_valid(status), pc.invert(pc.is_in(status, pa.array(MEMBER_STATUSES))))
    reasons = _first(reasons, bad, "unknown status")
    return _value_reasons(reasons, table, kinds, ("customer_id",))


def duplicate_mask(keys: pa.Array) -> pa.Array:
    """True for every occurrence of a key after its first (the first one is kept)."""
    import pandas as pd

    dup = pd.Series(keys.to_numpy(zero_copy_only=False)).duplicated(keep="first").to_numpy()
    return pa.array(dup)
