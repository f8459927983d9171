"""TokenBucket on a virtual clock: exact long-run rate, bounded burst, no deadlock."""

from __future__ import annotations

import pytest

from loyalty_moengage.moengage.pacing import TokenBucket
from tests.loyalty_moengage.moengage.virtual_clock import VirtualClock


def bucket(rate: float, **kwargs) -> tuple[TokenBucket, VirtualClock]:
    clock = VirtualClock()
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
    b, clock = bucket(12_000)  # 200/s, capacity 200
    waits: list[float] = []

    def worker():
        for _ in range(20):
            waits.append(b.acquire(10))

    clock.run_threads([worker] * 3)
    # 600 tokens, 200 burst, 200/s -> 2 s
    assert 1.8 <= clock.now <= 2.6
    assert clock.now == pytest.approx(2.0) and len(waits) == 60


def test_waited_total_loses_no_update_under_threads():
    """``waited`` is a read-modify-write shared by every thread: it must happen under the lock.

    A getter that yields the GIL makes the interleaving that loses updates likely enough to see
    at once if the total were updated outside the lock.
    """
    import threading
    import time

    class Yielding(TokenBucket):
        @property
        def waited(self) -> float:
            value = self._waited
            time.sleep(0)  # let another thread run between the read and the write
            return value

        @waited.setter
        def waited(self, value: float) -> None:
            self._waited = value

    b = Yielding(60, clock=lambda: 0.0, sleep=lambda s: None)  # no refill: every acquire waits
    returned: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(200):
            w = b.acquire(1)
            with lock:
                returned.append(w)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(returned) == 1600 and sum(1 for w in returned if w == 0) == 1  # capacity 1
    assert b.waited == pytest.approx(sum(returned))


# -- banking server waits, and following the server's window ------------------------------------

def test_bank_keeps_the_tokens_accrued_while_waiting_for_the_server():
    from loyalty_moengage.moengage.pacing import TokenBucket

    b, clock = bucket(600)  # 10/s, capacity 10
    b.acquire(10)
    clock.sleep(5.0)          # a 429 wait of 5 s
    b.bank(5.0)
    assert b.acquire(50) == 0  # the 5 s of budget are owed, not lost at the 1 s capacity
    assert b.acquire(10) == pytest.approx(1.0)


def test_idle_time_is_never_banked():
    b, clock = bucket(600)
    b.acquire(10)
    clock.sleep(30.0)         # nothing to send for 30 s
    b.bank(1.0)               # then a 1 s wait for the server
    assert b.acquire(20) == 0
    assert b.acquire(10) == pytest.approx(1.0)  # 10 capacity + 10 banked, not 300


def test_server_window_holds_back_a_send_that_does_not_fit():
    from loyalty_moengage.moengage.pacing import ServerWindow

    clock = VirtualClock()
    w = ServerWindow(others_per_second=10.0, clock=clock)
    assert w.wait_for(500) == 0            # nothing known yet
    w.observe(remaining=300, reset_in=20.0)
    assert w.wait_for(250) == 0
    clock.sleep(10.0)                       # the others probably spent 100 meanwhile
    assert w.wait_for(250) == pytest.approx(10.05)
    assert w.wait_for(150) == 0
    w.spent(150)
    assert w.wait_for(100) == pytest.approx(10.05)
    clock.sleep(10.0)                       # the window rolled: unknown again
    assert w.wait_for(10_000) == 0
    w.observe(remaining=None, reset_in=None)
    assert w.estimate() is None
