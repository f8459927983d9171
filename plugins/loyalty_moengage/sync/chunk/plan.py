"""Split a night into member-id chunks, decide whether this night refreshes attributes, and which
earlier nights it re-reads for late rows."""

from __future__ import annotations

import logging
import math
from datetime import date, timedelta
from typing import Any

log = logging.getLogger(__name__)

MEMBER_ID_MAX = 2**63 - 1


def plan_chunks(conn: Any, program_id: str, *, chunk_members: int, max_chunks: int = 1000) -> list[dict[str, Any]]:
    """Keyset chunks of about ``chunk_members`` members each, never more than ``max_chunks``.

    The first chunk starts at 0 and the last one is open-ended, so a member enrolled after the
    plan still belongs to exactly one chunk.
    """
    total = conn.execute("SELECT count(*) FROM loyalty.members WHERE program_id = %s", (program_id,)).fetchone()[0]
    size = max(chunk_members, math.ceil(total / max_chunks)) if total else chunk_members
    starts = [r[0] for r in conn.execute(
        "SELECT member_id FROM (SELECT member_id, row_number() OVER (ORDER BY member_id) AS rn "
        "FROM loyalty.members WHERE program_id = %s) t WHERE (rn - 1) %% %s = 0 ORDER BY member_id",
        (program_id, size),
    )]
    if not starts:
        return [{"lo": 0, "hi": MEMBER_ID_MAX, "label": "members (none)"}]
    chunks = []
    for k, start in enumerate(starts):
        lo = 0 if k == 0 else start
        hi = starts[k + 1] if k + 1 < len(starts) else MEMBER_ID_MAX
        first, last = k * size + 1, min((k + 1) * size, total)
        chunks.append({"lo": lo, "hi": hi, "label": f"members {first:,}-{last:,}"})
    return chunks


def decide_attribute_refresh(conn: Any, *, program_id: str, night: date, run_id: str,
                             latest_night: date, force: bool = False, apply: bool = True) -> tuple[bool, str | None]:
    """Attributes are last-write-wins in MoEngage: only the newest night may refresh them.

    Returns (refresh, reason_if_skipped). Moves the program's watermark when refreshing, unless
    ``apply`` is false (a dry run: the same decision, nothing moved). Chunks whose members this
    night already enqueued (an earlier or concurrent run) are skipped by the chunk pipeline
    (``gate.py``, ``enqueue.claim_attribute_chunk``); ``force`` forgets them so all are sent again.
    """
    from loyalty_moengage.sync.outbox.owed import forget_covered

    row = conn.execute(
        "SELECT night FROM moengage_sync.attribute_watermark WHERE program_id = %s" + (" FOR UPDATE" if apply else ""),
        (program_id,),
    ).fetchone()
    why_not = None
    if row and row[0] > night:
        why_not = f"a newer night ({row[0]}) already sent the attribute refresh"
    elif night < latest_night:
        why_not = f"night {night} is older than the newest complete night ({latest_night}), which refreshes attributes"
    if why_not or not apply:
        conn.commit()
        return why_not is None, why_not
    conn.execute(
        "UPDATE moengage_sync.batches SET state = 'superseded', updated_at = now(), "
        "error = 'superseded by the attribute refresh of night ' || %s "
        "WHERE program_id = %s AND kind = 'users' AND state IN ('staged', 'pending', 'uncertain') "
        "AND (night < %s OR (%s AND night = %s))",
        (night.isoformat(), program_id, night, force, night),
    )
    if force:
        conn.execute("DELETE FROM moengage_sync.attribute_chunks WHERE program_id = %s AND night = %s",
                     (program_id, night))
    # Live writes of this night or older are older than this refresh (later ones: owed.owe_refreshed).
    forget_covered(conn, program_id, night)
    conn.execute(
        "INSERT INTO moengage_sync.attribute_watermark (program_id, night, run_id) VALUES (%s, %s, %s) "
        "ON CONFLICT (program_id) DO UPDATE SET night = EXCLUDED.night, run_id = EXCLUDED.run_id, updated_at = now()",
        (program_id, night, run_id),
    )
    conn.commit()
    return True, None


def lookback_nights(conn: Any, *, program_id: str, night: date, nights: int, oldest: date) -> list[date]:
    """The earlier nights this run re-reads for late rows, newest first: of the ``nights`` before
    ``night``, those a run released (its anomaly guard passed, or was overridden) and not older
    than ``oldest`` (the audit retention, past which event keys are gone).

    A late row (recorded in a night's window, committed after that night's run extracted) is
    found by the next run. A night never released is not re-read: its events are not late rows
    but a night to backfill (with its own guard and report), and a held night's events must not
    slip out through the next night. Read-only, so a dry run decides the same.
    """
    wanted = [night - timedelta(days=k) for k in range(1, nights + 1) if night - timedelta(days=k) >= oldest]
    if not wanted:
        return []
    released = {r[0] for r in conn.execute(
        "SELECT DISTINCT night FROM moengage_sync.task_stats WHERE program_id = %s AND stage = 'guard' "
        "AND night = ANY(%s) AND (stats->'problems' = '[]'::jsonb OR coalesce((stats->>'overridden')::boolean, false))",
        (program_id, wanted))}
    conn.commit()
    return [d for d in wanted if d in released]
