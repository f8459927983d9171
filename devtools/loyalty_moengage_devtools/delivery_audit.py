"""What MoEngage (the sandbox) received versus what the sync enqueued, event by event.

MoEngage keeps no event ids, so an event's identity is what it receives:
``(customer_id, action, current_time, sorted attributes)``. Expected = every event the
program's ``moengage_sync.event_keys`` says was enqueued, read from the bodies of the batches
those keys point to (the run must keep them: ``keep_sent_bodies: true``); without bodies the
audit falls back to counts. Used by the scheduler test and the drills; development tool only.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import orjson

Identity = tuple[str, str, str, bytes]


def identity(customer_id: str, action: str, current_time: Any, attributes: dict[str, Any]) -> Identity:
    return (customer_id, action, str(current_time), orjson.dumps(attributes, option=orjson.OPT_SORT_KEYS))


def received(events: Iterable[dict[str, Any]]) -> Counter:
    """The sandbox's ``state.events(ws)`` as a multiset of identities."""
    return Counter(identity(e["customer_id"], e["action"], e["current_time"], e["attributes"]) for e in events)


def body_identities(body: bytes) -> list[Identity]:
    out = []
    for element in orjson.loads(body).get("elements", []):
        if element.get("type") != "event":
            continue
        for action in element.get("actions", []):
            out.append(identity(element["customer_id"], action["action"], action.get("current_time"),
                                action.get("attributes") or {}))
    return out


@dataclass
class Audit:
    expected: int
    received: int
    lost: int
    duplicated: int
    duplicated_outside_uncertain: int
    uncertain_reported: int
    uncertain_in_run_reports: int = 0
    events_sent_in_run_reports: int = 0
    lost_in_uncertain: int = 0             # of ``lost``: events of batches reported uncertain (held)
    unexpected: int = 0                    # received, but no enqueued event has that identity
    bodies_missing: int = 0                # event batches whose body was gone (counts-only audit for them)
    keys_by_event_name: dict[str, int] = field(default_factory=dict)
    received_by_event_name: dict[str, int] = field(default_factory=dict)
    batches_by_state: dict[str, int] = field(default_factory=dict)
    duplicate_samples: list[str] = field(default_factory=list)
    uncertain_left: int = 0                # batches still uncertain (a person must decide)
    settled_by_receipt: int = 0            # lost answers settled by the batch's receipt in MoEngage
    resent_after_absence: int = 0          # lost answers resent because the receipt stayed absent
    users_resent: int = 0                  # users batches sent again after a lost answer
    nights_miscounted: dict[str, list[int]] = field(default_factory=dict)  # night: [latest report, received]
    profiles_created: int = 0              # MoEngage profiles a request created (must stay 0)
    deleted_recreated: int = 0             # of those: customers erased in MoEngage, then recreated
    late_rows_found: int = 0               # rows the lookback found after their own night was extracted

    def figures(self) -> dict[str, int]:
        """The figures of bench/results/drills-latest.json."""
        return {k: getattr(self, k) for k in ("expected", "received", "lost", "duplicated",
                                              "duplicated_outside_uncertain", "uncertain_reported", "uncertain_left",
                                              "settled_by_receipt", "resent_after_absence", "users_resent",
                                              "profiles_created", "deleted_recreated", "late_rows_found")}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"expected {self.expected}, received {self.received}, lost {self.lost} ({self.lost_in_uncertain} in "
                f"uncertain batches), duplicated {self.duplicated} "
                f"({self.duplicated_outside_uncertain} outside reported-uncertain batches), uncertain batches "
                f"{self.uncertain_reported} (run reports say {self.uncertain_in_run_reports}), run reports' "
                f"events_sent {self.events_sent_in_run_reports}, unexpected {self.unexpected}, "
                f"batches {self.batches_by_state}; settled by receipt {self.settled_by_receipt}, resent after "
                f"absence {self.resent_after_absence}, users batches resent {self.users_resent}, uncertain left "
                f"{self.uncertain_left}, nights miscounted {self.nights_miscounted or 'none'}; profiles created "
                f"{self.profiles_created} ({self.deleted_recreated} erased then recreated), late rows found "
                f"{self.late_rows_found}")


def audit(state_dsn: str, program_id: str, sandbox_events: Iterable[dict[str, Any]], *,
          uncertain_batch_ids: Iterable[int] = (), run_ids: Iterable[str] | None = None,
          profiles: dict[str, Any] | None = None) -> Audit:
    """Compare the sandbox's events with the program's enqueued events.

    ``uncertain_batch_ids`` adds batches a caller saw uncertain earlier (e.g. before an operator
    resend re-queued them), since the batches table only shows the current state. ``run_ids``
    limits the run-report sums to those runs (default: every report of the program).
    """
    import psycopg

    got = received(sandbox_events)
    with psycopg.connect(state_dsn) as conn:
        keys_by_name = dict(conn.execute(
            "SELECT event_name, count(*) FROM moengage_sync.event_keys WHERE program_id = %s GROUP BY 1",
            (program_id,)).fetchall())
        settled = dict(conn.execute(
            "SELECT settled_by, count(*) FROM moengage_sync.batches WHERE program_id = %s AND settled_by IS NOT NULL "
            "GROUP BY 1", (program_id,)).fetchall())
        batches = conn.execute(
            "SELECT b.batch_id, b.state, b.body, k.n, b.night FROM moengage_sync.batches b JOIN ("
            "  SELECT batch_id, count(*) AS n FROM moengage_sync.event_keys WHERE program_id = %s GROUP BY 1) k "
            "ON k.batch_id = b.batch_id", (program_id,)).fetchall()
        states = dict(conn.execute(
            "SELECT state, count(*) FROM moengage_sync.batches WHERE program_id = %s GROUP BY 1",
            (program_id,)).fetchall())
        uncertain_now = {r[0] for r in conn.execute(
            "SELECT batch_id FROM moengage_sync.batches WHERE program_id = %s AND state = 'uncertain'",
            (program_id,)).fetchall()}
        # Each report counts its night (whichever run sent it): the night's latest report is its figure.
        report_sql = ("SELECT DISTINCT ON (night) night, events_sent, uncertain_batches "
                      "FROM moengage_sync.run_reports WHERE program_id = %s")
        params: list[Any] = [program_id]
        if run_ids is not None:
            report_sql += " AND run_id = ANY(%s)"
            params.append(list(run_ids))
        latest = conn.execute(report_sql + " ORDER BY night, reported_at DESC", params).fetchall()
        reported_by_night = {n: int(e) for n, e, _ in latest}
        sent_reported = sum(reported_by_night.values())
        uncertain_reported_runs = sum(int(u) for _, _, u in latest)
    uncertain = uncertain_now | set(uncertain_batch_ids)

    expected: Counter = Counter()
    owners: dict[Identity, set[int]] = defaultdict(set)
    missing_bodies = 0
    counts_only_expected = 0
    night_of: dict[Identity, Any] = {}
    for batch_id, _state, body, n, night in batches:
        if body is None:
            missing_bodies += 1
            counts_only_expected += n
            continue
        ids = body_identities(bytes(body))
        for ident in ids:
            expected[ident] += 1
            owners[ident].add(batch_id)
            night_of[ident] = night
    received_by_night: Counter = Counter()
    for ident, n in got.items():
        if ident in night_of:
            received_by_night[night_of[ident]] += min(n, expected[ident])
    miscounted = {} if missing_bodies else {
        night.isoformat(): [reported, received_by_night.get(night, 0)] for night, reported in reported_by_night.items()
        if reported != received_by_night.get(night, 0)}
    total_expected = sum(keys_by_name.values())
    lost = duplicated = outside = unexpected = lost_uncertain = 0
    samples: list[str] = []
    for ident in expected.keys() | got.keys():
        want, have = expected.get(ident, 0), got.get(ident, 0)
        if ident not in expected:
            unexpected += have
            continue
        if have < want:
            lost += want - have
            if owners[ident] & uncertain:
                lost_uncertain += want - have
        elif have > want:
            duplicated += have - want
            if not owners[ident] & uncertain:
                outside += have - want
                if len(samples) < 5:
                    samples.append(f"{ident[0]} {ident[1]} at {ident[2]} x{have} (batch {sorted(owners[ident])})")
    if missing_bodies:
        # Without bodies the identities of those batches are unknown: count what is not explained.
        rest = sum(got.values()) - sum(min(got.get(i, 0), expected[i]) for i in expected) - duplicated
        lost += max(0, counts_only_expected - rest)
        unexpected = max(0, rest - counts_only_expected)
    received_by_name: Counter = Counter()
    for ident, n in got.items():
        received_by_name[ident[1]] += n
    return Audit(expected=total_expected, received=sum(got.values()), lost=lost, duplicated=duplicated,
                 duplicated_outside_uncertain=outside, uncertain_reported=len(uncertain), lost_in_uncertain=lost_uncertain,
                 uncertain_in_run_reports=int(uncertain_reported_runs), events_sent_in_run_reports=int(sent_reported),
                 unexpected=unexpected, bodies_missing=missing_bodies, keys_by_event_name=keys_by_name,
                 received_by_event_name=dict(received_by_name), batches_by_state=states, duplicate_samples=samples,
                 uncertain_left=len(uncertain_now), settled_by_receipt=settled.get("receipt", 0),
                 resent_after_absence=settled.get("absence", 0), users_resent=settled.get("resend", 0),
                 nights_miscounted=miscounted, profiles_created=int((profiles or {}).get("profiles_created", 0)),
                 deleted_recreated=int((profiles or {}).get("deleted_recreated", 0)),
                 late_rows_found=late_rows_found(state_dsn, program_id))


def late_rows_found(state_dsn: str, program_id: str) -> int:
    """What the runs' lookbacks found (the run reports' ``late_rows_found``; 0 before that column)."""
    import psycopg

    with psycopg.connect(state_dsn) as conn:
        has = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = 'moengage_sync' "
                           "AND table_name = 'run_reports' AND column_name = 'late_rows_found'").fetchone()
        if not has:
            return 0
        return int(conn.execute("SELECT coalesce(sum(late_rows_found), 0) FROM moengage_sync.run_reports "
                                "WHERE program_id = %s", (program_id,)).fetchone()[0])
