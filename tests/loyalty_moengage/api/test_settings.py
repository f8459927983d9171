"""API settings: the env variables and defaults of the README table, and errors naming the variable."""

from __future__ import annotations

import pytest

from loyalty_moengage.api.settings import ENV, Settings, SettingsError


@pytest.fixture
def clean_env(monkeypatch):
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_defaults(clean_env):
    s = Settings.from_env()
    assert (s.db_conn_id, s.dsn, s.programs, s.keys_ttl_s, s.idempotency_hours) == ("loyalty_db", None, ("demo",), 60, 24)
    assert (s.max_amount, s.max_body_bytes, s.max_customers, s.ref_prefix) == (1_000_000, 65_536, 100, "PH-")
    assert (s.pool_min, s.pool_max, s.statement_timeout_ms, s.access_log) == (2, 16, 4000, False)
    assert s == Settings()


def test_env_values_and_overrides(clean_env):
    clean_env.setenv("LOYALTY_API_PROGRAMS", " demo, other ,,")
    clean_env.setenv("LOYALTY_API_POOL_MAX", " 32 ")
    clean_env.setenv("LOYALTY_API_KEYS_TTL", "")          # empty number: the default
    clean_env.setenv("LOYALTY_API_DSN", "")               # empty DSN: resolve from the connection
    clean_env.setenv("LOYALTY_API_REF_PREFIX", "LY-")
    s = Settings.from_env(pool_min=1, access_log=True)
    assert (s.programs, s.pool_max, s.keys_ttl_s, s.dsn, s.ref_prefix, s.pool_min, s.access_log) == (
        ("demo", "other"), 32, 60, None, "LY-", 1, True)


def test_bad_values_name_the_variable(clean_env):
    clean_env.setenv("LOYALTY_API_MAX_BODY_BYTES", "64k")
    with pytest.raises(SettingsError, match=r"^LOYALTY_API_MAX_BODY_BYTES: .*integer.*'64k'"):
        Settings.from_env()
    clean_env.delenv("LOYALTY_API_MAX_BODY_BYTES")
    with pytest.raises(SettingsError, match="pool_min .3. is larger than pool_max .2."):
        Settings.from_env(pool_min=3, pool_max=2)
    with pytest.raises(SettingsError, match="^pool_max: "):
        Settings.from_env(pool_max=0)


def test_settings_are_immutable(clean_env):
    with pytest.raises(Exception, match="frozen"):
        Settings.from_env().pool_max = 3  # type: ignore[misc]
