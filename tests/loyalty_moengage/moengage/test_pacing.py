"""TokenBucket on a fake clock: exact long-run rate, bounded burst, no deadlock."""

from __future__ import annotations

import threading
import time

import pytest

from loyalty_moengage.moengage.pacing import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def bucket(rate: float, **kwargs) -> tuple[TokenBucket, FakeClock]:
    clock = FakeClock()
    return TokenBucket(rate, clock=clock, sleep=clock.sleep, **kwargs), clock


def test_starts_with_one_second_of_tokens_not_a_minute():
    b, clock = bucket(600)  # 10/s
    assert b.capacity == 10
    assert b.acquire(10) == 0
    assert b.acquire(10) == pytest.approx(1.0)


def test_long_run_rate_is_exact():
    b, clock = bucket(60_000)  # 1000/s
    for _ in range(10_000):
        b.acquire(300)
    # 3,000,000 tokens minus the 1,000-token initial burst, at 1,000/s
    assert clock.now == pytest.approx((3_000_000 - 1_000) / 1_000)


def test_request_larger_than_capacity_waits_proportionally():
    b, clock = bucket(60)  # 1/s, capacity 1
    assert b.acquire(1) == 0
    assert b.acquire(5) == pytest.approx(5.0)
    assert b.acquire(1) == pytest.approx(1.0)


def test_idle_time_refills_only_up_to_capacity():
    b, clock = bucket(600)
    b.acquire(10)
    clock.now += 3600
    assert b.acquire(10) == 0
    assert b.acquire(10) == pytest.approx(1.0)


def test_unlimited():
    for rate in (None, 0):
        b, clock = bucket(rate)
        assert b.unlimited and b.acquire(10**9) == 0 and clock.now == 0


def test_threads_share_one_bucket_at_the_configured_rate():
    b = TokenBucket(12_000)  # 200/s, capacity 200
    started = time.monotonic()

    def worker():
        for _ in range(20):
            b.acquire(10)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 600 tokens, 200 burst, 200/s -> 2 s
    assert 1.8 <= time.monotonic() - started <= 2.6
