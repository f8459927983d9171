"""Airflow provider metadata: registers the MoEngage connection type with the UI.

Declared in pyproject.toml under the ``apache_airflow_provider`` entry point. Since Airflow 3.2
the connection form is described here (``conn-fields``, ``ui-field-behaviour``), so the UI
needs no hook import and no wtforms.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "loyalty-moengage",
        "name": "Loyalty MoEngage",
        "description": "MoEngage Data API hook and loyalty nightly sync.",
        "versions": ["0.1.0"],
        "connection-types": [
            {
                "connection-type": "moengage",
                "hook-class-name": "loyalty_moengage.moengage.hook.MoEngageHook",
                "hook-name": "MoEngage",
                "ui-field-behaviour": _field_behaviour(),
                "conn-fields": _conn_fields(),
            }
        ],
        # moengage://<workspace>/<name>: the night's Asset and the lineage datasets (sync/ops/lineage.py).
        "asset-uris": [
            {
                "schemes": ["moengage"],
                "handler": "loyalty_moengage.sync.ops.lineage.sanitize_moengage_uri",
                "to_openlineage_converter": "loyalty_moengage.sync.ops.lineage.moengage_to_openlineage",
            }
        ],
    }


def _field_behaviour() -> dict[str, Any]:
    """The standard fields: which are hidden, and how the rest are labelled."""
    return {
        "hidden-fields": ["schema", "port", "extra"],
        "relabeling": {
            "login": "Workspace ID",
            "password": "Data API key",
            "host": "Data centre",
        },
        "placeholders": {
            "login": "Settings > Account > APIs > Workspace ID",
            "password": "Settings > Account > APIs > Data API key",
            "host": "DC-03, 03 or https://dashboard-03.moengage.com",
        },
    }


def _conn_fields() -> dict[str, Any]:
    """The extras, as form fields (the ones ``connection.config_from_connection`` reads)."""
    return {
        "base_url": {
            "label": "API base URL override",
            "description": "Leave empty for https://api-{dc}.moengage.com. For the local "
            "sandbox: http://127.0.0.1:8765/dc/{dc} ({dc} becomes the data centre code).",
            "schema": {"type": ["string", "null"], "format": "url"},
        },
        "users_per_minute": {
            "label": "Users per minute",
            "description": "Workspace budget for bulk user updates (MoEngage default 60,000; "
            "raised on request).",
            "schema": {"type": "integer", "default": 60000, "minimum": 1},
        },
        "events_per_minute": {
            "label": "Events per minute",
            "description": "Workspace budget for bulk events (MoEngage default 60,000).",
            "schema": {"type": "integer", "default": 60000, "minimum": 1},
        },
        "lookups_per_minute": {
            "label": "Lookups per minute",
            "description": "Workspace budget for the Get User API (customer existence checks; "
            "MoEngage default 1,000 users/min).",
            "schema": {"type": "integer", "default": 1000, "minimum": 1},
        },
        "timeout": {
            "label": "Request timeout (seconds)",
            "description": "Read timeout per request; connecting waits at most 10 s.",
            "schema": {"type": "number", "default": 30, "minimum": 1},
        },
        "visibility_seconds": {
            "label": "Bulk write visibility (seconds)",
            "description": "How long MoEngage may take to show a bulk write through the Get User API; "
            "a lost answer is concluded 'not applied' only after this (and the program's receipt wait). "
            "Default 600; lower it only for the local sandbox.",
            "schema": {"type": "number", "default": 600, "minimum": 0},
        },
        "pacing": {
            "label": "Pace requests",
            "description": "Keep within the budgets above. Turn off only for benchmarks.",
            "schema": {"type": "boolean", "default": True},
        },
    }
