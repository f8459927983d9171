"""One chunk of a night: extract with the SQL templates, check rows, build and enqueue payloads.

Everything a chunk writes to the state database (batches, event keys, quarantine, stats) is
one transaction, so a retried or cleared chunk either finds its work done or redoes all of it;
event_ids already enqueued by any earlier run are skipped, which is what makes reruns and
backfills send no event twice.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
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


def _row_json(table: Any, mask: Any) -> list[bytes]:
    import orjson

    return [orjson.dumps(r) for r in table.filter(mask).to_pylist()]


def transform_chunk(*, program_id: str, window: Window, lo: int, hi: int, label: str, run_id: str,
                    send_users: bool, loyalty_dsn: str, state_dsn: str,
                    lookup: Callable[[list[str]], set[str]] | None = None) -> dict[str, Any]:
    """Extract, check and enqueue one member-id range; returns a small stats descriptor."""
    import orjson
    import pyarrow as pa
    import pyarrow.compute as pc

    from loyalty_moengage.sync import outbox
    from loyalty_moengage.sync.contract import load_templates
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.extract import SESSION_SETTINGS, extract
    from loyalty_moengage.sync.payloads import event_elements, pack_spans, user_elements
    from loyalty_moengage.sync.report import record_stats
    from loyalty_moengage.sync.validate import duplicate_mask, event_reasons, member_reasons

    seconds: Counter[str] = Counter()
    quarantine: list[tuple[str, str, str | None, bytes]] = []
    reasons_count: Counter[str] = Counter()
    params = window.params(program_id, lo, hi)

    with connect(state_dsn) as sconn:
        done = sconn.execute(
            "SELECT stats FROM moengage_sync.task_stats WHERE program_id = %s AND run_id = %s "
            "AND stage = 'transform' AND task_key = %s", (program_id, run_id, label)).fetchone()
    if done:
        # An earlier attempt of this chunk committed (the worker died after the commit).
        log.info("%s already enqueued by an earlier attempt of this run", label)
        return done[0]

    t0 = time.perf_counter()
    templates = load_templates()
    with connect(loyalty_dsn) as lconn:
        lconn.execute(SESSION_SETTINGS)
        lconn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        extracts = [extract(lconn, t, params) for t in templates]
        lconn.rollback()
    seconds["extract"] += time.perf_counter() - t0
    rows_extracted = sum(e.table.num_rows for e in extracts)

    t0 = time.perf_counter()
    ev_tables: list[Any] = []
    ev_elements: list[Any] = []
    members_extracted = 0
    user_table = None
    user_kinds: dict[str, str] = {}
    user_template = ""
    for ex in extracts:
        table = ex.table
        if ex.template.kind == "events":
            reasons = event_reasons(table, ex.kinds, window.end)
            key_col = "event_id"
        else:
            members_extracted += table.num_rows
            reasons = member_reasons(table, ex.kinds)
            key_col = "customer_id"
        bad = pc.is_valid(reasons)
        if pc.any(bad).as_py():
            bad_reasons = reasons.filter(bad).to_pylist()
            bad_keys = table.column(key_col).combine_chunks().filter(bad).to_pylist()
            for reason, key, row in zip(bad_reasons, bad_keys, _row_json(table, bad)):
                quarantine.append((ex.template.name, reason, key, row))
                reasons_count[reason] += 1
            table = table.filter(pc.invert(bad))
        if ex.template.kind == "events":
            if table.num_rows:
                ev_tables.append((ex.template.name, table))
                ev_elements.append(event_elements(table, ex.kinds, window.time_zone))
        else:
            dup = duplicate_mask(table.column("customer_id").combine_chunks())
            if pc.any(dup).as_py():
                for key, row in zip(table.column("customer_id").combine_chunks().filter(dup).to_pylist(),
                                    _row_json(table, dup)):
                    quarantine.append((ex.template.name, "duplicate customer_id", key, row))
                    reasons_count["duplicate customer_id"] += 1
                table = table.filter(pc.invert(dup))
            user_table, user_kinds, user_template = table, ex.kinds, ex.template.name

    # Events of all templates of the chunk, checked for duplicate event_ids across templates.
    if ev_tables:
        ids = pa.concat_arrays([t.column("event_id").combine_chunks() for _, t in ev_tables])
        names = pa.concat_arrays([t.column("event_name").combine_chunks() for _, t in ev_tables])
        elements = pa.concat_arrays([e.cast(pa.large_string()) for e in ev_elements])
        dup = duplicate_mask(ids)
        dup_keep = None
        if pc.any(dup).as_py():
            template_of = []
            for name, t in ev_tables:
                template_of.extend([name] * t.num_rows)
            dup_idx = pc.indices_nonzero(dup).to_pylist()
            for i in dup_idx:
                row = {"event_id": ids[i].as_py(), "event_name": names[i].as_py()}
                quarantine.append((template_of[i], "duplicate event_id", ids[i].as_py(), orjson.dumps(row)))
                reasons_count["duplicate event_id"] += 1
            keep = pc.invert(dup)
            dup_keep = keep
            ids, names, elements = ids.filter(keep), names.filter(keep), elements.filter(keep)
    else:
        ids = names = elements = None
    events_extracted = 0 if ids is None else len(ids)
    seconds["transform"] += time.perf_counter() - t0

    t0 = time.perf_counter()
    transform_before = seconds["transform"]
    stats: dict[str, Any] = {}
    with connect(state_dsn) as sconn:
        events_by_type: Counter[str] = Counter()
        already = 0
        not_in_moengage = 0
        lookups = 0
        new_batches: list[outbox.NewBatch] = []
        key_tables = []
        if ids is not None and len(ids):
            existing = outbox.existing_event_ids(sconn, program_id, ids.to_pylist())
            if existing:
                keep = pc.invert(pc.is_in(ids, pa.array(sorted(existing))))
                already = len(ids) - pc.sum(keep.cast(pa.int64())).as_py()
                ids, names, elements = ids.filter(keep), names.filter(keep), elements.filter(keep)
            if lookup is not None and len(ids):
                from loyalty_moengage.moengage.presence import known_customers

                cids = pa.concat_arrays([t.column("customer_id").combine_chunks() for _, t in ev_tables])
                if dup_keep is not None:
                    cids = cids.filter(dup_keep)
                if existing:
                    cids = cids.filter(keep)
                t1 = time.perf_counter()
                present, looked_up = known_customers(sconn, program_id, sorted(set(cids.to_pylist())), lookup)
                seconds["lookup"] += time.perf_counter() - t1
                lookups = looked_up
                known = pc.is_in(cids, pa.array(sorted(present), pa.string()))
                unknown = pc.invert(known)
                if pc.any(unknown).as_py():
                    for eid, name, cid in zip(ids.filter(unknown).to_pylist(), names.filter(unknown).to_pylist(),
                                              cids.filter(unknown).to_pylist()):
                        quarantine.append(("(presence)", NOT_IN_MOENGAGE, eid,
                                           orjson.dumps({"event_id": eid, "event_name": name, "customer_id": cid})))
                        not_in_moengage += 1
                    ids, names, elements = ids.filter(known), names.filter(known), elements.filter(known)
            t1 = time.perf_counter()
            spans, oversize = pack_spans(elements)
            seconds["transform"] += time.perf_counter() - t1
            for idx, size in oversize:
                quarantine.append(("(payload)", "element over 100000 bytes", ids[idx].as_py(),
                                   orjson.dumps({"event_id": ids[idx].as_py(), "bytes": size})))
                reasons_count["element over 100000 bytes"] += 1
            batch_index = []
            for k, span in enumerate(spans):
                n = span.stop - span.start
                new_batches.append(outbox.NewBatch("events", span.body, n, 0, n))
                batch_index.append((span.start, span.stop, k))
            if spans:
                counts = pc.value_counts(names).to_pylist()
                sent_mask = None
                if oversize:
                    import numpy as np

                    m = np.ones(len(ids), dtype=bool)
                    m[[i for i, _ in oversize]] = False
                    sent_mask = pa.array(m)
                    counts = pc.value_counts(names.filter(sent_mask)).to_pylist()
                events_by_type.update({c["values"]: c["counts"] for c in counts})
                key_tables.append((batch_index, sent_mask))
        user_batches: list[outbox.NewBatch] = []
        members_enqueued = 0
        if send_users and user_table is not None and user_table.num_rows:
            if outbox.users_already_enqueued(sconn, program_id=program_id, run_id=run_id, chunk_label=label):
                log.info("attribute refresh of %s already enqueued by an earlier attempt", label)
            else:
                t1 = time.perf_counter()
                uel = user_elements(user_table, user_kinds)
                spans_u, oversize_u = pack_spans(uel)
                seconds["transform"] += time.perf_counter() - t1
                cids = user_table.column("customer_id").combine_chunks()
                for idx, size in oversize_u:
                    quarantine.append((user_template, "element over 100000 bytes", cids[idx].as_py(),
                                       orjson.dumps({"customer_id": cids[idx].as_py(), "bytes": size})))
                    reasons_count["element over 100000 bytes"] += 1
                for span in spans_u:
                    n = span.stop - span.start
                    user_batches.append(outbox.NewBatch("users", span.body, n, n, 0))
                    members_enqueued += n

        all_batches = new_batches + user_batches
        batch_ids = outbox.allocate_batch_ids(sconn, len(all_batches))
        outbox.insert_batches(sconn, program_id=program_id, night=window.night, run_id=run_id,
                              chunk_label=label, batch_ids=batch_ids, batches=all_batches)
        if key_tables:
            import numpy as np

            batch_index, sent_mask = key_tables[0]
            bid = np.zeros(len(ids), dtype=np.int64)
            for start, stop, k in batch_index:
                bid[start:stop] = batch_ids[k]
            keys = pa.table({
                "program_id": pa.array([program_id] * len(ids)),
                "event_id": ids,
                "night": pa.array([window.night.isoformat()] * len(ids)),
                "event_name": names,
                "batch_id": pa.array(bid),
            })
            if sent_mask is not None:
                keys = keys.filter(sent_mask)
            outbox.insert_event_keys(sconn, outbox.to_csv(keys))
        outbox.insert_quarantine(sconn, program_id=program_id, night=window.night, run_id=run_id, rows=quarantine)
        seconds["outbox"] += (time.perf_counter() - t0 - (seconds["transform"] - transform_before)
                              - seconds["lookup"])
        stats = {
            "label": label,
            "rows_extracted": rows_extracted,
            "events_by_type": dict(events_by_type),
            "events_extracted": events_extracted,
            "events_enqueued": sum(events_by_type.values()),
            "events_already_sent": already,
            "members_extracted": members_extracted,
            "members_enqueued": members_enqueued,
            "quarantined": dict(reasons_count),
            "not_in_moengage": not_in_moengage,
            "customer_lookups": lookups,
            "batches": len(all_batches),
            "bytes": sum(len(b.body) for b in all_batches),
            "seconds": {k: round(v, 4) for k, v in seconds.items()},
        }
        record_stats(sconn, program_id=program_id, night=window.night, run_id=run_id, stage="transform",
                     key=label, stats=stats)
        sconn.commit()
    return stats
