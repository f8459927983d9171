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

    @property
    def params(self) -> dict[str, Any]:
        """The SQL templates' parameters."""
        return self.window.params(self.program_id, self.lo, self.hi)
