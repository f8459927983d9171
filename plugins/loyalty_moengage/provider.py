"""Airflow provider metadata: registers the MoEngage connection type with the UI."""

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
                "hook-class-name": "loyalty_moengage.hooks.moengage.MoEngageHook",
            }
        ],
    }
