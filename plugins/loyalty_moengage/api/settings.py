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
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


@dataclass(frozen=True)
class Settings:
    db_conn_id: str = "loyalty_db"
    dsn: str | None = None
    programs: tuple[str, ...] = ("demo",)
    keys_ttl_s: int = 60
    idempotency_hours: int = 24
    max_amount: int = 1_000_000
    max_body_bytes: int = 65_536
    max_customers: int = 100
    ref_prefix: str = "PH-"
    pool_min: int = 2
    pool_max: int = 16
    statement_timeout_ms: int = 4000
    access_log: bool = False  # standalone server logs its own (redacted) access lines

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = os.environ
        programs = tuple(p.strip() for p in env.get("LOYALTY_API_PROGRAMS", "demo").split(",") if p.strip())
        values = dict(
            db_conn_id=env.get("LOYALTY_API_DB_CONN_ID", "loyalty_db"),
            dsn=env.get("LOYALTY_API_DSN") or None,
            programs=programs,
            keys_ttl_s=_int("LOYALTY_API_KEYS_TTL", 60),
            idempotency_hours=_int("LOYALTY_API_IDEMPOTENCY_HOURS", 24),
            max_amount=_int("LOYALTY_API_MAX_AMOUNT", 1_000_000),
            max_body_bytes=_int("LOYALTY_API_MAX_BODY_BYTES", 65_536),
            max_customers=_int("LOYALTY_API_MAX_CUSTOMERS", 100),
            ref_prefix=env.get("LOYALTY_API_REF_PREFIX", "PH-"),
            pool_min=_int("LOYALTY_API_POOL_MIN", 2),
            pool_max=_int("LOYALTY_API_POOL_MAX", 16),
            statement_timeout_ms=_int("LOYALTY_API_STATEMENT_TIMEOUT_MS", 4000),
        )
        values.update(overrides)
        return cls(**values)

    def resolve_dsn(self) -> str:
        """The loyalty DB: LOYALTY_API_DSN, else the project's one rule (connection, env, embedded)."""
        if self.dsn:
            return self.dsn
        from loyalty_moengage.db import loyalty_dsn

        return loyalty_dsn(self.db_conn_id)
