"""Presence lookups off the night's critical path.

At MoEngage's real Get User API limit (1,000 users/min) a night whose active customers are not
cached would spend minutes in lookups before anything is sent. So the chunks look up nothing:
events of customers the cache does not know wait in ``awaiting_presence`` (their event keys
taken, no batch yet), the anomaly guard judges the night on what does not depend on lookups
(extracted counts) and releases it, and each load slot checks those customers in a thread of
its own (:class:`LookupWorker`, at the slot's share of the Get User API budget), a group at a
time, while it sends everything else. Each group ends in one transaction: events of
customers MoEngage has become ``pending`` batches (the slots pick them up at once), the others
are quarantined (their keys given back, as the inline gate did). No event is sent for a customer
MoEngage has not confirmed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import date
from typing import Any, Callable

log = logging.getLogger(__name__)

#: Awaiting events locked per round at most (ten per customer of the group); only the first
#: ``group_customers`` customers' are checked, the rest unlocked at the group's commit.
GROUP_EVENTS = 500
#: A group's customers take about this long to look up at the worker's pace: short groups keep
#: two slots' workers ending together (the night ends with the last group), and each found
#: customer's events are sent that much sooner.
GROUP_SECONDS = 5.0


def group_customers(lookups_per_minute: float, share: float) -> int:
    """Customers per group: :data:`GROUP_SECONDS` of lookups at this pace, 1 to 20 (one request)."""
    if lookups_per_minute <= 0:
        return 20
    return max(1, min(20, int(lookups_per_minute * share / 60 * GROUP_SECONDS)))


class LookupWorker:
    """:func:`check_awaiting` in a thread beside a load slot's sends; ``error`` if it failed."""

    def __init__(self, state_dsn: str, *, program_id: str, up_to_night: date, run_id: str, key: str,
                 lookup: Callable[[list[str]], set[str]], customers: int = 20) -> None:
        import threading

        self.error: BaseException | None = None
        self.stats: dict[str, Any] = {}
        # Set when the slot stops (done, or failed): the worker ends after its current group.
        self._stop = threading.Event()
        self._kwargs = dict(program_id=program_id, up_to_night=up_to_night, run_id=run_id, key=key, lookup=lookup,
                            customers=customers, stop=self._stop)
        self._thread = threading.Thread(target=self._run, name=f"lookups {key}", daemon=True, args=(state_dsn,))

    def _run(self, state_dsn: str) -> None:
        try:
            self.stats = check_awaiting(state_dsn, **self._kwargs)
        except BaseException as exc:  # reported by the slot, which fails its try
            log.warning("presence lookups stopped: %s", exc)
            self.error = exc

    def __enter__(self) -> "LookupWorker":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def check_awaiting(state_dsn: str, *, program_id: str, up_to_night: date, run_id: str, key: str,
                   lookup: Callable[[list[str]], set[str]], customers: int = 20,
                   stop: Any = None) -> dict[str, Any]:
    """Check every released awaiting event's customer of nights up to ``up_to_night``; returns
    the counts the report adds to the night's."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.report.stats import record_stats

    started = time.perf_counter()
    nights: dict[date, _Night] = {}
    with connect(state_dsn) as conn:
        while not (stop is not None and stop.is_set()) and _one_group(
                conn, program_id=program_id, up_to_night=up_to_night, run_id=run_id, lookup=lookup,
                customers=customers, nights=nights):
            pass
        seconds = round(time.perf_counter() - started, 4)
        # Counted by the night the events belong to, whichever run's slot checked them.
        for night, counts in sorted(nights.items()):
            stats = {**counts.totals, "events_by_type": dict(counts.by_type), "night": night.isoformat(),
                     "seconds": seconds if night == up_to_night else 0.0}
            record_stats(conn, program_id=program_id, night=night, run_id=run_id, stage="presence",
                         key=key if night == up_to_night else f"{key}:{night.isoformat()}", stats=stats)
        conn.commit()
    totals = sum((n.totals for n in nights.values()), Counter())
    out = {**totals, "nights": len(nights), "seconds": seconds}
    log.info("presence lookups: %s", out)
    return out


class _Night:
    """One night's share of a worker's counts."""

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self.by_type: Counter[str] = Counter()


def pending_lookups(conn: Any, program_id: str, up_to_night: date) -> int:
    """Released events of nights up to this one still waiting for their customer's check."""
    n = conn.execute("SELECT count(*) FROM moengage_sync.awaiting_presence WHERE program_id = %s AND released "
                     "AND night <= %s", (program_id, up_to_night)).fetchone()[0]
    conn.commit()
    return n


def _one_group(conn: Any, *, program_id: str, up_to_night: date, run_id: str,
               lookup: Callable[[list[str]], set[str]], customers: int, nights: dict[date, "_Night"]) -> bool:
    """Take a group (SKIP LOCKED: other slots' workers take others), look its customers up,
    enqueue or quarantine its events; False when there was nothing to take. The rows locked
    beyond the group's customers are unlocked by its commit, for the next group."""
    from datetime import timedelta

    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.moengage.presence import known_customers

    rows = conn.execute(
        "SELECT night, event_id, event_name, customer_id, element FROM moengage_sync.awaiting_presence "
        "WHERE program_id = %s AND released AND night <= %s ORDER BY customer_id, event_id LIMIT %s "
        "FOR UPDATE SKIP LOCKED", (program_id, up_to_night, min(GROUP_EVENTS, 10 * customers))).fetchall()
    if not rows:
        conn.commit()
        if pending_lookups(conn, program_id, up_to_night):
            # Another worker holds the rest: wait for its group rather than end, so both keep
            # spending their share until the last group (else the tail runs at one worker's pace).
            time.sleep(0.2)
            return True
        return False
    group = sorted({r[3] for r in rows})[:customers]
    rows = [r for r in rows if r[3] <= group[-1]]
    # Expired confirmations are looked up again as unknowns are (the program's presence lifetime).
    lifetime = timedelta(hours=get_program(program_id).presence_lifetime_hours)
    present, looked_up = known_customers(conn, program_id, group, lookup, lifetime=lifetime)
    found = [r for r in rows if r[3] in present]
    absent = [r for r in rows if r[3] not in present]
    for night in sorted({r[0] for r in rows}):
        counts = nights.setdefault(night, _Night())
        _enqueue(conn, program_id=program_id, night=night, run_id=run_id, rows=[r for r in found if r[0] == night],
                 totals=counts.totals, by_type=counts.by_type)
        counts.totals["not_in_moengage"] += sum(1 for r in absent if r[0] == night)
    # A lookup is counted once, on the newest night it served.
    nights[max(r[0] for r in rows)].totals["customer_lookups"] += looked_up
    _quarantine(conn, program_id=program_id, run_id=run_id, rows=absent)
    conn.execute("DELETE FROM moengage_sync.awaiting_presence WHERE program_id = %s AND event_id = ANY(%s)",
                 (program_id, [r[1] for r in rows]))
    conn.commit()
    return True


def _enqueue(conn: Any, *, program_id: str, night: date, run_id: str, rows: list[tuple], totals: Counter[str],
             by_type: Counter[str]) -> None:
    """Pack one night's found events into pending batches and point their keys at them."""
    import pyarrow as pa

    from loyalty_moengage.moengage.packing import TRANSITION_MAX_BYTES, pack_spans
    from loyalty_moengage.sync.outbox.enqueue import NewBatch, allocate_batch_ids, insert_batches
    from loyalty_moengage.sync.outbox.receipts import RECEIPT_RESERVE

    if not rows:
        return
    elements = pa.array([bytes(r[4]).decode() for r in rows], pa.string())
    limit = TRANSITION_MAX_BYTES - RECEIPT_RESERVE
    spans, oversize = pack_spans(elements, max_bytes=limit)
    if oversize:
        _quarantine(conn, program_id=program_id, run_id=run_id, rows=[rows[i] for i, _ in oversize],
                    reason=f"element over {limit} bytes")
    batches = [NewBatch("events", s.body, s.stop - s.start, 0, s.stop - s.start) for s in spans]
    batch_ids = allocate_batch_ids(conn, len(batches))
    insert_batches(conn, program_id=program_id, night=night, run_id=run_id, chunk_label="presence lookups",
                   batch_ids=batch_ids, batches=batches)
    conn.execute("UPDATE moengage_sync.batches SET state = 'pending' WHERE batch_id = ANY(%s)", (batch_ids,))
    pairs = [(rows[i][1], batch_id) for span, batch_id in zip(spans, batch_ids) for i in range(span.start, span.stop)]
    with conn.cursor() as cur:
        cur.executemany("UPDATE moengage_sync.event_keys SET batch_id = %s WHERE program_id = %s AND event_id = %s",
                        [(b, program_id, e) for e, b in pairs])
    totals["events_enqueued"] += len(pairs)
    totals["batches"] += len(batches)
    totals["event_requests"] += len(batches)
    totals["bytes"] += sum(len(b.body) for b in batches)
    by_type.update(rows[i][2] for span in spans for i in range(span.start, span.stop))


def _quarantine(conn: Any, *, program_id: str, run_id: str, rows: list[tuple], reason: str | None = None) -> None:
    """Customers MoEngage does not have: their events would create profiles. Quarantined, and
    their keys given back: a later run whose lookback re-reads their night (``late_row_lookback_nights``)
    checks the customer again once the absence's re-check is due, and sends them if MoEngage has the
    customer by then; past the lookback they stay in the quarantine."""
    import orjson

    from loyalty_moengage.sync.chunk.check import NOT_IN_MOENGAGE
    from loyalty_moengage.sync.outbox.enqueue import insert_quarantine

    for night in sorted({r[0] for r in rows}):
        insert_quarantine(conn, program_id=program_id, night=night, run_id=run_id, rows=(
            ("(presence)" if reason is None else "(payload)", reason or NOT_IN_MOENGAGE, r[1],
             orjson.dumps({"event_id": r[1], "event_name": r[2], "customer_id": r[3]})) for r in rows if r[0] == night))
    if rows:
        conn.execute("DELETE FROM moengage_sync.event_keys WHERE program_id = %s AND event_id = ANY(%s) "
                     "AND batch_id IS NULL", (program_id, [r[1] for r in rows]))
