"""Airflow plugin: the MoEngage-facing loyalty API, the "MoEngage sync" tabs, and the run notes.

- ``/loyalty-moengage``: the MoEngage-facing API (``/loyalty-moengage/api/loyalty/points`` and
  ``/loyalty-moengage/api/customers/add``). Airflow applies no auth to plugin apps; the app
  checks its own per-program keys (see ``loyalty_moengage.api.keys``).
- ``/loyalty-moengage-ui``: the "MoEngage sync" tab of each sync DAG and of each of its runs
  (``external_views``, shown by the UI in an iframe). Every route requires a logged-in Airflow
  user whom the auth manager lets read that DAG (``loyalty_moengage.ui.app``).
- ``listeners``: sets each sync run's note to its night and outcome
  (``loyalty_moengage.sync.ops.run_note``), and creates a sync run's workspace Pool if it is missing
  (``loyalty_moengage.sync.ops.workspace_pool``).

Kept cheap at import: every Airflow process (scheduler, workers, DAG processor) loads plugins,
but only the API server asks for ``fastapi_apps``, so FastAPI and the apps are built then.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from loyalty_moengage.sync.ops import run_note, workspace_pool

URL_PREFIX = "/loyalty-moengage"
UI_PREFIX = "/loyalty-moengage-ui"


class MoEngageLoyaltyApiPlugin(AirflowPlugin):
    name = "loyalty_moengage_api"

    listeners = [run_note, workspace_pool]

    external_views = [
        {"name": "MoEngage sync", "href": f"{UI_PREFIX}/dags/{{DAG_ID}}", "destination": "dag",
         "url_route": "moengage-sync"},
        {"name": "MoEngage sync", "href": f"{UI_PREFIX}/dags/{{DAG_ID}}/runs/{{RUN_ID}}", "destination": "dag_run",
         "url_route": "moengage-sync-run"},
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from loyalty_moengage.api.app import get_app
        from loyalty_moengage.ui.app import create_app

        return [{"app": get_app(), "url_prefix": URL_PREFIX, "name": "Loyalty API for MoEngage"},
                {"app": create_app(), "url_prefix": UI_PREFIX, "name": "MoEngage sync views"}]
