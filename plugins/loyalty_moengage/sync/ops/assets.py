"""The Airflow Asset a night emits once MoEngage has it, so downstream DAGs schedule on it.

One Asset per program and workspace (``moengage://<moengage_conn_id>/<program_id>``). The
report task's outlet is an AssetAlias: it adds an event to the Asset only when the night ends
``success`` and is not a dry run (a plain outlet would emit on every successful task, a dry
run's included). The event's ``extra`` carries the night and its counts (:func:`night_extra`).
Airflow knows the Asset once a DAG schedules on it; until then it logs that it has no such
Asset and records nothing. In-process nights (``make run``) emit nothing.
"""

from __future__ import annotations

from typing import Any


def night_asset(program: Any) -> Any:
    from airflow.sdk import Asset

    return Asset(name=f"moengage_sync_{program.id}", uri=f"moengage://{program.moengage_conn_id}/{program.id}",
                 group="moengage")


def night_alias(program: Any) -> Any:
    from airflow.sdk import AssetAlias

    return AssetAlias(name=f"moengage_sync_{program.id}_nights", group="moengage")


def night_extra(program: Any, body: dict[str, Any]) -> dict[str, Any]:
    return {"program_id": program.id, "night": body["night"], "time_zone": program.time_zone,
            "outcome": body["outcome"], "run_id": body["run_id"], "events_sent": body["events_sent"],
            "members_updated": body["members_updated"],
            "quarantined": sum((body.get("quarantined_by_reason") or {}).values()),
            "events_by_type": body.get("events_by_type") or {}}


def emit_night(context: dict[str, Any], program: Any, body: dict[str, Any]) -> bool:
    """Add the night's event to the program's Asset (through the report's alias); False when
    there is nothing to emit (a dry run, or outside a task: no ``outlet_events``)."""
    events = context.get("outlet_events")
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    # In-process nights (`make run`, dag.test) have no scheduler's Asset registry to emit into.
    if events is None or body.get("dry_run") or body["outcome"] != "success" or conf.get("in_process"):
        return False
    events[night_alias(program)].add(night_asset(program), extra=night_extra(program, body))
    return True
