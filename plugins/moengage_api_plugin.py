"""Airflow plugin: serves the MoEngage-facing loyalty API from Airflow's API server.

Mounted at ``/loyalty-moengage`` (so ``/loyalty-moengage/api/loyalty/points`` and
``/loyalty-moengage/api/customers/add``). Airflow applies no auth to plugin apps; the app checks
its own per-program keys (see ``loyalty_moengage.api.keys``).

Kept cheap at import: every Airflow process (scheduler, workers, DAG processor) loads plugins,
but only the API server asks for ``fastapi_apps``, so FastAPI and the app are built then.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/loyalty-moengage"


class MoEngageLoyaltyApiPlugin(AirflowPlugin):
    name = "loyalty_moengage_api"

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from loyalty_moengage.api.app import get_app

        return [{"app": get_app(), "url_prefix": URL_PREFIX, "name": "Loyalty API for MoEngage"}]
