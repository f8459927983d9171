"""One chunk of a night, end to end: extract -> check -> gate -> pack -> ``sink.write()``.

The same pipeline serves a real run and a dry run; only the sink differs (``sink.py``: the
outbox enqueues, the dry run keeps counts and samples), so a dry run's counts are a real run's.
A retried or cleared chunk either finds its work done (``sink.done_before``) or redoes all of
it. Two runs enqueuing the same events at once collide in the sink's transaction
(``sink.Collision``); the loser reads what is known again and finds those events enqueued.
The events of the earlier nights the plan re-reads (``job.lookback``) go through the same gate:
those some run enqueued are dropped, the rest are late rows, enqueued with this night.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

from loyalty_moengage.sync.chunk.gate import Lookup
from loyalty_moengage.sync.chunk.job import ChunkJob
from loyalty_moengage.sync.chunk.sink import Collision, Sink

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 3


class StageTimer:
    """Seconds by stage, summed over a chunk's steps."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - started


def run_chunk(job: ChunkJob, sink: Sink, *, lookup: Lookup | None = None) -> dict[str, Any]:
    """Extract, check, gate, pack and write one member-id range; returns its stats."""
    from loyalty_moengage.sync.chunk.check import add_lookback, check_chunk
    from loyalty_moengage.sync.chunk.extract import extract_chunk
    from loyalty_moengage.sync.chunk.gate import read_known
    from loyalty_moengage.sync.chunk.pack import pack_chunk

    done = sink.done_before(job)
    if done:
        return done
    timer = StageTimer()
    with timer("extract"):
        extracts, earlier = extract_chunk(job.loyalty_dsn, job.params, job.lookback_params,
                                          recorded_only=job.lane == "live")
    with timer("transform"):
        checked = check_chunk(extracts, job.check_window)
        add_lookback(checked, list(zip(job.lookback, earlier)))   # late rows of earlier nights
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        with timer("lookup"):
            known = read_known(job, checked, lookup, defer=sink.defers_lookups)
        with timer("transform"):
            packed = pack_chunk(checked, known)
        try:
            return sink.write(job, checked, packed, Counter(timer.seconds))
        except Collision:
            if attempt == WRITE_ATTEMPTS:
                raise
            done = sink.done_before(job)
            if done:
                return done  # the collision was with another attempt of this very chunk, which won
            log.info("%s: another run enqueued some of these events at the same time; enqueuing again", job.label)
    raise AssertionError("unreachable")
