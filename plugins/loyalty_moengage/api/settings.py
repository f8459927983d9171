"""Tunables of the API, read from the environment once per app, so tests and deployments differ
only in env vars (no config file to keep in sync with the programs file).

| env var                          | default      | meaning                                        |
|----------------------------------|--------------|------------------------------------------------|
| LOYALTY_API_DB_CONN_ID           | loyalty_db   | Airflow connection of the loyalty database     |
| LOYALTY_API_DSN                  | (resolved)   | libpq DSN; overrides the connection            |
| LOYALTY_API_PROGRAMS             | demo         | comma-separated program ids that have keys     |
| LOYALTY_API_KEYS_TTL             | 60           | seconds the keys are cached                    |
| LOYALTY_API_IDEMPOTENCY_HOURS    | 24           | window in which a redelivery is a duplicate    |
| LOYALTY_API_MAX_AMOUNT           | 1000000      | largest accepted purchase amount               |
| LOYALTY_API_MAX_BODY_BYTES       | 65536        | larger request bodies get 413                  |
| LOYALTY_API_MAX_CUSTOMERS        | 100          | most customer_details in one request           |
| LOYALTY_API_REF_PREFIX           | PH-          | relation_reference of a new member = prefix + E.164 digits |
| LOYALTY_API_POOL_MIN / _MAX      | 2 / 16       | database connections per process               |
| LOYALTY_API_STATEMENT_TIMEOUT_MS | 4000         | below MoEngage's 5 s wait                      |
| LOYALTY_API_MAX_IN_FLIGHT        | 1000         | reads (GET) in flight per process; more get a fast 503 (0: no limit) |
| LOYALTY_API_MAX_IN_FLIGHT_WRITES | 200          | writes in flight per process, a budget apart from reads' (0: no limit) |
| LOYALTY_API_BODY_TIMEOUT         | 10           | seconds to receive a request body; slower gets 408 |
| LOYALTY_API_READ_RATE            | 5000         | requests/s one read key may make per process (burst: 2 s of it; 0: no limit) |
| LOYALTY_API_WRITE_RATE           | 100          | requests/s one write key may make per process (burst: 2 s of it; 0: no limit) |
| LOYALTY_API_RETRY_WINDOW_SECONDS | 300          | a purchase without an id, sent again identically within this, is MoEngage's retry |
| LOYALTY_API_LOG_LEVEL            | (unset)      | level of the loyalty_moengage loggers (debug, info, warning, error) |

An empty number means its default; an empty DSN means "resolve it". A plain pydantic model rather than pydantic-settings: the
env names are not the field names, ``LOYALTY_API_PROGRAMS`` is a comma list rather than JSON,
and ``access_log`` must not come from the environment (the plugin and the standalone server
decide it), so an explicit table is shorter than the overrides pydantic-settings would need.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENV = {
    "db_conn_id": "LOYALTY_API_DB_CONN_ID",
    "dsn": "LOYALTY_API_DSN",
    "programs": "LOYALTY_API_PROGRAMS",
    "keys_ttl_s": "LOYALTY_API_KEYS_TTL",
    "idempotency_hours": "LOYALTY_API_IDEMPOTENCY_HOURS",
    "max_amount": "LOYALTY_API_MAX_AMOUNT",
    "max_body_bytes": "LOYALTY_API_MAX_BODY_BYTES",
    "max_customers": "LOYALTY_API_MAX_CUSTOMERS",
    "ref_prefix": "LOYALTY_API_REF_PREFIX",
    "pool_min": "LOYALTY_API_POOL_MIN",
    "pool_max": "LOYALTY_API_POOL_MAX",
    "statement_timeout_ms": "LOYALTY_API_STATEMENT_TIMEOUT_MS",
    "max_in_flight": "LOYALTY_API_MAX_IN_FLIGHT",
    "max_in_flight_writes": "LOYALTY_API_MAX_IN_FLIGHT_WRITES",
    "body_timeout_s": "LOYALTY_API_BODY_TIMEOUT",
    "read_rate_per_key": "LOYALTY_API_READ_RATE",
    "write_rate_per_key": "LOYALTY_API_WRITE_RATE",
    "retry_window_s": "LOYALTY_API_RETRY_WINDOW_SECONDS",
    "log_level": "LOYALTY_API_LOG_LEVEL",
}


class SettingsError(ValueError):
    """An API setting is invalid; the message names the env var."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    db_conn_id: str = "loyalty_db"
    dsn: str | None = None
    programs: tuple[str, ...] = ("demo",)
    keys_ttl_s: int = Field(60, ge=0)
    idempotency_hours: int = Field(24, ge=1)
    max_amount: int = Field(1_000_000, gt=0)
    max_body_bytes: int = Field(65_536, gt=0)
    max_customers: int = Field(100, ge=1)
    ref_prefix: str = "PH-"
    pool_min: int = Field(2, ge=0)
    pool_max: int = Field(16, ge=1)
    statement_timeout_ms: int = Field(4000, ge=0)
    max_in_flight: int = Field(1000, ge=0)
    max_in_flight_writes: int = Field(200, ge=0)
    body_timeout_s: float = Field(10.0, gt=0, le=300)
    read_rate_per_key: int = Field(5000, ge=0)
    write_rate_per_key: int = Field(100, ge=0)
    retry_window_s: int = Field(300, ge=0, le=86_400)
    log_level: str | None = Field(None, pattern="^(?i:debug|info|warning|error)$")
    access_log: bool = False  # standalone server logs its own (redacted) access lines

    @model_validator(mode="after")
    def _pool_bounds(self) -> "Settings":
        if self.pool_min > self.pool_max:
            raise ValueError(f"pool_min ({self.pool_min}) is larger than pool_max ({self.pool_max})")
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """Settings from ``LOYALTY_API_*`` (see the module doc); keyword arguments win."""
        env = os.environ
        values: dict[str, Any] = {}
        for name, var in ENV.items():
            if var not in env:
                continue
            raw = env[var]
            if name == "dsn":
                values[name] = raw or None
            elif name == "programs":
                values[name] = tuple(p.strip() for p in raw.split(",") if p.strip())
            elif name == "log_level":
                values[name] = raw.strip() or None
            elif cls.model_fields[name].annotation in (int, float):
                if raw.strip():
                    values[name] = raw.strip()
            else:
                values[name] = raw
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError("; ".join(_describe(e, overrides) for e in exc.errors(include_url=False))) from None

    def resolve_dsn(self) -> str:
        """The loyalty DB: LOYALTY_API_DSN, else the project's one rule (connection, env, embedded)."""
        if self.dsn:
            return self.dsn
        from loyalty_moengage.db import loyalty_dsn

        return loyalty_dsn(self.db_conn_id)


def _describe(error: Any, overrides: dict[str, Any]) -> str:
    name = str(error["loc"][0]) if error["loc"] else ""
    source = ENV[name] if name in ENV and name not in overrides else name or "API settings"
    return f"{source}: {error['msg']} (got {error['input']!r})" if name else f"{source}: {error['msg']}"
