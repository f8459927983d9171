"""A checked chunk packed into request bodies: the events no run enqueued before, for customers
MoEngage knows, and the members' attribute updates, in bodies of at most 100,000 bytes
(``moengage/packing.py``). Pure: the sink decides where the bodies go.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from loyalty_moengage.sync.chunk.check import NOT_IN_MOENGAGE, Checked, Rejects
from loyalty_moengage.sync.outbox.enqueue import NewBatch, Reliance
from loyalty_moengage.sync.chunk.gate import Known


@dataclass(frozen=True)
class Packed:
    events: Any                      # pa.Table of the events packed (event_id, event_name, customer_id, element)
    event_batches: list[NewBatch]
    keys: Any                        # pa.Table: event_id, event_name, batch (index into event_batches); or None
    user_batches: list[NewBatch]
    rejects: Rejects
    events_by_type: Counter[str] = field(default_factory=Counter)
    events_already_sent: int = 0
    not_in_moengage: int = 0
    customer_lookups: int = 0         # Get User API lookups the gate made
    attributes_skip_reason: str | None = None
    awaiting: Any = None              # pa.Table of events whose customer is checked later (same columns as events)
    reliance: Reliance = Reliance()   # other runs' staged work the events dropped as already sent wait in

    @property
    def batches(self) -> list[NewBatch]:
        return self.event_batches + self.user_batches

    def without_users(self, reason: str) -> "Packed":
        """The attribute refresh went to another run after all (decided in the sink's transaction)."""
        return replace(self, user_batches=[], attributes_skip_reason=reason)


def pack_chunk(checked: Checked, known: Known) -> Packed:
    rejects = checked.rejects.copy()
    events, already, absent, awaiting = _new_events(checked.events, known, rejects)
    event_batches, keys, by_type = _pack_events(events, rejects)
    user_batches = _pack_users(checked, rejects) if known.send_users else []
    return Packed(events=events, event_batches=event_batches, keys=keys, user_batches=user_batches, rejects=rejects,
                  events_by_type=by_type, events_already_sent=already, not_in_moengage=absent, customer_lookups=known.lookups,
                  attributes_skip_reason=known.attributes_skip_reason, awaiting=awaiting, reliance=known.reliance)


def _new_events(events: Any, known: Known, rejects: Rejects) -> tuple[Any, int, int, Any]:
    """The events no run has enqueued before, for customers MoEngage knows; with how many were
    dropped as already sent, how many quarantined as unknown to MoEngage, and the events whose
    customers are checked later (deferred lookups), or None."""
    import orjson
    import pyarrow as pa
    import pyarrow.compute as pc

    if events is None or not events.num_rows:
        return None, 0, 0, None
    already = 0
    if known.already_enqueued:
        keep = pc.invert(pc.is_in(events.column("event_id"),
                                  value_set=pa.array(sorted(known.already_enqueued), pa.string())))
        already = events.num_rows - pc.sum(keep.cast(pa.int64())).as_py()
        events = events.filter(keep)
    if known.present is None or not events.num_rows:
        return events, already, 0, None
    awaiting = None
    if known.awaiting:
        later = pc.is_in(events.column("customer_id"), value_set=pa.array(sorted(known.awaiting), pa.string()))
        awaiting, events = events.filter(later), events.filter(pc.invert(later))
    found = pc.is_in(events.column("customer_id"), value_set=pa.array(sorted(known.present), pa.string()))
    unknown = events.filter(pc.invert(found))
    for eid, name, cid in zip(unknown.column("event_id").to_pylist(), unknown.column("event_name").to_pylist(),
                              unknown.column("customer_id").to_pylist()):
        rejects.add("(presence)", NOT_IN_MOENGAGE, eid,
                    orjson.dumps({"event_id": eid, "event_name": name, "customer_id": cid}), count=False)
    return events.filter(found), already, unknown.num_rows, awaiting


def _pack_events(events: Any, rejects: Rejects) -> tuple[list[NewBatch], Any, Counter[str]]:
    """Event batches, and the event-key rows (event_id, event_name, batch index) they carry."""
    import numpy as np
    import orjson
    import pyarrow as pa
    import pyarrow.compute as pc

    from loyalty_moengage.moengage.packing import TRANSITION_MAX_BYTES, pack_spans
    from loyalty_moengage.sync.outbox.receipts import RECEIPT_RESERVE

    by_type: Counter[str] = Counter()
    if events is None or not events.num_rows:
        return [], None, by_type
    # Room is left for the receipt element the load adds to each events request (receipts.py).
    spans, oversize = pack_spans(events.column("element").combine_chunks(),
                                 max_bytes=TRANSITION_MAX_BYTES - RECEIPT_RESERVE)
    ids = events.column("event_id")
    for idx, size in oversize:
        rejects.add("(payload)", f"element over {TRANSITION_MAX_BYTES - RECEIPT_RESERVE} bytes", ids[idx].as_py(),
                    orjson.dumps({"event_id": ids[idx].as_py(), "bytes": size}))
    if not spans:
        return [], None, by_type
    batch_of = np.full(events.num_rows, -1, dtype=np.int64)
    batches = []
    for k, span in enumerate(spans):
        n = span.stop - span.start
        batches.append(NewBatch("events", span.body, n, 0, n))
        batch_of[span.start:span.stop] = k
    keys = pa.table({"event_id": ids, "event_name": events.column("event_name"), "batch": pa.array(batch_of)})
    if oversize:
        keys = keys.filter(pc.greater_equal(keys.column("batch"), 0))
    by_type.update({c["values"]: c["counts"] for c in pc.value_counts(keys.column("event_name")).to_pylist()})
    return batches, keys, by_type


def pack_users(checked: Checked) -> list[NewBatch]:
    """Only the members' attribute updates of ``checked`` (an element over the limit is rejected
    into ``checked.rejects``)."""
    return _pack_users(checked, checked.rejects)


def _pack_users(checked: Checked, rejects: Rejects) -> list[NewBatch]:
    import orjson

    from loyalty_moengage.moengage.packing import pack_spans
    from loyalty_moengage.sync.chunk.payloads import user_elements

    spans, oversize = pack_spans(user_elements(checked.users, checked.user_kinds))
    cids = checked.users.column("customer_id").combine_chunks()
    for idx, size in oversize:
        rejects.add(checked.user_template, "element over 100000 bytes", cids[idx].as_py(),
                    orjson.dumps({"customer_id": cids[idx].as_py(), "bytes": size}))
    return [NewBatch("users", s.body, s.stop - s.start, s.stop - s.start, 0) for s in spans]


def with_attributes(packed: Packed, members: Checked) -> Packed:
    """The live lane's bodies (``live.attributes``): each customer's attribute element, then its
    events, in one request, so the event's campaign finds the new balance beside it. A customer
    whose elements cannot share one body with its attributes sends its events without them."""
    import pyarrow as pa

    from loyalty_moengage.sync.chunk.payloads import user_elements

    if packed.keys is None or not packed.keys.num_rows:
        return packed
    rejects = packed.rejects.copy()
    for row in members.rejects.rows:
        rejects.add(*row)
    attrs: dict[str, str] = {}
    if members.users is not None and members.users.num_rows:
        attrs = dict(zip(members.users.column("customer_id").to_pylist(),
                         user_elements(members.users, members.user_kinds).to_pylist()))
    events = _packed_events(packed)
    groups = _groups(events.column("customer_id").to_pylist())
    elements = events.column("element").to_pylist()
    batches, batch_of, alone = _pack_groups(groups, elements, attrs)
    if alone:   # too big to share a body with their attributes: their events as the night packs them
        rest = events.take(pa.array(alone))
        more, keys, _ = _pack_events(rest, rejects)
        if keys is not None:
            for i, b in zip(alone, keys.column("batch").to_pylist()):
                batch_of[i] = len(batches) + b
        batches += more
    keys = pa.table({"event_id": events.column("event_id"), "event_name": events.column("event_name"),
                     "batch": pa.array(batch_of, pa.int64())})
    return replace(packed, event_batches=batches, keys=keys, rejects=rejects)


def _packed_events(packed: Packed) -> Any:
    """The events the pack put in a body (an element over the limit alone is not), by customer."""
    import pyarrow.compute as pc

    events = packed.events.filter(pc.is_in(packed.events.column("event_id"), value_set=packed.keys.column("event_id")))
    return events.take(pc.sort_indices(events, [("customer_id", "ascending"), ("event_id", "ascending")]))


def _groups(customers: list[str]) -> list[tuple[str, list[int]]]:
    groups: list[tuple[str, list[int]]] = []
    for i, cid in enumerate(customers):
        if groups and groups[-1][0] == cid:
            groups[-1][1].append(i)
        else:
            groups.append((cid, [i]))
    return groups


def _pack_groups(groups: list[tuple[str, list[int]]], elements: list[str], attrs: dict[str, str]
                 ) -> tuple[list[NewBatch], list[int], list[int]]:
    """Bodies of whole customer groups; the batch of each event (-1: not packed), and the events
    of groups too big for one body."""
    import pyarrow as pa

    from loyalty_moengage.moengage.packing import TRANSITION_MAX_BYTES, pack_spans
    from loyalty_moengage.sync.outbox.receipts import RECEIPT_RESERVE

    texts = [",".join(([attrs[cid]] if cid in attrs else []) + [elements[i] for i in idx]) for cid, idx in groups]
    spans, oversize = pack_spans(pa.array(texts, pa.string()), max_bytes=TRANSITION_MAX_BYTES - RECEIPT_RESERVE)
    batch_of = [-1] * len(elements)
    batches = []
    for k, span in enumerate(spans):
        members = groups[span.start:span.stop]
        users = sum(1 for cid, _ in members if cid in attrs)
        events = sum(len(idx) for _, idx in members)
        batches.append(NewBatch("events", span.body, users + events, users, events))
        for _, idx in members:
            for i in idx:
                batch_of[i] = k
    return batches, batch_of, [i for g, _ in oversize for i in groups[g][1]]
