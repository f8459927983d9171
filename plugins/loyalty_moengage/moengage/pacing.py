"""Client-side pacing for MoEngage's per-workspace budgets (users/min and events/min).

MoEngage counts users and events per workspace per minute across *all* requests, and answers
429 once a budget is spent. A night of 1M members needs ~17 minutes of budget, so pacing must
waste none of it: the long-run rate of a :class:`TokenBucket` equals its configured rate exactly.

How tasks share one workspace budget
------------------------------------
* Within one task (one process, any number of threads): one bucket per budget, held by the hook.
* Across N mapped load tasks running at the same time: each task paces at ``rate * share`` with
  ``share = 1 / N``. The DAG sets ``share`` (``MoEngageHook(share=...)``) and caps concurrency at
  N (``max_active_tis_per_dagrun=N``) so the shares never add up to more than the budget.
* Across DAGs or programs that write to the same workspace: put every load task in one Airflow
  Pool per workspace (slots = N) and give each task ``share = 1 / N``; the Pool guarantees that
  no more than N tasks spend the budget at once, wherever they run.
* Buckets start with at most ``burst_seconds`` (default 1 s) of tokens, not a minute's worth,
  so N tasks starting together cannot burst past the per-minute limit. A fixed-window server may
  still see one batch more than its budget at a window edge; the hook waits out that 429 (it
  costs a round-trip, not a retry).

``acquire(n)`` reserves tokens and sleeps outside the lock, so a request larger than the
bucket's capacity still goes through after waiting ``n / rate`` (never a deadlock), and
concurrent callers queue in arrival order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Reservation token bucket: ``rate_per_minute`` tokens/min, ``None`` or 0 = unlimited."""

    def __init__(
        self,
        rate_per_minute: float | None,
        *,
        capacity: float | None = None,
        burst_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_minute is not None and rate_per_minute < 0:
            raise ValueError(f"rate_per_minute must be >= 0, got {rate_per_minute}")
        self.rate_per_minute = rate_per_minute or 0.0
        self._per_second = self.rate_per_minute / 60.0
        if capacity is None:
            capacity = max(1.0, self._per_second * burst_seconds)
        self.capacity = float(capacity)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._updated = clock()
        self.waited = 0.0  # total seconds slept, for run statistics

    @property
    def unlimited(self) -> bool:
        return self._per_second <= 0

    def reserve(self, n: float) -> float:
        """Take ``n`` tokens now (possibly into debt) and return how long the caller must wait."""
        if self.unlimited or n <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self._per_second)
            self._updated = now
            self._tokens -= n
            return -self._tokens / self._per_second if self._tokens < 0 else 0.0

    def acquire(self, n: float) -> float:
        """Block until ``n`` tokens are ours; returns the seconds waited."""
        wait = self.reserve(n)
        if wait > 0:
            self._sleep(wait)
            with self._lock:  # a read-modify-write shared by every thread: unlocked, updates get lost
                self.waited += wait
        return wait

    def __repr__(self) -> str:
        return f"TokenBucket(rate_per_minute={self.rate_per_minute:g}, capacity={self.capacity:g})"
