"""Columnar builders of MoEngage elements (the packer is in loyalty_moengage.moengage.packing).

Per-row Python (a dict per row, ``to_dict("records")``) dominates a night's cost at a million
rows, so elements are built as whole Arrow string columns: each value becomes a JSON fragment
by vectorised string operations, and fragments are joined per row. NULLs become no fragment
at all (MoEngage never sees ``null``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

_CONTROL = [chr(c) for c in range(32)]
_CONTROL_RE = "[\x00-\x1f]"


def _quote(name: str) -> str:
    return orjson.dumps(name).decode()


def _join(*parts: Any, null_handling: str = "emit_null") -> pa.Array:
    return pc.binary_join_element_wise(*parts, "", null_handling=null_handling)


def json_string(arr: pa.Array) -> pa.Array:
    """Text values as JSON string literals (quotes, backslashes and control characters escaped)."""
    arr = pc.replace_substring(arr, "\\", "\\\\")
    arr = pc.replace_substring(arr, '"', '\\"')
    if pc.any(pc.match_substring_regex(arr, _CONTROL_RE)).as_py():
        for ch in _CONTROL:
            arr = pc.replace_substring(arr, ch, f"\\u{ord(ch):04x}")
    return _join('"', arr, '"')


def iso_utc(arr: pa.Array) -> pa.Array:
    """Postgres UTC timestamps ('2026-11-22 14:05:09.5+00') as '2026-11-22T14:05:09Z'."""
    return _join(pc.utf8_slice_codeunits(arr, 0, 10), "T", pc.utf8_slice_codeunits(arr, 11, 19), "Z")


def json_values(arr: pa.Array, kind: str) -> pa.Array:
    """One JSON literal per value, NULL where the value is NULL."""
    if kind in ("int", "number", "json"):
        if kind == "number":  # numeric prints NaN and +-Infinity, which JSON has no words for
            arr = pc.if_else(pc.is_in(arr, pa.array(["NaN", "Infinity", "-Infinity"])), pa.scalar(None, pa.string()), arr)
        elif kind == "json":  # a JSON null is a NULL: left out, never sent
            arr = pc.if_else(pc.equal(arr, "null"), pa.scalar(None, pa.string()), arr)
        return arr
    if kind == "float":
        bad = pc.is_in(arr, pa.array(["NaN", "Infinity", "-Infinity"]))
        return pc.if_else(bad, pa.scalar(None, pa.string()), arr)
    if kind == "bool":
        return pc.if_else(pc.equal(arr, "t"), "true", "false")
    if kind == "date":
        return _join('"', arr, '"')
    if kind in ("timestamptz", "timestamp"):
        return _join('"', iso_utc(arr), '"')
    return json_string(arr)


def attributes_object(table: pa.Table, columns: list[str], kinds: dict[str, str]) -> pa.Array:
    """'{"a":1,"b":"x"}' per row from the given columns; NULL values are left out."""
    if not columns:
        return pa.array(["{}"] * table.num_rows, pa.string())
    fragments = [_join(f"{_quote(c)}:", json_values(table.column(c).combine_chunks(), kinds[c])) for c in columns]
    joined = pc.binary_join_element_wise(*fragments, ",", null_handling="skip")
    joined = pc.fill_null(joined, "")
    return _join("{", joined, "}")


def offsets_seconds(event_time: pa.Array, time_zone: str) -> np.ndarray:
    """user_timezone_offset for each event's own instant in the program's zone (DST-correct)."""
    import pandas as pd

    utc = pd.to_datetime(
        pd.Series(pc.utf8_slice_codeunits(event_time, 0, 19).to_numpy(zero_copy_only=False)),
        format="%Y-%m-%d %H:%M:%S",
    )
    local = utc.dt.tz_localize("UTC").dt.tz_convert(time_zone).dt.tz_localize(None)
    return ((local - utc).dt.total_seconds()).to_numpy(dtype=np.int64)


def event_elements(table: pa.Table, kinds: dict[str, str], time_zone: str) -> pa.Array:
    """Event elements: one action per element, its attributes from every non-required column."""
    attrs = [c for c in table.column_names if c not in ("event_id", "event_name", "customer_id", "event_time")]
    event_time = table.column("event_time").combine_chunks()
    offsets = pa.array(offsets_seconds(event_time, time_zone)).cast(pa.string())
    return _join(
        '{"type":"event","customer_id":',
        json_string(table.column("customer_id").combine_chunks()),
        ',"actions":[{"action":',
        json_string(table.column("event_name").combine_chunks()),
        ',"attributes":',
        attributes_object(table, attrs, kinds),
        ',"current_time":"',
        iso_utc(event_time),
        '","user_timezone_offset":',
        offsets,
        "}]}",
    )


def user_elements(table: pa.Table, kinds: dict[str, str]) -> pa.Array:
    """User elements that only ever update existing MoEngage users (update_existing_only)."""
    attrs = [c for c in table.column_names if c != "customer_id"]
    return _join(
        '{"type":"customer","customer_id":',
        json_string(table.column("customer_id").combine_chunks()),
        ',"update_existing_only":true,"attributes":',
        attributes_object(table, attrs, kinds),
        "}",
    )
