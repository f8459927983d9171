"""A chunk's rows checked: what can be sent, and every row that cannot, with its reason.

The vectorised checks are ``validate.py``'s; this module applies them template by template,
leaves bad values out, quarantines bad rows and duplicate keys, and builds the events' JSON
elements (``payloads.py``). Per-row Python runs only over rejected rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from loyalty_moengage.night import Window

NOT_IN_MOENGAGE = "customer_id not found in MoEngage (the event would create a profile)"


@dataclass
class Rejects:
    """Rows that will not be sent, with their reasons. ``reasons`` counts the rows the templates'
    data is to blame for (the anomaly guard judges them); presence rejects are kept, not counted."""

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

        from loyalty_moengage.sync.chunk.validate import KEPT_CHARS, detail, quarantine_row

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

    def copy(self) -> "Rejects":
        return Rejects(list(self.rows), Counter(self.reasons))

    def by_reason(self) -> dict[str, int]:
        """Every kept row by reason, as the quarantine table counts a night's rows."""
        return dict(Counter(reason for _, reason, _, _ in self.rows))


@dataclass
class Lookback:
    """What the earlier nights re-read for late rows added (``plan.lookback_nights``). Their events
    ride in ``Checked.events`` (the gate and the pack treat every event alike) but are never the
    night's: not in its extracted rows, its events extracted or its reject share. Their bad rows
    are kept by their own night, where that night's run recorded them (``rejects``)."""

    event_ids: Any = None       # pa.Array: the lookback's events in Checked.events; or None
    rows_read: int = 0          # rows the lookback's templates returned
    rejects: dict[date, Rejects] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return 0 if self.event_ids is None else len(self.event_ids)


@dataclass
class Checked:
    """A chunk after the row checks: one table of sendable events, the members, the rejects."""

    events: Any                 # pa.Table: event_id, event_name, customer_id, element; or None
    users: Any                  # pa.Table of the member template's valid rows; or None
    user_kinds: dict[str, str]
    user_template: str
    rows_extracted: int
    members_extracted: int
    rejects: Rejects
    lookback: Lookback = field(default_factory=Lookback)

    @property
    def event_count(self) -> int:
        """Every event the gate and the pack see, the lookback's included."""
        return 0 if self.events is None else self.events.num_rows

    @property
    def night_event_count(self) -> int:
        """The night's own events (what the anomaly guard judges)."""
        return self.event_count - self.lookback.events

    @property
    def user_count(self) -> int:
        return 0 if self.users is None else self.users.num_rows


def check_chunk(extracts: list[Any], window: Window) -> Checked:
    """Row checks (the quarantine's reasons), values left out, duplicates, and the event elements."""
    from loyalty_moengage.sync.chunk.payloads import event_elements

    checked = Checked(events=None, users=None, user_kinds={}, user_template="",
                      rows_extracted=sum(e.table.num_rows for e in extracts), members_extracted=0,
                      rejects=Rejects())
    ev_tables: list[tuple[str, Any, Any]] = []
    for ex in extracts:
        table, kinds = _checked_table(ex, window, checked)
        if ex.template.kind == "events":
            if table.num_rows:
                ev_tables.append((ex.template.name, table, event_elements(table, kinds, window.time_zone)))
        else:
            checked.users, checked.user_kinds, checked.user_template = _unique_members(
                ex.template.name, table, checked.rejects), kinds, ex.template.name
    if ev_tables:
        checked.events = _event_table(ev_tables, checked.rejects)
    return checked


def add_lookback(checked: Checked, earlier: list[tuple[Window, list[Any]]]) -> None:
    """Each earlier night's re-read rows checked as that night's run checked them (its window:
    the same reasons, the same elements), and its events not already in the chunk added to
    ``checked.events``; counted apart (:class:`Lookback`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    added = []
    for window, extracts in earlier:
        night = check_chunk(extracts, window)
        checked.lookback.rows_read += night.rows_extracted
        checked.lookback.rejects[window.night] = night.rejects
        if night.events is None:
            continue
        if checked.events is not None:   # an event the chunk has already (tonight's, a newer night's) is sent once
            seen = checked.events.column("event_id").combine_chunks()
            night.events = night.events.filter(pc.invert(pc.is_in(night.events.column("event_id"), value_set=seen)))
        if night.events.num_rows:
            added.append(night.events.column("event_id"))
            checked.events = (night.events if checked.events is None
                              else pa.concat_tables([checked.events, night.events]))
    if added:
        checked.lookback.event_ids = pa.chunked_array([c for col in added for c in col.chunks], pa.string())


def _checked_table(ex: Any, window: Window, checked: Checked) -> tuple[Any, dict[str, str]]:
    """One template's rows with bad rows quarantined and bad values left out."""
    import pyarrow.compute as pc

    from loyalty_moengage.sync.chunk.validate import event_reasons, member_reasons, normalise_times, without_values

    name, rejects = ex.template.name, checked.rejects
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
    return table, kinds


def _unique_members(template: str, table: Any, rejects: Rejects) -> Any:
    """A customer id returned twice is quarantined (the first row is kept)."""
    import pyarrow.compute as pc

    from loyalty_moengage.sync.chunk.validate import duplicate_mask

    dup = duplicate_mask(table.column("customer_id").combine_chunks())
    if pc.any(dup).as_py():
        rejects.add_rows(template, table, dup, "duplicate customer_id", None, "customer_id", column="customer_id")
        table = table.filter(pc.invert(dup))
    return table


def _event_table(ev_tables: list[tuple[str, Any, Any]], rejects: Rejects) -> Any:
    """All templates' events as one table; an event_id returned twice is quarantined (the first
    one, in template order, is kept)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from loyalty_moengage.sync.chunk.validate import detail, duplicate_mask, quarantine_row

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
