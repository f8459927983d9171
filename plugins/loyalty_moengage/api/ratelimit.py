"""Per-key rate limits: a token bucket per API key, in this server process.

Why: a leaked or runaway key (a campaign looping, a script) must not take the whole API, and a
write key mints points, so it gets a far lower rate than a read key (``LOYALTY_API_READ_RATE``
and ``LOYALTY_API_WRITE_RATE`` requests/s per key; burst: ``BURST_SECONDS`` of it; 0: no
limit). Buckets are named by ``keys.key_id`` (a short hash), never by the key.

Pure and cheap: ``wait()`` is a dict lookup and a little float math, with the clock injectable
for tests. It never awaits, so on one event loop each call is atomic; under several threads
a race can at worst let a request or two through. Only valid keys reach it, so the buckets are
bounded by the keys configured during the process's life.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: A bucket holds this many seconds of its rate: a key idle for a while may send a burst.
BURST_SECONDS = 2.0


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second; a request takes one."""

    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken; otherwise the seconds until one is there (none taken)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


class RateLimiter:
    """One bucket per key id, all of the same ``rate`` (requests/s; 0 or less: no limit)."""

    def __init__(self, rate: float, *, burst_seconds: float = BURST_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}
        self.refused = 0

    def wait(self, key_id: str) -> float:
        """0.0 if the key may go on now, else the seconds it should wait (and nothing is taken)."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self.buckets.get(key_id)
        if bucket is None:
            bucket = self.buckets[key_id] = TokenBucket(self.rate, self.capacity, now)
        waited = bucket.take(now)
        if waited:
            self.refused += 1
        return waited


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
