"""Row checks: which extracted rows may not be sent, which values must be left out, and why.

Checks are vectorised over a whole extract; each gives a reason per row (NULL = fine). The
first failing check names the row's reason. A row reason quarantines the row (the template, the
reason, the row); an attribute reason leaves that one value out of the element and records it
in the quarantine too, so the rest of the row is still sent. Which is which
(``contract.EVENT_ROW_COLUMNS``): in an event, a bad required, points/amount or earning_type
column quarantines the event and any other bad attribute is left out; in a member row only a
bad customer_id quarantines the row, every other bad attribute is left out. The rest of the
night proceeds.

Per-row Python runs only over rejected rows (``detail`` and ``quarantine_row``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from loyalty_moengage.moengage.rules import DISALLOWED_CUSTOMER_IDS, MAX_CUSTOMER_ID_CHARS, MAX_SAFE_INTEGER, MAX_VALUE_CHARS
from loyalty_moengage.sync.chunk.contract import (
    DERIVED_ATTRIBUTES,
    EARNING_TYPES,
    EVENT_NAMES,
    EVENT_REQUIRED,
    EVENT_ROW_COLUMNS,
    MEMBER_STATUSES,
    MIN_SENDABLE_YEAR,
    MAX_SENDABLE_YEAR,
    NON_NEGATIVE_COLUMNS,
    NUMERIC_COLUMNS,
    SENDABLE_YEAR_RE,
)

_NUMBER_RE = r"^\s*-?[0-9]+(\.[0-9]+)?\s*$"
_NEGATIVE_RE = r"^\s*-[0-9]*[1-9]"          # -0 and -0.00 are zero, not negative
_TIMESTAMP_RE = rf"^{SENDABLE_YEAR_RE}-[0-9]{{2}}-[0-9]{{2}} [0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}(\.[0-9]+)?\+00$"
_LOCAL_TIMESTAMP_RE = rf"^{SENDABLE_YEAR_RE}-[0-9]{{2}}-[0-9]{{2}} [0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}(\.[0-9]+)?$"
_DATE_RE = rf"^{SENDABLE_YEAR_RE}-[0-9]{{2}}-[0-9]{{2}}$"
_NOT_FINITE = ("nan", "infinity", "-infinity", "+infinity", "inf", "-inf", "+inf")
_SAFE = str(MAX_SAFE_INTEGER)               # 16 digits
_OUT_OF_RANGE = f"out of range (sendable: years {MIN_SENDABLE_YEAR}-{MAX_SENDABLE_YEAR})"
SHOWN_CHARS = 80                            # a value quoted in a quarantine reason
KEPT_CHARS = 1000                           # a string kept in a quarantined row's JSON


@dataclass
class Reasons:
    """Why rows or single values of one extract may not be sent (NULL = fine)."""

    row: pa.Array                            # reason per row: the row is quarantined
    row_column: pa.Array                     # the column each row reason is about
    attributes: dict[str, pa.Array] = field(default_factory=dict)  # column -> reason: value left out


def _first(reasons: Reasons, mask: pa.Array, reason: str, column: str) -> None:
    """Set ``reason`` where mask is true and no earlier reason was set."""
    mask = pc.and_(pc.fill_null(mask, False), pc.is_null(reasons.row))
    reasons.row = pc.if_else(mask, pa.scalar(reason), reasons.row)
    reasons.row_column = pc.if_else(mask, pa.scalar(column), reasons.row_column)


def _missing(col: pa.Array) -> pa.Array:
    """NULL, empty or whitespace only (never NULL itself, unlike pc.or_ over a NULL)."""
    return pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True)


def _customer_id_reasons(reasons: Reasons, cid: pa.Array) -> None:
    _first(reasons, _missing(cid), "missing customer_id", "customer_id")
    normal = pc.utf8_lower(pc.utf8_trim_whitespace(cid))
    disallowed = pc.is_in(normal, pa.array(sorted(DISALLOWED_CUSTOMER_IDS)))
    _first(reasons, disallowed, "customer_id is a value MoEngage refuses", "customer_id")
    _first(reasons, pc.greater(pc.utf8_length(cid), MAX_CUSTOMER_ID_CHARS),
           f"customer_id is longer than {MAX_CUSTOMER_ID_CHARS} characters", "customer_id")


def _beyond_safe_integer(col: pa.Array) -> pa.Array:
    """|value| > 2^53 for decimal text: the integer part has more than 16 digits, or 16 above 2^53."""
    digits = pc.utf8_ltrim(pc.utf8_ltrim(pc.utf8_trim_whitespace(col), "-+"), "0")
    integer_part = pc.extract_regex(digits, r"^(?P<i>[0-9]*)").field("i")
    n = pc.utf8_length(integer_part)
    same = pc.and_(pc.equal(n, len(_SAFE)), pc.greater(integer_part, _SAFE))
    return pc.or_(pc.greater(n, len(_SAFE)), same)


def value_problems(name: str, col: pa.Array, kind: str) -> list[tuple[pa.Array, str]]:
    """(mask, problem) pairs for one column's values, the first matching one wins."""
    out: list[tuple[pa.Array, str]] = []
    present = pc.is_valid(col)
    numeric_text = name in NUMERIC_COLUMNS and kind in ("text", "json")
    if kind in ("int", "number", "float") or numeric_text:
        if kind in ("number", "float") or numeric_text:
            # Postgres prints numeric and float non-finite values exactly so; text may be written any way
            normal = pc.utf8_lower(pc.utf8_trim_whitespace(col)) if numeric_text else col
            words = _NOT_FINITE if numeric_text else ("NaN", "Infinity", "-Infinity")
            out.append((pc.is_in(normal, pa.array(words)), f"{name} is NaN or Infinity"))
        if numeric_text:
            out.append((pc.and_(present, pc.invert(pc.match_substring_regex(col, _NUMBER_RE))), f"non-numeric {name}"))
        if name in NON_NEGATIVE_COLUMNS:
            # Postgres prints no negative zero for int and numeric, so a leading '-' is enough there
            negative = (pc.starts_with(col, "-") if kind in ("int", "number")
                        else pc.match_substring_regex(col, _NEGATIVE_RE))
            out.append((negative, f"{name} is negative"))
        # a float is approximate by nature; int and numeric are exact. Fast path: no value has 16 characters.
        if kind != "float" and (pc.max(pc.utf8_length(col)).as_py() or 0) >= len(_SAFE):
            out.append((_beyond_safe_integer(col), f"{name} is beyond ±2^53 (JSON numbers lose digits)"))
    elif kind == "date":
        out.append((pc.and_(present, pc.invert(pc.match_substring_regex(col, _DATE_RE))), f"{name} {_OUT_OF_RANGE}"))
    elif kind in ("timestamptz", "timestamp"):  # timestamps are UTC text by now (normalise_times)
        out.append((pc.and_(present, pc.invert(pc.match_substring_regex(col, _TIMESTAMP_RE))),
                    f"{name} {_OUT_OF_RANGE}"))
    if kind in ("text", "json"):
        out.append((pc.greater(pc.utf8_length(col), MAX_VALUE_CHARS), f"{name} is longer than {MAX_VALUE_CHARS} characters"))
    return out


def _attribute_reasons(reasons: Reasons, table: pa.Table, kinds: dict[str, str], columns: list[str],
                       extra: dict[str, list[tuple[pa.Array, str]]] | None = None) -> None:
    """Reasons to leave single values out (NULL = keep the value)."""
    for name in columns:
        col = table.column(name).combine_chunks()
        checks = (extra or {}).get(name, []) + value_problems(name, col, kinds.get(name, "text"))
        if not checks:
            continue
        out = pa.nulls(len(col), pa.string())
        for mask, problem in checks:
            if not pc.any(mask).as_py():  # the usual case: nothing to mark
                continue
            out = pc.if_else(pc.and_(pc.fill_null(mask, False), pc.is_null(out)),
                             pa.scalar(f"{problem} (attribute left out)"), out)
        if pc.any(pc.is_valid(out)).as_py():
            reasons.attributes[name] = out
    for derived, source in DERIVED_ATTRIBUTES.items():
        if source in reasons.attributes and derived in table.column_names:
            dropped = pc.and_(pc.is_valid(reasons.attributes[source]),
                              pc.is_valid(table.column(derived).combine_chunks()))
            base = reasons.attributes.get(derived, pa.nulls(table.num_rows, pa.string()))
            reasons.attributes[derived] = pc.if_else(
                pc.and_(dropped, pc.is_null(base)),
                pa.scalar(f"{derived} left out with {source} (attribute left out)"), base)


def normalise_times(table: pa.Table, kinds: dict[str, str], time_zone: str) -> tuple[pa.Table, dict[str, str]]:
    """``timestamp without time zone`` values are wall times in the program's zone: they become
    UTC text like timestamptz ('2026-11-21 06:30:00+00') and are then checked and sent as such.
    A wall time the zone skips (spring forward) moves forward; one it repeats is the first.
    Values outside the sendable years are left as they are, so the checks name them."""
    local = [n for n in table.column_names if kinds.get(n) == "timestamp"]
    if not local:
        return table, kinds
    import numpy as np
    import pandas as pd

    kinds = dict(kinds)
    for name in local:
        col = table.column(name).combine_chunks()
        ok = pc.fill_null(pc.match_substring_regex(col, _LOCAL_TIMESTAMP_RE), False)
        values = pd.Series(pc.utf8_slice_codeunits(pc.if_else(ok, col, pa.scalar("2000-01-01 00:00:00")), 0, 19)
                           .to_numpy(zero_copy_only=False))
        wall = pd.to_datetime(values, format="%Y-%m-%d %H:%M:%S")
        utc = wall.dt.tz_localize(time_zone, ambiguous=np.ones(len(wall), dtype=bool),
                                  nonexistent="shift_forward").dt.tz_convert("UTC")
        text = pa.array(utc.dt.strftime("%Y-%m-%d %H:%M:%S+00").to_numpy(dtype=object), pa.string())
        table = table.set_column(table.column_names.index(name), name, pc.if_else(ok, text, col))
        kinds[name] = "timestamptz"
    return table, kinds


def event_reasons(table: pa.Table, kinds: dict[str, str], window_end: datetime) -> Reasons:
    n = table.num_rows
    reasons = Reasons(pa.nulls(n, pa.string()), pa.nulls(n, pa.string()))
    event_id = table.column("event_id").combine_chunks()
    _first(reasons, pc.fill_null(pc.equal(event_id, ""), True), "missing event_id", "event_id")
    _customer_id_reasons(reasons, table.column("customer_id").combine_chunks())
    name = table.column("event_name").combine_chunks()
    _first(reasons, pc.invert(pc.is_in(name, pa.array(EVENT_NAMES))), "unknown event name", "event_name")
    event_time = table.column("event_time").combine_chunks()
    _first(reasons, pc.is_null(event_time), "missing event_time", "event_time")
    # Postgres prints UTC timestamps as 'YYYY-MM-DD HH:MM:SS[.ffffff]+00'; anything else
    # (infinity, BC, year 0001 or 9999, a text column) cannot be sent as MoEngage's current_time.
    _first(reasons, pc.invert(pc.match_substring_regex(event_time, _TIMESTAMP_RE)), "event_time out of range",
           "event_time")
    end = window_end.strftime("%Y-%m-%d %H:%M:%S")
    # Timestamps arrive as UTC text with a fixed layout, so text order is time order.
    late = pc.greater_equal(pc.utf8_slice_codeunits(event_time, 0, 19), end)
    _first(reasons, late, "event_time after the night's end", "event_time")
    if "earning_type" in table.column_names:
        et = table.column("earning_type").combine_chunks()
        bad = pc.and_(pc.is_valid(et), pc.invert(pc.is_in(et, pa.array(EARNING_TYPES))))
        _first(reasons, bad, "unknown earning_type", "earning_type")
    for column in table.column_names:
        if column in EVENT_REQUIRED or column not in EVENT_ROW_COLUMNS:
            continue
        for mask, problem in value_problems(column, table.column(column).combine_chunks(), kinds.get(column, "text")):
            _first(reasons, mask, problem, column)
    _attribute_reasons(reasons, table, kinds, [c for c in table.column_names if c not in EVENT_ROW_COLUMNS])
    return reasons


def member_reasons(table: pa.Table, kinds: dict[str, str]) -> Reasons:
    n = table.num_rows
    reasons = Reasons(pa.nulls(n, pa.string()), pa.nulls(n, pa.string()))
    _customer_id_reasons(reasons, table.column("customer_id").combine_chunks())
    status = table.column("status").combine_chunks()
    unknown = pc.and_(pc.is_valid(status), pc.invert(pc.is_in(status, pa.array(MEMBER_STATUSES))))
    _attribute_reasons(reasons, table, kinds, [c for c in table.column_names if c != "customer_id"],
                       {"status": [(unknown, "unknown status")]})
    return reasons


def without_values(table: pa.Table, attributes: dict[str, pa.Array]) -> pa.Table:
    """The table with each value that has an attribute reason set to NULL (never sent)."""
    for name, reason in attributes.items():
        i = table.column_names.index(name)
        col = table.column(i).combine_chunks()
        table = table.set_column(i, name, pc.if_else(pc.is_valid(reason), pa.scalar(None, col.type), col))
    return table


def shown(value: Any) -> str:
    """A value as quoted in a reason: JSON-escaped (control characters visible), truncated."""
    import orjson

    if value is None:
        return "NULL"
    text = str(value)
    if len(text) > SHOWN_CHARS:
        return orjson.dumps(text[:SHOWN_CHARS]).decode() + f"... ({len(text):,} characters)"
    return orjson.dumps(text).decode()


def detail(template: str, reason: str, column: str | None, value: Any) -> str:
    """The full reason: template, reason, column and (truncated) value."""
    where = f"; {column} = {shown(value)}" if column else ""
    return f"{template}: {reason}{where}"


def quarantine_row(row: dict[str, Any], why: str) -> bytes:
    """A rejected row as JSON for the quarantine: long strings cut to KEPT_CHARS, and the full
    reason under ``_reason``."""
    import orjson

    kept = {k: (v[:KEPT_CHARS] + f"... ({len(v):,} characters)" if isinstance(v, str) and len(v) > KEPT_CHARS else v)
            for k, v in row.items()}
    kept["_reason"] = why
    return orjson.dumps(kept)


def duplicate_mask(keys: pa.Array) -> pa.Array:
    """True for every occurrence of a key after its first (the first one is kept)."""
    import pandas as pd

    dup = pd.Series(keys.to_numpy(zero_copy_only=False)).duplicated(keep="first").to_numpy()
    return pa.array(dup)
