"""Which rows a live run reads, and how far the next one may start.

A row's ``recorded_at`` is usually ``DEFAULT now()``: its transaction's *start*, not its commit.
A live run that read up to "now" and moved on would miss a row whose transaction started before
that and committed after. So the run reads up to the loyalty database's now, but the watermark
it leaves (``read_to``) stops at the start of the oldest transaction still open there that has
written (it holds an xid): the next run reads from there again, less ``lookback_minutes`` for
rows stamped by a client's clock or by a transaction that wrote only after this run looked. The
outbox's event keys drop what is read twice. A transaction open longer than ``max_hold_minutes``
stops holding the watermark; what it commits later is the lookback's or, past that, the night's
(which re-reads the whole day and its late rows). Every time here is the loyalty database's
clock, the one ``recorded_at`` is stamped with, never the worker's.

Seeing other sessions' ``xact_start``/``backend_xid`` in ``pg_stat_activity`` needs a superuser
or ``pg_read_all_stats``; without it no transaction holds the watermark and the lookback alone
covers late commits (the report says so: ``held_by_open_transaction`` is never set).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from loyalty_moengage.night import Window, local_midnight

#: A live run never reads further back than this behind the database's now (the first run, or one
#: after a pause): older rows are the night's, and one run's read stays small.
MAX_CATCHUP = timedelta(hours=2)

_OLDEST_WRITER = (
    "SELECT now(), min(xact_start) FILTER (WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() "
    "AND datname = current_database() AND xact_start >= now() - %s::interval) FROM pg_stat_activity")


@dataclass(frozen=True)
class LiveWindow:
    start: datetime              # UTC, inclusive
    end: datetime                # UTC, exclusive: the loyalty database's now
    read_to: datetime            # the watermark this run leaves (<= end)
    previous: datetime | None    # the watermark it started from (its compare-and-set)
    held_by: datetime | None     # start of the open transaction that held read_to back

    def nights(self, time_zone: str) -> list[Window]:
        """[start, end) cut at the program's local midnights: each piece is its night's (a DST
        change moves a midnight, never the date)."""
        pieces, at = [], self.start
        while at < self.end:
            day = at.astimezone(ZoneInfo(time_zone)).date()
            night_end = local_midnight(day + timedelta(days=1), time_zone)
            end = min(night_end, self.end)
            pieces.append(Window(start=at, end=end, night=day, time_zone=time_zone))
            at = end
        return pieces


def read_clock(loyalty_conn: Any, max_hold: timedelta) -> tuple[datetime, datetime | None]:
    """(the loyalty database's now, the start of its oldest open transaction that has written and
    is younger than ``max_hold``: one older, an idle session left in a transaction, must not stop
    the younger ones from holding the watermark)."""
    now, oldest = loyalty_conn.execute(_OLDEST_WRITER, (max_hold,)).fetchone()
    loyalty_conn.rollback()
    return now, oldest


def plan_window(*, now: datetime, oldest_writer: datetime | None, previous: datetime | None,
                time_zone: str, lookback: timedelta, max_hold: timedelta) -> LiveWindow:
    """The window of a live run (module doc). The first run of a program reads its day so far
    (at most ``MAX_CATCHUP``).
    The end is a whole second: the row checks compare event times to it by the second (a row of
    the end's own second is the next run's, not "after the night's end")."""
    held = oldest_writer if oldest_writer is not None and now - max_hold <= oldest_writer < now else None
    end = now.replace(microsecond=0)
    read_to = min(held, end) if held is not None else end
    if previous is not None:
        read_to = max(read_to, previous)       # a watermark never goes back
        start = previous - lookback
    else:
        start = local_midnight(end.astimezone(ZoneInfo(time_zone)).date(), time_zone)
    start = min(max(start, end - MAX_CATCHUP), end)
    return LiveWindow(start=start, end=end, read_to=read_to, previous=previous, held_by=held)


def read_watermark(state_conn: Any, program_id: str) -> datetime | None:
    row = state_conn.execute("SELECT read_to FROM moengage_sync.live_watermark WHERE program_id = %s",
                             (program_id,)).fetchone()
    return row[0] if row else None


def advance(state_conn: Any, program_id: str, window: LiveWindow, run_id: str) -> bool:
    """Move the watermark from where this run found it to its ``read_to`` (compare-and-set, in the
    caller's transaction): False when another run moved it meanwhile (it then stays theirs)."""
    if window.previous is None:
        cur = state_conn.execute(
            "INSERT INTO moengage_sync.live_watermark (program_id, read_to, run_id) VALUES (%s, %s, %s) "
            "ON CONFLICT (program_id) DO NOTHING", (program_id, window.read_to, run_id))
    else:
        cur = state_conn.execute(
            "UPDATE moengage_sync.live_watermark SET read_to = %s, run_id = %s, updated_at = now() "
            "WHERE program_id = %s AND read_to = %s", (window.read_to, run_id, program_id, window.previous))
    return cur.rowcount == 1
