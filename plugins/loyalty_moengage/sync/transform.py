"""One chunk of a night: extract with the SQL templates, check rows, build and enqueue payloads.

Everything a chunk writes to the state database (batches, event keys, quarantine, stats) is
one transaction, so a retried or cleared chunk either finds its work done or redoes all of it;
event_ids already enqueued by any earlier run are skipped, which is what makes reruns and
backfills send no event twice. Two runs of one night enqueuing the same events at once collide
on the event-key primary key: the loser's transaction waits for the winner, rolls back and is
redone, and then finds those events already enqueued.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Callable

log = logging.getLogger(__name__)

NOT_IN_MOENGAGE = "customer_id not found in MoEngage (the event would create a profile)"


@dataclass(frozen=True)
class Window:
    start: datetime      # UTC, inclusive
    end: datetime        # UTC, exclusive
    night: date          # local date of the night in the program's zone
    time_zone: str

    @classmethod
    def for_interval(cls, start: datetime, end: datetime, time_zone: str) -> "Window":
        from zoneinfo import ZoneInfo

        return cls(start=start, end=end, night=start.astimezone(ZoneInfo(time_zone)).date(), time_zone=time_zone)

    def params(self, program_id: str, lo: int, hi: int) -> dict[str, Any]:
        return {
            "program_id": program_id,
            "window_start": self.start,
            "window_end": self.end,
            "night": self.night,
            "time_zone": self.time_zone,
            "member_lo": lo,
            "member_hi": hi,
        }


@dataclass
class _Rejects:
    """Rows that will not be sent, with their reasons, gathered while a chunk is checked."""

    rows: list[tuple[str, str, str | None, bytes]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, template: str, reason: str, key: str | None, row: bytes, *, count: bool = True) -> None:
        self.rows.append((template, reason, key, row))
        if count:
            self.reasons[reason] += 1

    def add_rows(self, template: str, table: Any, mask: Any, reasons: Any, columns: Any, key_col: str, *,
                 column: str | None = None) -> None:
        """The rows of ``table`` where mask is true, each with its reason (an array, or one text
        for all) about ``columns`` (an array) or ``column``; per-row Python over these rows only."""
        import pyarrow as pa

        from loyalty_moengage.sync.validate import KEPT_CHARS, detail, quarantine_row

        rows = table.filter(mask).to_pylist()
        n = len(rows)
        why = reasons.filter(mask).to_pylist() if isinstance(reasons, (pa.Array, pa.ChunkedArray)) else [reasons] * n
        about = columns.filter(mask).to_pylist() if columns is not None else [column] * n
        for row, reason, col in zip(rows, why, about):
            text = detail(template, reason, col, row.get(col) if col else None)
            key = row.get(key_col)
            if isinstance(key, str) and len(key) > KEPT_CHARS:
                key = key[:KEPT_CHARS]
            self.add(template, reason, key, quarantine_row(row, text))

    def copy(self) -> "_Rejects":
        return _Rejects(list(self.rows), Counter(self.reasons))


@dataclass
class _Checked:
    """A chunk after the row checks: one table of sendable events, the members, the rejects."""

    events: Any                 # pa.Table: event_id, event_name, customer_id, element; or None
    users: Any                  # pa.Table of the member template's valid rows; or None
    user_kinds: dict[str, str]
    user_template: str
    rows_extracted: int
    members_extracted: int
    rejects: _Rejects


def transform_chunk(*, program_id: str, window: Window, lo: int, hi: int, label: str, run_id: str,
                    send_users: bool, loyalty_dsn: str, state_dsn: str,
                    lookup: Callable[[list[str]], set[str]] | None = None) -> dict[str, Any]:
    """Extract, check and enqueue one member-id range; returns a small stats descriptor."""
    import psycopg

    from loyalty_moengage.db import connect

    done = _done_before(state_dsn, program_id, run_id, label)
    if done:
        return done

    seconds: Counter[str] = Counter()
    t0 = time.perf_counter()
    extracts = _extract(loyalty_dsn, window.params(program_id, lo, hi))
    seconds["extract"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    checked = _check(extracts, window)
    seconds["transform"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    present, lookups = _presence(state_dsn, checked.events, program_id=program_id, lookup=lookup)
    seconds["lookup"] += time.perf_counter() - t0

    for attempt in range(1, 4):
        if attempt > 1 and (done := _done_before(state_dsn, program_id, run_id, label)):
            return done  # the collision was with another attempt of this very chunk, which won
        try:
            with connect(state_dsn) as sconn:
                return _enqueue(sconn, checked, program_id=program_id, window=window, run_id=run_id, label=label,
                                lo=lo, hi=hi, send_users=send_users, present=present, lookups=lookups,
                                seconds=Counter(seconds))
        except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected):
            if attempt == 3:
                raise
            log.info("%s: another run enqueued some of these events at the same time; enqueuing again", label)
    raise AssertionError("unreachable")


def _done_before(state_dsn: str, program_id: str, run_id: str, label: str) -> dict[str, Any] | None:
    """The stats of an attempt of this run's chunk that committed (a worker died after its commit,
    or a zombie attempt finished first)."""
    from loyalty_moengage.db import connect

    with connect(state_dsn) as sconn:
        done = sconn.execute(
            "SELECT stats FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s "
            "AND stage = 'transform' AND task_key = %s", (program_id, run_id, label)).fetchone()
    if done:
        log.info("%s already enqueued by an earlier attempt of this run", label)
    return done[0] if done else None


def _extract(loyalty_dsn: str, params: dict[str, Any]) -> list[Any]:
    """Every template's rows of the chunk, from one consistent snapshot."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.contract import load_templates
    from loyalty_moengage.sync.extract import SESSION_SETTINGS, extract

    templates = load_templates()
    with connect(loyalty_dsn) as lconn:
        lconn.execute(SESSION_SETTINGS)
        lconn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        extracts = [extract(lconn, t, params) for t in templates]
        lconn.rollback()
    return extracts


def _check(extracts: list[Any], window: Window) -> _Checked:
    """Row checks (the quarantine's reasons), values left out, duplicates, and the event elements."""
    import pyarrow.compute as pc

    from loyalty_moengage.sync.payloads import event_elements
    from loyalty_moengage.sync.validate import (
        duplicate_mask, event_reasons, member_reasons, normalise_times, without_values)

    rejects = _Rejects()
    ev_tables: list[tuple[str, Any, Any]] = []
    checked = _Checked(events=None, users=None, user_kinds={}, user_template="",
                       rows_extracted=sum(e.table.num_rows for e in extracts), members_extracted=0,
                       rejects=rejects)
    for ex in extracts:
        name = ex.template.name
        table, kinds = normalise_times(ex.table, ex.kinds, window.time_zone)
        if ex.template.kind == "events":
            reasons, key_col = event_reasons(table, kinds, window.end), "event_id"
        else:
            checked.members_extracted += table.num_rows
            reasons, key_col = member_reasons(table, kinds), "customer_id"
        bad = pc.is_valid(reasons.row)
        any_bad = pc.any(bad).as_py()
        if any_bad:
            rejects.add_rows(name, table, bad, reasons.row, reasons.row_column, key_col)
        if reasons.attributes:
            good = pc.invert(bad)
            for column, why in reasons.attributes.items():
                rejects.add_rows(name, table, pc.and_(good, pc.is_valid(why)), why, None, key_col, column=column)
            table = without_values(table, reasons.attributes)
        if any_bad:
            table = table.filter(pc.invert(bad))
        if ex.template.kind == "events":
            if table.num_rows:
                ev_tables.append((name, table, event_elements(table, kinds, window.time_zone)))
            continue
        dup = duplicate_mask(table.column("customer_id").combine_chunks())
        if pc.any(dup).as_py():
            rejects.add_rows(name, table, dup, "duplicate customer_id", None, key_col, column="customer_id")
            table = table.filter(pc.invert(dup))
        checked.users, checked.user_kinds, checked.user_template = table, kinds, name
    if ev_tables:
        checked.events = _event_table(ev_tables, rejects)
    return checked


def _event_table(ev_tables: list[tuple[str, Any, Any]], rejects: _Rejects) -> Any:
    """All templates' events as one table; an event_id returned twice is quarantined (the first
    one, in template order, is kept)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from loyalty_moengage.sync.validate import detail, duplicate_mask, quarantine_row

    def column(name: str) -> Any:
        return pa.concat_arrays([t.column(name).combine_chunks() for _, t, _ in ev_tables])

    events = pa.table({
        "event_id": column("event_id"),
        "event_name": column("event_name"),
        "customer_id": column("customer_id"),
        "element": pa.concat_arrays([e.cast(pa.large_string()) for _, _, e in ev_tables]),
    })
    dup = duplicate_mask(events.column("event_id").combine_chunks())
    if pc.any(dup).as_py():
        ends = np.cumsum([t.num_rows for _, t, _ in ev_tables])
        ids, names = events.column("event_id"), events.column("event_name")
        for i in pc.indices_nonzero(dup).to_pylist():
            template = ev_tables[int(np.searchsorted(ends, i, side="right"))][0]
            eid = ids[i].as_py()
            why = detail(template, "duplicate event_id", "event_id", eid)
            rejects.add(template, "duplicate event_id", eid,
                        quarantine_row({"event_id": eid, "event_name": names[i].as_py()}, why))
        events = events.filter(pc.invert(dup))
    return events


def _presence(state_dsn: str, events: Any, *, program_id: str,
              lookup: Callable[[list[str]], set[str]] | None) -> tuple[set[str] | None, int]:
    """Which customers of the chunk's new events MoEngage knows (None: not checked), asked before
    the state transaction opens: a minute of Get User API calls must not hold its locks."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.moengage.presence import known_customers
    from loyalty_moengage.sync import outbox

    if lookup is None or events is None or not events.num_rows:
        return None, 0
    with connect(state_dsn) as conn:
        existing = outbox.existing_event_ids(conn, program_id, events.column("event_id").to_pylist())
        customers = {cid for eid, cid in zip(events.column("event_id").to_pylist(),
                                             events.column("customer_id").to_pylist()) if eid not in existing}
        return known_customers(conn, program_id, sorted(customers), lookup)


def _enqueue(sconn: Any, checked: _Checked, *, program_id: str, window: Window, run_id: str, label: str,
             lo: int, hi: int, send_users: bool, present: set[str] | None, lookups: int,
             seconds: Counter[str]) -> dict[str, Any]:
    """The chunk's one state transaction: drop events enqueued before and those of customers
    MoEngage does not know, pack, and write batches, event keys, quarantine and stats together."""
    from loyalty_moengage.sync import outbox
    from loyalty_moengage.sync.report import record_stats

    t0 = time.perf_counter()
    rejects = checked.rejects.copy()
    stats: dict[str, Any] = {"events_already_sent": 0, "not_in_moengage": 0, "customer_lookups": lookups}
    events = _new_events(sconn, checked.events, program_id=program_id, present=present, rejects=rejects,
                         stats=stats)
    t1 = time.perf_counter()
    event_batches, keys, events_by_type = _pack_events(events, rejects)
    user_batches: list[outbox.NewBatch] = []
    if send_users and checked.users is not None and checked.users.num_rows:
        why_not = outbox.claim_attribute_chunk(sconn, program_id=program_id, night=window.night, lo=lo, hi=hi,
                                               run_id=run_id, chunk_label=label)
        if why_not:
            log.info("attribute refresh of %s not enqueued: %s", label, why_not)
            stats["attributes_skip_reason"] = why_not
        else:
            user_batches = _pack_users(checked, rejects)
    packing = time.perf_counter() - t1
    seconds["transform"] += packing
    all_batches = event_batches + user_batches
    batch_ids = outbox.allocate_batch_ids(sconn, len(all_batches))
    outbox.insert_batches(sconn, program_id=program_id, night=window.night, run_id=run_id,
                          chunk_label=label, batch_ids=batch_ids, batches=all_batches)
    if keys is not None:
        _insert_keys(sconn, keys, batch_ids, program_id=program_id, night=window.night)
    outbox.insert_quarantine(sconn, program_id=program_id, night=window.night, run_id=run_id, rows=rejects.rows)
    seconds["outbox"] += time.perf_counter() - t0 - packing
    stats.update({
        "label": label,
        "rows_extracted": checked.rows_extracted,
        "events_by_type": dict(events_by_type),
        "events_extracted": 0 if checked.events is None else checked.events.num_rows,
        "events_enqueued": sum(events_by_type.values()),
        "members_extracted": checked.members_extracted,
        "members_enqueued": sum(b.users for b in user_batches),
        "quarantined": dict(rejects.reasons),
        "batches": len(all_batches),
        "bytes": sum(len(b.body) for b in all_batches),
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
    })
    record_stats(sconn, program_id=program_id, night=window.night, run_id=run_id, stage="transform",
                 key=label, stats=stats)
    sconn.commit()
    return stats


def _new_events(sconn: Any, events: Any, *, program_id: str, present: set[str] | None, rejects: _Rejects,
                stats: dict[str, Any]) -> Any:
    """The events no run has enqueued before, for customers MoEngage knows."""
    import orjson
    import pyarrow as pa
    import pyarrow.compute as pc

    from loyalty_moengage.sync import outbox

    if events is None or not events.num_rows:
        return None
    existing = outbox.existing_event_ids(sconn, program_id, events.column("event_id").to_pylist())
    if existing:
        keep = pc.invert(pc.is_in(events.column("event_id"), value_set=pa.array(sorted(existing), pa.string())))
        stats["events_already_sent"] = events.num_rows - pc.sum(keep.cast(pa.int64())).as_py()
        events = events.filter(keep)
    if present is None or not events.num_rows:
        return events
    known = pc.is_in(events.column("customer_id"), value_set=pa.array(sorted(present), pa.string()))
    unknown = events.filter(pc.invert(known))
    for eid, name, cid in zip(unknown.column("event_id").to_pylist(), unknown.column("event_name").to_pylist(),
                              unknown.column("customer_id").to_pylist()):
        rejects.add("(presence)", NOT_IN_MOENGAGE, eid,
                    orjson.dumps({"event_id": eid, "event_name": name, "customer_id": cid}), count=False)
    stats["not_in_moengage"] = unknown.num_rows
    return events.filter(known)


def _pack_events(events: Any, rejects: _Rejects) -> tuple[list[Any], Any, Counter[str]]:
    """Event batches, and the event-key rows (event_id, event_name, batch index) they carry."""
    import numpy as np
    import orjson
    import pyarrow as pa
    import pyarrow.compute as pc

    from loyalty_moengage.sync import outbox
    from loyalty_moengage.moengage.packing import pack_spans

    by_type: Counter[str] = Counter()
    if events is None or not events.num_rows:
        return [], None, by_type
    spans, oversize = pack_spans(events.column("element").combine_chunks())
    ids = events.column("event_id")
    for idx, size in oversize:
        rejects.add("(payload)", "element over 100000 bytes", ids[idx].as_py(),
                    orjson.dumps({"event_id": ids[idx].as_py(), "bytes": size}))
    if not spans:
        return [], None, by_type
    batch_of = np.full(events.num_rows, -1, dtype=np.int64)
    batches = []
    for k, span in enumerate(spans):
        n = span.stop - span.start
        batches.append(outbox.NewBatch("events", span.body, n, 0, n))
        batch_of[span.start:span.stop] = k
    keys = pa.table({"event_id": ids, "event_name": events.column("event_name"), "batch": pa.array(batch_of)})
    if oversize:
        keys = keys.filter(pc.greater_equal(keys.column("batch"), 0))
    by_type.update({c["values"]: c["counts"] for c in pc.value_counts(keys.column("event_name")).to_pylist()})
    return batches, keys, by_type


def _pack_users(checked: _Checked, rejects: _Rejects) -> list[Any]:
    import orjson

    from loyalty_moengage.sync import outbox
    from loyalty_moengage.moengage.packing import pack_spans
    from loyalty_moengage.sync.payloads import user_elements

    spans, oversize = pack_spans(user_elements(checked.users, checked.user_kinds))
    cids = checked.users.column("customer_id").combine_chunks()
    for idx, size in oversize:
        rejects.add(checked.user_template, "element over 100000 bytes", cids[idx].as_py(),
                    orjson.dumps({"customer_id": cids[idx].as_py(), "bytes": size}))
    return [outbox.NewBatch("users", s.body, s.stop - s.start, s.stop - s.start, 0) for s in spans]


def _insert_keys(sconn: Any, keys: Any, batch_ids: list[int], *, program_id: str, night: date) -> None:
    import numpy as np
    import pyarrow as pa

    from loyalty_moengage.sync import outbox

    ids = np.asarray(batch_ids, dtype=np.int64)[keys.column("batch").to_numpy()]
    rows = pa.table({
        "program_id": pa.array([program_id] * keys.num_rows),
        "event_id": keys.column("event_id"),
        "night": pa.array([night.isoformat()] * keys.num_rows),
        "event_name": keys.column("event_name"),
        "batch_id": pa.array(ids),
    })
    outbox.insert_event_keys(sconn, outbox.to_csv(rows))
