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
  so N tasks starting together cannot burst past the per-minute limit.

Following the server's window
-----------------------------
MoEngage counts per 60 s window and answers every rate-limited request with
``x-ratelimit-remaining`` and ``x-ratelimit-reset``. A smooth bucket alone sends about one batch
more or less than the budget into each fixed window, so at some window edges it would get a 429.
:class:`ServerWindow` keeps the last reading and, before a send, estimates what is left in the
window now (the reading, minus what this task sent since, minus what the other tasks of the
workspace are expected to have sent at their share); when the batch does not fit it says to wait
for the reset. The bucket then :meth:`TokenBucket.bank` s the time waited for the server: the
tokens that accrued while waiting are kept (beyond the 1 s capacity), so after the reset the task
sends what it was owed and the night still ends at ``records / budget``. Without banking every
window-edge wait is lost for good (the 13% a paced run lost before). The same holds between the
two budgets: a task sending an events batch waits on the events bucket while its users budget goes
unspent, so the users bucket banks that wait (and the other way round): users and events then
both run at their budgets, and a night takes max(users, events) / budget, not their sum. Time is
banked only while the task was held back (by the server, or by its other bucket), never after
idle time, and never more than a minute's worth, so a task that had nothing to send cannot burst.

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
            # Banked tokens (see bank) above the capacity are kept, but idle time never adds more.
            cap = max(self.capacity, self._tokens)
            self._tokens = min(cap, self._tokens + (now - self._updated) * self._per_second)
            self._updated = now
            self._tokens -= n
            return -self._tokens / self._per_second if self._tokens < 0 else 0.0

    def bank(self, seconds: float) -> None:
        """Keep the tokens that accrued over the last ``seconds`` this task was held back from spending
        them (waiting for the server's window or a 429, or for the other budget's bucket), beyond the
        capacity: that budget was not used, so it is owed. At most one minute's worth is ever banked,
        so the tokens of a per-minute budget are never spent twice."""
        if self.unlimited or seconds <= 0:
            return
        with self._lock:
            now = self._clock()
            accrued = self._tokens + (now - self._updated) * self._per_second
            owed = max(self._tokens, self.capacity) + min(seconds, 60.0) * self._per_second
            self._tokens = min(accrued, owed, max(self.capacity, self.rate_per_minute))
            self._updated = now

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


class ServerWindow:
    """The server's view of one budget (``x-ratelimit-remaining`` / ``x-ratelimit-reset``).

    :param others_per_second: how fast the other tasks sharing the budget are expected to spend
        it (the budget times ``1 - share``); what they sent since the last reading is unknown to
        this task, so it is estimated at that rate.
    :param margin_seconds: waited past the announced reset (the header has whole seconds).
    """

    def __init__(self, *, others_per_second: float = 0.0, margin_seconds: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.others_per_second = max(0.0, others_per_second)
        self.margin_seconds = margin_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._remaining: float | None = None
        self._reset_at = 0.0
        self._seen_at = 0.0
        self._sent_since = 0.0
        self.deferrals = 0  # sends held back to the next window (run statistics)

    def observe(self, remaining: float | None, reset_in: float | None) -> None:
        """A response's headers (either may be missing: then nothing is known)."""
        with self._lock:
            if remaining is None or reset_in is None or reset_in < 0:
                self._remaining = None
                return
            now = self._clock()
            self._remaining = float(remaining)
            self._reset_at = now + reset_in
            self._seen_at = now
            self._sent_since = 0.0

    def spent(self, n: float) -> None:
        with self._lock:
            self._sent_since += n

    def estimate(self) -> float | None:
        """What is probably left in the current window; None when unknown or the window has rolled."""
        with self._lock:
            return self._estimate(self._clock())

    def _estimate(self, now: float) -> float | None:
        if self._remaining is None or now >= self._reset_at:
            return None
        return self._remaining - self._sent_since - self.others_per_second * (now - self._seen_at)

    def wait_for(self, n: float) -> float:
        """Seconds to wait before sending ``n`` so the current window is not overrun (0: send now)."""
        if n <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            left = self._estimate(now)
            if left is None or n <= left:
                return 0.0
            self.deferrals += 1
            return self._reset_at - now + self.margin_seconds
