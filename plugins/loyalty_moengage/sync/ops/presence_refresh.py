"""The presence refresher: the Get User API budget spent through the day, not the night.

At MoEngage's 1,000 users/min, a night whose active customers are not cached spends minutes
checking them. The refresher (DAG ``moengage_presence_<program>``, hourly outside the night)
checks ahead, until its time box ends: first the confirmations of customers active lately
(``include/sql/presence/recent_customers.sql``) that are :data:`RENEW_AT` of the presence
lifetime old (``presence_lifetime_hours``), expired or imported and not confirmed yet, oldest
first, so they are renewed before a night finds them expired; then the other customers active
lately the cache cannot answer for; then cached absences whose re-check is due (``presence.py``'s
back-off). Confirmations of customers not active lately are left to expire: an event of theirs
is checked when it comes. Renewals cost each recently active customer one lookup per
``RENEW_AT`` x the lifetime (126 h at the default 168 h): a million of them, about 190,000
lookups a day, under 40% of the 495,000 that 22 hourly 45-minute boxes at half of 1,000/min
spend. It runs in the workspace Pool at a load task's share, so it shares the budget with the
nights' lookups and sends rather than adding to them.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

log = logging.getLogger(__name__)

TEMPLATE = "presence/recent_customers.sql"
#: Candidates read per page (the cache is asked about a page at once).
PAGE = 5_000
#: A confirmation is renewed once it is this share of the lifetime old: a quarter of the lifetime
#: (42 h at 168 h) of hourly runs is left to reach it before it expires and a night must check it.
RENEW_AT = 0.75
COUNTS = ("recent_customers", "already_known", "looked_up", "found_present", "found_absent", "absences_rechecked",
          "renewals_due", "renewals_checked", "renewals_gone", "not_reached")

Lookup = Callable[[list[str]], set[str]]


def refresh_presence(*, program_id: str, loyalty_dsn: str, state_dsn: str, lookup: Lookup, seconds: float,
                     since_days: int, now: datetime | None = None, lifetime_hours: int | None = None) -> dict[str, Any]:
    """Renew, then look up, within ``seconds``, what the cache will not answer for at the next
    nights; returns counts. ``lifetime_hours``: the program's ``presence_lifetime_hours`` (None:
    read from the programs file)."""
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.db import connect
    from loyalty_moengage.moengage.presence import renewals_due

    started = time.monotonic()
    lifetime = timedelta(hours=lifetime_hours or get_program(program_id).presence_lifetime_hours)
    since = (now or datetime.now(timezone.utc)) - timedelta(days=since_days)
    counts: dict[str, Any] = dict.fromkeys(COUNTS, 0)
    with connect(state_dsn) as state:
        recent = _recent_customers(loyalty_dsn, program_id, since)
        counts["recent_customers"] = len(recent)
        renew = renewals_due(state, program_id, recent, older_than=lifetime * RENEW_AT)
        state.commit()
        counts["renewals_due"] = len(renew)
        renewing = set(renew)
        due_absent = _due_absences(state, program_id, exclude=set(recent))
        sources = [("renew", renew), ("recent", [c for c in recent if c not in renewing]), ("absent", due_absent)]
        _check(state, program_id, sources, lookup, lifetime=lifetime, deadline=started + seconds, counts=counts)
    return _done(counts, started, program_id)


def _check(state: Any, program_id: str, sources: list[tuple[str, list[str]]], lookup: Lookup, *,
           lifetime: timedelta, deadline: float, counts: dict[str, Any]) -> None:
    """Each source's customers in turn, 20 a request, until ``deadline``: renewals all, the others
    those the cache cannot answer for (read a page at a time, as earlier groups' answers land)."""
    from loyalty_moengage.moengage.presence import cached_presence

    for n, (source, ids) in enumerate(sources):
        for start in range(0, len(ids), PAGE):
            page = ids[start:start + PAGE]
            to_check = page
            if source != "renew":
                _present, to_check = cached_presence(state, program_id, page, lifetime=lifetime)
                state.commit()
            if source == "recent":
                counts["already_known"] += len(page) - len(to_check)
            for i in range(0, len(to_check), 20):
                if time.monotonic() >= deadline:
                    # Due here, plus candidates not examined yet (some of those may be cached).
                    counts["not_reached"] = (len(to_check) - i + len(ids) - start - len(page)
                                             + sum(len(later) for _, later in sources[n + 1:]))
                    return
                _look_up(state, program_id, source, to_check[i:i + 20], lookup, counts)


def _look_up(state: Any, program_id: str, source: str, group: list[str], lookup: Lookup,
             counts: dict[str, Any]) -> None:
    """One Get User request's answers, cached and committed at once (a time box may end next)."""
    from loyalty_moengage.moengage.presence import record_answers

    found = lookup(group)
    record_answers(state, program_id, group, found)
    state.commit()
    counts["looked_up"] += len(group)
    counts["found_present"] += len(found)
    counts["found_absent"] += len(group) - len(found)
    if source == "absent":
        counts["absences_rechecked"] += len(group)
    elif source == "renew":
        counts["renewals_checked"] += len(group)
        counts["renewals_gone"] += len(group) - len(found)   # deleted in MoEngage since (or never there)


def _done(counts: dict[str, Any], started: float, program_id: str) -> dict[str, Any]:
    counts["seconds"] = round(time.monotonic() - started, 2)
    log.info("presence refresh of program %s: %s", program_id, counts)
    return counts


def _recent_customers(loyalty_dsn: str, program_id: str, since: datetime) -> list[str]:
    """The template's customer_ids in its order, each once; a broken template is named."""
    import psycopg

    from loyalty_moengage.db import connect
    from loyalty_moengage.paths import sql_dir
    from loyalty_moengage.sync.chunk.contract import ContractError

    path = sql_dir() / TEMPLATE
    with connect(loyalty_dsn) as conn:
        try:
            cur = conn.execute(path.read_text(), {"program_id": program_id, "since": since})
        except psycopg.Error as exc:
            raise ContractError(f"SQL template {TEMPLATE!r} failed: {exc}".strip()) from exc
        columns = [d.name for d in cur.description or ()]
        if "customer_id" not in columns:
            raise ContractError(f"SQL template {TEMPLATE!r} does not return the required column 'customer_id' "
                                f"(it returns: {', '.join(columns) or 'nothing'}). See README, 'The SQL contract'.")
        at = columns.index("customer_id")
        ids = [row[at] for row in cur.fetchall() if row[at]]
    return list(dict.fromkeys(ids))


def _due_absences(state: Any, program_id: str, *, exclude: set[str]) -> list[str]:
    """Cached absences whose re-check is due, longest unchecked first."""
    from loyalty_moengage.moengage.presence import ABSENT_RECHECK, ABSENT_RECHECK_MAX

    rows = state.execute(
        "SELECT customer_id FROM moengage_sync.customer_presence WHERE program_id = %s AND NOT present "
        "AND checked_at <= now() - least(%s::interval * power(2, least(greatest(absent_checks - 1, 0), 6))::int, "
        "%s::interval) ORDER BY checked_at", (program_id, ABSENT_RECHECK, ABSENT_RECHECK_MAX)).fetchall()
    state.commit()
    return [r[0] for r in rows if r[0] not in exclude]
