"""Phone normalisation rules and the key ring (no database)."""

from __future__ import annotations

import json

import pytest

from loyalty_moengage.api.keys import CachedKeys, KeyRing, ProgramKeys, load_keys
from loyalty_moengage.api.phone import PhoneError, normalize_phone


@pytest.mark.parametrize("raw, country, expected", [
    ("+91 98765 43210", "IN", "+919876543210"),
    ("09876543210", "IN", "+919876543210"),
    ("9876543210", "IN", "+919876543210"),
    ("919876543210", "IN", "+919876543210"),      # country code without '+'
    (" 91 98765 43210", "IN", "+919876543210"),   # '+' decoded as a space from a query string
    ("0091 98765 43210", "IN", "+919876543210"),  # international dialling prefix
    ("+91-98765-43210", "IN", "+919876543210"),
    ("(98765) 43210", "IN", "+919876543210"),
    ("+1 (415) 555-2671", "IN", "+14155552671"),  # explicit country wins over the default
    ("020 7946 0958", "GB", "+442079460958"),
    ("415.555.2671", "US", "+14155552671"),
])
def test_normalises_to_e164(raw, country, expected):
    assert normalize_phone(raw, country) == expected


@pytest.mark.parametrize("raw", ["", "   ", "123", "98765abc10", "1-800-FLOWERS", "+91 98765 43210 ext 5",
                                 "98765+43210", "++919876543210", "9" * 20, "0", "'; DROP TABLE x; --", "٩٨٧٦٥٤٣٢١٠"])
def test_refuses_what_is_not_a_phone(raw):
    with pytest.raises(PhoneError):
        normalize_phone(raw, "IN")


def test_keyring_matches_in_constant_time_over_all_programs():
    ring = KeyRing({"a": ProgramKeys("a", "a" * 20, {"S1": "s" * 20}), "b": ProgramKeys("b", "b" * 20, {})})
    assert ring.program_for("a" * 20) == "a" and ring.program_for("b" * 20) == "b"
    assert ring.program_for("a" * 19) is None and ring.program_for("") is None and ring.program_for(None) is None
    assert ring.program_for("\udcff" * 20) is None  # undecodable input does not raise
    assert ring.store_for("a", "s" * 20) == "S1" and ring.store_for("b", "s" * 20) is None


def test_load_keys_from_connection_then_variable(monkeypatch):
    monkeypatch.setenv("LOYALTY_API_PROGRAMS", "p1, p2 ,p3,p4")
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_P1", json.dumps(
        {"conn_type": "generic", "password": "k" * 16, "extra": {"store_keys": {"S1": "x" * 16, "S2": "short"}}}))
    monkeypatch.setenv("AIRFLOW_VAR_LOYALTY_API_P2", json.dumps({"api_key": "v" * 16, "store_keys": {"S9": "y" * 16}}))
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_P3", json.dumps({"conn_type": "generic", "password": "tooshort"}))
    ring = load_keys()
    assert set(ring.programs) == {"p1", "p2"}  # p3's key is too short, p4 has none
    assert ring.programs["p1"].store_keys == {"S1": "x" * 16}
    assert ring.programs["p2"].api_key == "v" * 16 and ring.programs["p2"].store_keys == {"S9": "y" * 16}


def test_cached_keys_reload_after_ttl_and_keep_old_keys_on_failure():
    calls = []

    def loader():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("secrets backend down")
        return KeyRing({str(len(calls)): ProgramKeys(str(len(calls)), "k" * 16)})

    cache = CachedKeys(ttl=0.0, loader=loader)
    assert set(cache.get().programs) == {"1"}
    assert set(cache.get().programs) == {"2"}
    assert set(cache.get().programs) == {"2"}  # reload failed: previous keys kept
    cache = CachedKeys(ttl=3600, loader=loader)
    first = cache.get()
    assert cache.get() is first and cache.is_fresh()
