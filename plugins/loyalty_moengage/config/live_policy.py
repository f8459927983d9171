"""The live lane of a program (the ``live:`` block in the programs file): events sent within
minutes of their commit, between the nights, by the ``moengage_live_<program>`` DAG.

Off by default: a program opts in. The night still runs and still owns the day: it sends what
the live runs did not (rows committed too late for them, expiring-soon reminders, the attribute
refresh), and the outbox's event keys make sure no event goes twice (docs/live.md).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LivePolicy(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    enabled: bool = False
    # Minutes between live runs (a cron "*/N" in UTC): 1 gives a p95 commit-to-MoEngage of about
    # a minute and a half; each run costs the scheduler one DAG run and one task.
    every_minutes: int = Field(1, ge=1, le=60)
    # Each run reads again this far behind the last run's cut: a row whose recorded_at is earlier
    # than its commit (recorded_at DEFAULT now() is the transaction's start) is caught when it
    # commits within this; later than that, the night sends it. The event keys drop re-reads.
    lookback_minutes: int = Field(10, ge=0, le=720)
    # A transaction of the loyalty database still open holds the cut at its start, so its rows are
    # read when it commits; one open longer than this no longer holds the live lane back (its rows
    # go with the lookback or the night).
    max_hold_minutes: int = Field(30, ge=1, le=720)
    # Fraction of the workspace's send budget the live lane paces at; the night's load slots pace
    # at the rest, so together they never exceed it (the night is slower by at most this).
    budget_share: float = Field(0.05, gt=0, le=0.5)
    # The live lag (age of the oldest event not yet sent live) that fails the live run and alerts.
    alert_lag_minutes: int = Field(15, ge=1, le=1440)
    # Send each touched member's attributes (the members template, for those members only) in the
    # same request as their events, so a push that says "you now have 1,250 points" finds the
    # balance in MoEngage. Needs the members template to take %(customer_ids)s (docs/live.md).
    attributes: bool = False


DEFAULT_LIVE = LivePolicy()
