"""One chunk of one night, as every step of the chunk pipeline (``chunk.py``) sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loyalty_moengage.night import Window


@dataclass(frozen=True)
class ChunkJob:
    program_id: str
    window: Window
    lo: int                 # members lo <= member_id < hi
    hi: int
    label: str
    run_id: str
    send_users: bool        # the plan's decision: this night refreshes attributes
    loyalty_dsn: str
    state_dsn: str
    # Earlier nights re-read for late rows (``plan.lookback_nights``), newest first; () = none.
    lookback: tuple[Window, ...] = ()
    # "night": every template; "live": the events recorded in the window only (sync/live/).
    lane: str = "night"

    @property
    def check_window(self) -> Window:
        """What the row checks judge event times by: the window, or for a live piece its whole
        night (the piece ends at the read's cut, which is no limit on an event's time)."""
        return Window.of_night(self.window.night, self.window.time_zone) if self.lane == "live" else self.window

    @property
    def params(self) -> dict[str, Any]:
        """The SQL templates' parameters."""
        return self.window.params(self.program_id, self.lo, self.hi)

    @property
    def lookback_params(self) -> list[dict[str, Any]]:
        """Each lookback night's own parameters (its window and night): the same chunk, re-read
        exactly as that night's run read it."""
        return [w.params(self.program_id, self.lo, self.hi) for w in self.lookback]
