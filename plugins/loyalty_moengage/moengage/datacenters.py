"""MoEngage data centres: parse what people type into a connection, build the API host.

The Data API lives on ``https://api-{dc}.moengage.com``, where ``dc`` is the number in the
dashboard URL (``dashboard-03`` -> ``api-03``). A workspace exists on exactly one data centre;
calling another one fails authentication, so the value is validated strictly here.
"""

from __future__ import annotations

import re

#: Data centre code -> region, as documented by MoEngage. 101 is API-only.
DATA_CENTERS: dict[str, str] = {
    "01": "US",
    "02": "EU",
    "03": "India",
    "04": "US",
    "05": "Singapore",
    "06": "Indonesia",
    "101": "API only",
}

_DASHBOARD = re.compile(r"^(?:https?://)?dashboard-(\d{1,3})\.moengage\.com/?$")
_DC = re.compile(r"^(?:dc[-_ ]?)?(\d{1,3})$")


def _normalise(number: str) -> str | None:
    value = int(number)
    if value == 101:
        return "101"
    code = f"{value:02d}"
    return code if code in DATA_CENTERS else None


def valid_values() -> str:
    codes = ", ".join(DATA_CENTERS)
    return (
        f"valid data centres are {codes}; write one as 'DC-03', '03' or the dashboard URL "
        "'https://dashboard-03.moengage.com'"
    )


def parse_data_center(value: str | None) -> str:
    """The data-centre code ("01".."06", "101") for a dashboard URL, ``DC-03``, ``dc03``, ``03`` or ``3``.

    Raises ValueError naming the valid values for anything else (API hosts such as ``api-03``
    included: the field asks for the data centre, and the dashboard URL is what users can see).
    """
    raw = (value or "").strip()
    if not raw:
        raise ValueError(f"MoEngage data centre is empty: {valid_values()}.")
    text = raw.lower()
    match = _DASHBOARD.match(text) or _DC.match(text)
    code = _normalise(match.group(1)) if match else None
    if code is None:
        raise ValueError(f"Unknown MoEngage data centre {raw!r}: {valid_values()}.")
    return code


def api_base_url(dc: str) -> str:
    """``https://api-{dc}.moengage.com`` for a code returned by :func:`parse_data_center`."""
    return f"https://api-{parse_data_center(dc)}.moengage.com"


def label(dc: str) -> str:
    """``DC-03``: how MoEngage names a data centre in its docs and dashboard."""
    return f"DC-{dc}"
