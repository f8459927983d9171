"""The night: which local day a run syncs, its UTC window, and whether it has ended.

Times are UTC inside; the program's zone only decides where a night starts and ends. Every
module that needs "the night" or "now" imports it from here: the DAG's tasks, the CLI, the UI,
the run-note listener and the development tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo


def now() -> datetime:
    """The one reading of the wall clock. It decides only whether a night may run (it has ended,
    it is within the audit retention, it is the newest for attributes); payloads never see it."""
    return datetime.now(timezone.utc)


def _utc(ts: datetime) -> datetime:
    return datetime.fromtimestamp(ts.timestamp(), timezone.utc)


def local_midnight(day: date, time_zone: str) -> datetime:
    """The local midnight that starts ``day``, in UTC (a DST change moves it, never the date)."""
    return _utc(datetime.combine(day, time(0), ZoneInfo(time_zone)))


@dataclass(frozen=True)
class Window:
    """One night of a program: ``[start, end)`` in UTC, the local ``night`` it covers."""

    start: datetime      # UTC, inclusive
    end: datetime        # UTC, exclusive
    night: date          # local date of the night in the program's zone
    time_zone: str

    @classmethod
    def for_interval(cls, start: datetime, end: datetime, time_zone: str) -> "Window":
        start, end = _utc(start), _utc(end)
        return cls(start=start, end=end, night=start.astimezone(ZoneInfo(time_zone)).date(), time_zone=time_zone)

    @classmethod
    def of_night(cls, night: date, time_zone: str) -> "Window":
        return cls(start=local_midnight(night, time_zone), end=local_midnight(night + timedelta(days=1), time_zone),
                   night=night, time_zone=time_zone)

    @property
    def logical_start(self) -> str:
        """The night's logical date as ``airflow backfill create`` takes it: local midnight, with offset."""
        return self.start.astimezone(ZoneInfo(self.time_zone)).isoformat()

    def params(self, program_id: str, lo: int, hi: int) -> dict[str, Any]:
        """The SQL templates' parameters for members ``lo <= member_id < hi``."""
        return {
            "program_id": program_id,
            "window_start": self.start,
            "window_end": self.end,
            "night": self.night,
            "time_zone": self.time_zone,
            "member_lo": lo,
            "member_hi": hi,
            # The members template's: NULL = every member of the range (the live lane names its own).
            "customer_ids": None,
        }


def from_context(time_zone: str, context: dict[str, Any]) -> Window:
    """The night a DAG run syncs: its data interval; a manual run without one syncs the newest
    night complete when the run was created (``run_after`` is fixed per run, so every task and
    retry of the run sees the same night)."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None and start != end:
        return Window.for_interval(start, end, time_zone)
    dag_run = context.get("dag_run")
    ref = context.get("logical_date") or getattr(dag_run, "run_after", None) or now()
    return Window.of_night(latest_complete_night(time_zone, ref), time_zone)


def latest_complete_night(time_zone: str, at: datetime | None = None) -> date:
    """The newest night whose midnight has passed in the program's zone."""
    return (at or now()).astimezone(ZoneInfo(time_zone)).date() - timedelta(days=1)


class NightNotOverError(ValueError):
    """The night has not ended in the program's zone: its rows are not all there yet, and an
    event stamped in the future is refused by MoEngage (and would use up its event key)."""


def ensure_over(window: Window, at: datetime | None = None) -> None:
    if window.end > (at or now()):
        local_end = window.end.astimezone(ZoneInfo(window.time_zone))
        raise NightNotOverError(
            f"night {window.night} has not ended yet: it ends at {local_end:%Y-%m-%d %H:%M} {window.time_zone} "
            f"({window.end:%Y-%m-%d %H:%M} UTC). Sync it after that; the scheduled run does so at midnight."
        )
