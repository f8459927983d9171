"""A SimpleAuthManager that can refuse chosen users chosen DAGs: for testing per-DAG access.

Airflow's simple auth manager gives every viewer every DAG. To prove that the "MoEngage sync"
views ask the auth manager about *this* DAG, the UI test runs the API server with
``[core] auth_manager = loyalty_moengage_devtools.auth_manager.DagScopedSimpleAuthManager`` and
``LOYALTY_DEV_DENIED_DAGS="user=dag_id,user=dag_id"``. Development tool only.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager


def _denied() -> set[tuple[str, str]]:
    pairs = [p.split("=", 1) for p in os.environ.get("LOYALTY_DEV_DENIED_DAGS", "").split(",") if "=" in p]
    return {(u.strip(), d.strip()) for u, d in pairs}


class DagScopedSimpleAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        dag_id = getattr(details, "id", None)
        if dag_id and (user.get_name(), dag_id) in _denied():
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
