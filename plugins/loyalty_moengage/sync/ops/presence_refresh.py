"""The presence refresher: the Get User API budget spent through the day, not the night.

At MoEngage's 1,000 users/min, a night whose active customers are not cached spends minutes
checking them. The refresher (DAG ``moengage_presence_<program>``, hourly outside the night)
checks ahead: customers active lately first (``include/sql/presence/recent_customers.sql``),
then cached absences whose re-check is due (``presence.py``'s back-off), until its time box
ends. It runs in the workspace Pool at a load task's share, so it shares the budget with the
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


def refresh_presence(*, program_id: str, loyalty_dsn: str, state_dsn: str, lookup: Callable[[list[str]], set[str]],
                     seconds: float, since_days: int, now: datetime | None = None) -> dict[str, Any]:
    """Look up, within ``seconds``, the customers the cache cannot answer for; returns counts."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.moengage.presence import cached_presence, record_answers

    started = time.monotonic()
    since = (now or datetime.now(timezone.utc)) - timedelta(days=since_days)
    counts = {"recent_customers": 0, "already_known": 0, "looked_up": 0, "found_present": 0, "found_absent": 0,
              "absences_rechecked": 0, "not_reached": 0}
    with connect(state_dsn) as state:
        recent = _recent_customers(loyalty_dsn, program_id, since)
        counts["recent_customers"] = len(recent)
        due_absent = _due_absences(state, program_id, exclude=set(recent))
        for source, ids in (("recent", recent), ("absent", due_absent)):
            for start in range(0, len(ids), PAGE):
                page = ids[start:start + PAGE]
                present, to_check = cached_presence(state, program_id, page)
                state.commit()
                if source == "recent":
                    counts["already_known"] += len(page) - len(to_check)
                for i in range(0, len(to_check), 20):
                    if time.monotonic() - started >= seconds:
                        # Due here, plus candidates not examined yet (some of those may be cached).
                        counts["not_reached"] = (len(to_check) - i + len(ids) - start - len(page)
                                                 + (len(due_absent) if source == "recent" else 0))
                        return _done(counts, started, program_id)
                    group = to_check[i:i + 20]
                    found = lookup(group)
                    record_answers(state, program_id, group, found)
                    state.commit()
                    counts["looked_up"] += len(group)
                    counts["found_present"] += len(found)
                    counts["found_absent"] += len(group) - len(found)
                    if source == "absent":
                        counts["absences_rechecked"] += len(group)
    return _done(counts, started, program_id)


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
