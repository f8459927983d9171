"""What is already known about a chunk before it is packed: the events some run enqueued
before (any night, ever), whether this run may enqueue the chunk's attribute refresh, and which
customers of its new events MoEngage knows (``moengage/presence.py``: cached Get User API
answers, so no event creates a profile).

A real run *defers* the lookups (``defer``): customers the cache does not know are not looked
up here, on the night's critical path; their events wait in ``awaiting_presence`` for the lookup
task (``lookups.py``), which checks them while the loads send. A dry run looks them up inline.
Read before the chunk's state transaction opens: a minute of Get User API calls must not hold
its locks. The sink's transaction stays the judge: two runs enqueuing the same events at once
collide on the event-key primary key there, and the loser reads this again. Events left to
another run's still-withdrawable work (``Reliance``) are the sink's to rely on, or, when that
work was withdrawn since this read, to read again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

from loyalty_moengage.sync.chunk.check import Checked
from loyalty_moengage.sync.chunk.job import ChunkJob
from loyalty_moengage.sync.outbox.enqueue import Reliance

Lookup = Callable[[list[str]], set[str]]


@dataclass(frozen=True)
class Known:
    already_enqueued: set[str]        # event ids of the chunk some run enqueued before
    present: set[str] | None          # customers MoEngage knows (None: not checked)
    lookups: int                      # Get User API lookups made for this chunk
    send_users: bool                  # this run enqueues the chunk's attribute refresh
    attributes_skip_reason: str | None = None
    awaiting: frozenset[str] = frozenset()   # customers to check later (deferred lookups)
    # Of already_enqueued, what only another run's staged work holds (the sink records it relies on it).
    reliance: Reliance = Reliance()


def read_known(job: ChunkJob, checked: Checked, lookup: Lookup | None, *, defer: bool = False) -> Known:
    from loyalty_moengage.db import connect
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.moengage.presence import cached_presence, known_customers
    from loyalty_moengage.sync.outbox.enqueue import attributes_taken, enqueued_events

    with connect(job.state_dsn) as conn:
        already: set[str] = set()
        reliance = Reliance()
        if checked.event_count:
            already, reliance = enqueued_events(conn, job.program_id, checked.events.column("event_id").to_pylist(),
                                                run_id=job.run_id)
        skip = None
        if job.send_users and checked.user_count:
            skip = attributes_taken(conn, program_id=job.program_id, night=job.window.night, lo=job.lo, hi=job.hi)
        present, lookups, awaiting = None, 0, frozenset[str]()
        customers = _new_event_customers(checked.events, already) if lookup is not None else set()
        # A confirmation older than the program's presence lifetime is checked again (deferred, as unknowns are).
        lifetime = timedelta(hours=get_program(job.program_id).presence_lifetime_hours if customers else 0)
        if customers and defer:
            present, later = cached_presence(conn, job.program_id, sorted(customers), lifetime=lifetime)
            awaiting = frozenset(later)
        elif customers:
            present, lookups = known_customers(conn, job.program_id, sorted(customers), lookup, lifetime=lifetime)
        conn.commit()
    return Known(already_enqueued=already, present=present, lookups=lookups,
                 send_users=bool(job.send_users and checked.user_count and skip is None), attributes_skip_reason=skip,
                 awaiting=awaiting, reliance=reliance)


def _new_event_customers(events: Any, already: set[str]) -> set[str]:
    if events is None or not events.num_rows:
        return set()
    return {cid for eid, cid in zip(events.column("event_id").to_pylist(), events.column("customer_id").to_pylist())
            if eid not in already}
