"""The MoEngage Airflow connection read into a validated :class:`MoEngageConfig`.

Connection fields: login = Workspace ID, password = Data API key, host = data centre (``DC-03``,
``03`` or ``https://dashboard-03.moengage.com``); extras ``base_url`` (may contain ``{dc}``),
``users_per_minute``, ``events_per_minute``, ``lookups_per_minute``, ``timeout``, ``pacing``,
``visibility_seconds`` (how long a bulk write may take to show through the Get User API: the
shortest wait after which a lost answer may be concluded 'not applied').

Secrets: the Data API key and the derived ``Authorization`` header are registered with Airflow's
secrets masker (Airflow masks the password, not values derived from it) and live only inside a
:class:`Secret`, so they appear in no message, ``repr`` or result.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from loyalty_moengage.moengage.datacenters import api_base_url, label, parse_data_center
from loyalty_moengage.moengage.errors import MoEngageConfigError

DEFAULT_USERS_PER_MINUTE = 60_000
DEFAULT_EVENTS_PER_MINUTE = 60_000
DEFAULT_LOOKUPS_PER_MINUTE = 1_000
DEFAULT_TIMEOUT = 30.0
# MoEngage documents only "after a delay (minutes)" for bulk writes to be readable.
DEFAULT_VISIBILITY_SECONDS = 600.0


class Secret:
    """Holds a secret without ever printing it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class MoEngageConfig:
    """What the hook reads from its Airflow connection."""

    conn_id: str
    workspace_id: str
    data_center: str
    base_url: str
    users_per_minute: float
    events_per_minute: float
    timeout: float
    pacing: bool
    api_key: Secret = field(repr=False)
    auth_header: Secret = field(repr=False)
    lookups_per_minute: float = float(DEFAULT_LOOKUPS_PER_MINUTE)
    visibility_seconds: float = DEFAULT_VISIBILITY_SECONDS
    described_as: str = ""  # how messages name the connection; empty: "Airflow connection '<conn_id>'"

    @property
    def name(self) -> str:
        """The connection as messages name it (mid-sentence)."""
        return self.described_as or f"Airflow connection {self.conn_id!r}"

    @property
    def where(self) -> str:
        return f"data centre {label(self.data_center)} ({self.base_url})"


def config_from_connection(conn: Any, conn_id: str, *, described_as: str = "") -> MoEngageConfig:
    """Validate a connection into a config; every message names the connection and the fix.

    ``described_as`` replaces "Airflow connection '<conn_id>'" in messages, for when the id is not
    the one the user knows (the UI's Test button tests the form under a random transient id).
    """
    name = described_as or f"Airflow connection {conn_id!r}"
    workspace_id = (conn.login or "").strip()
    api_key = conn.password or ""
    if not workspace_id:
        raise MoEngageConfigError(f"No Workspace ID (login) in {name}.")
    if not api_key:
        raise MoEngageConfigError(f"No Data API key (password) in {name}.")
    try:
        dc = parse_data_center(conn.host)
    except ValueError as exc:
        raise MoEngageConfigError(f"Data centre (host) of {name}: {exc}") from None
    raw_extra = conn.extra_dejson or {}
    # The UI may store custom fields with the legacy "extra__moengage__" prefix.
    extra = {k.removeprefix("extra__moengage__"): v for k, v in raw_extra.items() if v not in (None, "")}
    base_url = str(extra.get("base_url") or api_base_url(dc)).replace("{dc}", dc).rstrip("/")
    if urlsplit(base_url).scheme not in {"http", "https"}:
        raise MoEngageConfigError(f"{name[0].upper()}{name[1:]}: base_url {base_url!r} is not an http(s) URL.")
    token = "Basic " + base64.b64encode(f"{workspace_id}:{api_key}".encode()).decode()
    mask(api_key, token, token.split(" ", 1)[1])
    try:
        return MoEngageConfig(
            conn_id=conn_id,
            workspace_id=workspace_id,
            data_center=dc,
            base_url=base_url,
            users_per_minute=float(extra.get("users_per_minute", DEFAULT_USERS_PER_MINUTE)),
            events_per_minute=float(extra.get("events_per_minute", DEFAULT_EVENTS_PER_MINUTE)),
            timeout=float(extra.get("timeout", DEFAULT_TIMEOUT)),
            pacing=_as_bool(extra.get("pacing", True)),
            lookups_per_minute=float(extra.get("lookups_per_minute", DEFAULT_LOOKUPS_PER_MINUTE)),
            visibility_seconds=max(0.0, float(extra.get("visibility_seconds", DEFAULT_VISIBILITY_SECONDS))),
            api_key=Secret(api_key),
            auth_header=Secret(token),
            described_as=described_as,
        )
    except (TypeError, ValueError) as exc:
        raise MoEngageConfigError(f"{name[0].upper()}{name[1:]}: invalid extra ({exc}).") from None


def mask(*secrets: str) -> None:
    """Register values with Airflow's secrets masker (a no-op outside Airflow)."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover
        return
    for secret in secrets:
        if secret:
            mask_secret(secret)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in {"false", "0", "no", "off", ""}
    return bool(value)


__all__ = ["MoEngageConfig", "Secret", "config_from_connection", "mask"]
