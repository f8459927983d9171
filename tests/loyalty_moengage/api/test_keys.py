"""Key scopes as configured (keys.py) and the per-key token buckets (ratelimit.py); no database."""

from __future__ import annotations

import gc
import json
import logging

import pytest

from loyalty_moengage.api.auth import RATE_LIMITS_BY_APP, rate_limits
from loyalty_moengage.api.keys import READ, WRITE, KeyMatch, KeyRing, ProgramKeys, key_id, load_keys
from loyalty_moengage.api.ratelimit import RateLimiter, TokenBucket, retry_after
from loyalty_moengage.api.settings import Settings
from loyalty_moengage.api.state import ApiState

R1, R2, W1, W2, S1 = "r1" * 10, "r2" * 10, "w1" * 10, "w2" * 10, "s1" * 10


def conn(password: str | None, **extra) -> str:
    return json.dumps({"conn_type": "generic", "password": password, "extra": extra})


def test_password_and_read_keys_read_write_keys_write(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_P1", conn(R1, read_keys=[R2], write_keys=[W1, W2],
                                                           store_keys={"S1": S1}))
    ring = load_keys(["p1"])
    assert ring.match(R1) == KeyMatch("p1", READ, key_id(R1)) and ring.match(R2).scope == READ
    assert ring.match(W1) == KeyMatch("p1", WRITE, key_id(W1)) and ring.match(W2).scope == WRITE
    assert ring.match(S1) is None and ring.match(None) is None and ring.match("") is None
    assert ring.match("\udcff" * 20) is None                      # undecodable input does not raise
    assert ring.program_for(W1) == "p1" and ring.has_write_keys("p1") and not ring.has_write_keys("nope")
    assert ring.store_for("p1", S1) == "S1"


def test_a_variable_holds_the_same_scopes(monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_LOYALTY_API_P2", json.dumps({"api_key": R1, "write_keys": [W1]}))
    ring = load_keys(["p2"])
    assert ring.match(R1).scope == READ and ring.match(W1).scope == WRITE


def test_a_password_only_program_reads_but_has_no_write_key(monkeypatch):
    """Configurations from before scopes: the Content API keeps working, the webhook does not."""
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_OLD", conn(R1, store_keys={"S1": S1}))
    ring = load_keys(["old"])
    assert ring.match(R1).scope == READ and not ring.has_write_keys("old")


def test_the_password_is_never_a_write_key(monkeypatch, caplog):
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_P1", conn(R1, write_keys=[R1, W1]))
    with caplog.at_level(logging.ERROR, "loyalty_moengage.api.keys"):
        ring = load_keys(["p1"])
    assert ring.match(R1).scope == READ and ring.match(W1).scope == WRITE
    assert len(ring.entries) == 2
    assert "stay read only" in caplog.text and R1 not in caplog.text


def test_more_than_four_keys_in_a_scope_are_refused(monkeypatch, caplog):
    many = [f"write-key-{i}-0123456789" for i in range(5)]
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_P1", conn(R1, write_keys=many, read_keys=[R2, "short"]))
    with caplog.at_level(logging.ERROR, "loyalty_moengage.api.keys"):
        ring = load_keys(["p1"])
    assert not ring.has_write_keys("p1") and all(ring.match(k) is None for k in many)
    assert ring.match(R2).scope == READ and ring.match("short") is None
    assert "write_keys has 5 keys, at most 4" in caplog.text and "read_keys[1]" in caplog.text
    assert not any(k in caplog.text for k in many)


@pytest.mark.parametrize("value", ["w" * 20, {"a": "w" * 20}, 7])
def test_a_key_list_that_is_not_a_list_is_refused(monkeypatch, caplog, value):
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_P1", conn(R1, write_keys=value))
    with caplog.at_level(logging.ERROR, "loyalty_moengage.api.keys"):
        assert not load_keys(["p1"]).has_write_keys("p1")
    assert "write_keys must be a list" in caplog.text


def test_a_program_needs_one_usable_key(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_NONE", conn("tooshort", store_keys={"S1": S1}))
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_API_WONLY", conn(None, write_keys=[W1]))
    ring = load_keys(["none", "wonly"])
    assert set(ring.programs) == {"wonly"} and ring.match(W1).scope == WRITE


def test_a_key_of_two_programs_is_refused_for_both(caplog):
    with caplog.at_level(logging.ERROR, "loyalty_moengage.api.keys"):
        ring = KeyRing({"a": ProgramKeys("a", R1, write_keys=(W1,)), "b": ProgramKeys("b", R2, write_keys=(W1,))})
    assert ring.match(W1) is None and ring.match(R1).program_id == "a" and ring.match(R2).program_id == "b"
    assert key_id(W1) in caplog.text and W1 not in caplog.text


def test_key_id_is_short_stable_and_not_the_key():
    assert key_id(R1) == key_id(R1) != key_id(R2)
    assert len(key_id(R1)) == 12 and R1[:6] not in key_id(R1)


# ---- token buckets (ratelimit.py), on an injected clock ---------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_a_two_second_burst_then_refills_at_its_rate():
    clock = Clock()
    limiter = RateLimiter(10, clock=clock)
    assert [limiter.wait("k") for _ in range(20)] == [0.0] * 20       # burst: 2 s of 10/s
    assert limiter.wait("k") == pytest.approx(0.1) and limiter.refused == 1
    assert limiter.wait("other") == 0.0                                # a bucket per key
    clock.now += 0.25                                                  # 2.5 tokens back
    assert [limiter.wait("k") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.05)]
    clock.now += 3600                                                  # idle: capped at the burst
    assert sum(limiter.wait("k") == 0.0 for _ in range(30)) == 20


def test_a_refused_request_takes_no_token():
    clock = Clock()
    bucket = TokenBucket(rate=1.0, capacity=1.0, now=clock.now)
    assert bucket.take(clock.now) == 0.0
    for _ in range(5):
        assert bucket.take(clock.now) == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.take(clock.now) == 0.0


def test_rate_zero_is_no_limit_and_a_slow_rate_still_allows_one():
    limiter = RateLimiter(0, clock=Clock())
    assert all(limiter.wait("k") == 0.0 for _ in range(10_000)) and limiter.buckets == {}
    slow = RateLimiter(0.1, clock=Clock())                 # burst would be 0.2: at least one request
    assert slow.wait("k") == 0.0 and slow.wait("k") == pytest.approx(10.0)


@pytest.mark.parametrize("seconds, header", [(0.001, "1"), (0.5, "1"), (1.0, "1"), (1.01, "2"), (9.5, "10")])
def test_retry_after_is_whole_seconds_at_least_one(seconds, header):
    assert retry_after(seconds) == header


def test_an_apps_limiters_are_made_once_from_its_settings():
    api = ApiState(Settings(dsn="postgresql://unused", read_rate_per_key=7, write_rate_per_key=3))
    limits = rate_limits(api)
    assert (limits.read.rate, limits.write.rate) == (7, 3) and rate_limits(api) is limits
    assert rate_limits(ApiState(Settings(dsn="postgresql://unused"))) is not limits   # per app
    api.settings = Settings(dsn="postgresql://unused", write_rate_per_key=5)
    assert rate_limits(api) is not limits and rate_limits(api).write.rate == 5
    key = id(api)
    del api, limits
    gc.collect()
    assert key not in RATE_LIMITS_BY_APP                  # the entry left with its app's state
