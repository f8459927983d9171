"""The night's figures as Airflow metrics (StatsD or OpenTelemetry, as Airflow's [metrics] says).

Emitted by the report task for every night, whatever its outcome, under
``loyalty_moengage.<program_id>.<name>`` with the tag ``program`` (for backends that keep tags):
counters ``events_sent``, ``members_updated``, ``quarantined``, ``throttled`` (MoEngage's 429s),
``customer_lookups``; gauges ``uncertain_batches``, ``night_seconds`` (the DAG run's start to
its report) and ``night_floor_seconds`` (what MoEngage's budget allows for the night's users and
events), so an alert can compare a night with its floor. Each live run (docs/live.md) emits the
counter ``events_sent_live`` and the gauge ``live_lag_seconds``; with ``live.attributes``, the
counter ``live_attributes_paid`` (owed attribute updates enqueued) and the gauge
``live_attributes_owed`` (debts left). docs/platform.md.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

COUNTERS = ("events_sent", "members_updated", "quarantined", "throttled", "customer_lookups")
GAUGES = ("uncertain_batches", "night_seconds", "night_floor_seconds")


def night_figures(body: dict[str, Any], *, started: datetime | None, users_per_minute: float,
                  events_per_minute: float) -> dict[str, float]:
    figures: dict[str, float] = {
        "events_sent": body.get("events_sent", 0), "members_updated": body.get("members_updated", 0),
        "quarantined": sum((body.get("quarantined_by_reason") or {}).values()),
        "throttled": body.get("throttled", 0), "customer_lookups": body.get("customer_lookups", 0),
        "uncertain_batches": body.get("uncertain_batches", 0),
    }
    if started is not None:
        figures["night_seconds"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    floors = [figures["members_updated"] / users_per_minute if users_per_minute else 0.0,
              figures["events_sent"] / events_per_minute if events_per_minute else 0.0]
    figures["night_floor_seconds"] = round(max(floors) * 60, 1)
    return figures


#: The live lane's (sync/live/): emitted by each live run.
LIVE_COUNTERS = ("events_sent_live", "live_attributes_paid")
LIVE_GAUGES = ("live_lag_seconds", "live_attributes_owed")


def live_figures(stats: dict[str, Any]) -> dict[str, float]:
    figures = {"events_sent_live": stats.get("events_sent", 0), "live_lag_seconds": stats.get("lag_seconds", 0.0),
               "live_attributes_paid": stats.get("owed_attributes_enqueued", 0)}
    if "owed_attributes_left" in stats:       # live.attributes on
        figures["live_attributes_owed"] = stats["owed_attributes_left"]
    return figures


def emit(program_id: str, figures: dict[str, float], *, counters: tuple[str, ...] = COUNTERS,
         gauges: tuple[str, ...] = GAUGES) -> None:
    from airflow.sdk.observability.stats import Stats

    tags = {"program": program_id}
    for name in counters:
        if figures.get(name):
            Stats.incr(f"loyalty_moengage.{program_id}.{name}", int(figures[name]), tags=tags)
    for name in gauges:
        if name in figures:
            Stats.gauge(f"loyalty_moengage.{program_id}.{name}", figures[name], tags=tags)
