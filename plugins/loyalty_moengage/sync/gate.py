"""What is already known about a chunk before it is packed: the events some run enqueued
before (any night, ever), whether this run may enqueue the chunk's attribute refresh, and which
customers of its new events MoEngage knows (``moengage/presence.py``: cached Get User API
answers, so no event creates a profile).

Read before the chunk's state transaction opens: a minute of Get User API calls must not hold
its locks. The sink's transaction stays the judge: two runs enqueuing the same events at once
collide on the event-key primary key there, and the loser reads this again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from loyalty_moengage.sync.check import Checked
from loyalty_moengage.sync.job import ChunkJob

Lookup = Callable[[list[str]], set[str]]


@dataclass(frozen=True)
class Known:
    already_enqueued: set[str]        # event ids of the chunk some run enqueued before
    present: set[str] | None          # customers MoEngage knows (None: not checked)
    lookups: int                      # Get User API lookups made for this chunk
    send_users: bool                  # this run enqueues the chunk's attribute refresh
    attributes_skip_reason: str | None = None


def read_known(job: ChunkJob, checked: Checked, lookup: Lookup | None) -> Known:
    from loyalty_moengage.db import connect
    from loyalty_moengage.moengage.presence import known_customers
    from loyalty_moengage.sync.enqueue import attributes_taken, existing_event_ids

    with connect(job.state_dsn) as conn:
        already: set[str] = set()
        if checked.event_count:
            already = existing_event_ids(conn, job.program_id, checked.events.column("event_id").to_pylist())
        skip = None
        if job.send_users and checked.user_count:
            skip = attributes_taken(conn, program_id=job.program_id, night=job.window.night, lo=job.lo, hi=job.hi)
        present, lookups = None, 0
        customers = _new_event_customers(checked.events, already) if lookup is not None else set()
        if customers:
            present, lookups = known_customers(conn, job.program_id, sorted(customers), lookup)
        conn.commit()
    return Known(already_enqueued=already, present=present, lookups=lookups,
                 send_users=bool(job.send_users and checked.user_count and skip is None), attributes_skip_reason=skip)


def _new_event_customers(events: Any, already: set[str]) -> set[str]:
    if events is None or not events.num_rows:
        return set()
    return {cid for eid, cid in zip(events.column("event_id").to_pylist(), events.column("customer_id").to_pylist())
            if eid not in already}
