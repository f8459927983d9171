"""Where a night goes: what a sink must do (the one place that picks one is ``tasks.sink_for``).

Two sinks: the outbox (``outbox_sink.py``: batches MoEngage will receive) and the dry run
(``dry_run.py``: counts and sample payloads, nothing sendable). The DAG's tasks
(``tasks.py``) pick one per task in one place and never ask which it is; the chunk
pipeline (``chunk.py``) hands each packed chunk to it.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any, Protocol

from loyalty_moengage.night import Window
from loyalty_moengage.sync.chunk.check import Checked
from loyalty_moengage.sync.chunk.job import ChunkJob
from loyalty_moengage.sync.chunk.pack import Packed


class Collision(RuntimeError):
    """Another run enqueued some of this chunk's events (or its members) at the same time."""


class Sink(Protocol):
    state_dsn: str
    #: Customers the presence cache does not know are checked after the guard, by the load slots
    #: beside their sends (``lookups.py``), not in the chunk.
    defers_lookups: bool

    def start_night(self, conn: Any, *, program: Any, window: Window, run_id: str) -> dict[str, Any]:
        """The plan's housekeeping before the night's chunks are written."""

    def decide_refresh(self, conn: Any, *, program_id: str, night: date, run_id: str, latest_night: date,
                       force: bool) -> tuple[bool, str | None]:
        """Does this night refresh attributes (``plan.decide_attribute_refresh``)?"""

    def record(self, *, program_id: str, night: date, run_id: str, stage: str, key: str,
               stats: dict[str, Any]) -> None:
        """Keep one task's measurements."""

    def done_before(self, job: ChunkJob) -> dict[str, Any] | None:
        """The stats of an attempt of this run's chunk that already wrote it, else None."""

    def write(self, job: ChunkJob, checked: Checked, packed: Packed, seconds: Counter[str]) -> dict[str, Any]:
        """Keep the chunk; returns its stats (``stats.chunk_stats``). Raises :class:`Collision`."""

    def release(self, *, program: Any, window: Window, run_id: str, override: bool) -> dict[str, Any]:
        """After every chunk: make the night sendable (the anomaly guard), or not."""

    def deliver(self, *, program: Any, slot: int, window: Window, run_id: str, attempt: int,
                share: float) -> dict[str, Any]:
        """One load slot's sending, at ``share`` of the workspace budget."""

    def settle(self, *, program: Any, window: Window, run_id: str, attempt: int, share: float) -> dict[str, Any]:
        """After the loads: settle lost answers by evidence (``settle.py``) and send what it freed."""

    def report(self, *, program: Any, window: Window, run_id: str) -> tuple[dict[str, Any], str, str | None]:
        """(the night's report, its text for the log, the run's note); the outcome is in the report."""
