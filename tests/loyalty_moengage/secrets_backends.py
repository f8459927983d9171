"""Secrets backends for tests, named in AIRFLOW__SECRETS__BACKEND: Airflow loads them itself."""

from __future__ import annotations

from airflow.sdk.bases.secrets_backend import BaseSecretsBackend
from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied


class OutageBackend(BaseSecretsBackend):
    """A backend whose store cannot be reached (Vault sealed, a cloud API timing out)."""

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        raise ConnectionError("vault.internal:8200 timed out")


class DenyingBackend(BaseSecretsBackend):
    """A backend that refuses this worker the secret."""

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        raise AirflowSecretsBackendAccessDenied(f"policy denies {conn_id}")


class EmptyBackend(BaseSecretsBackend):
    """A healthy backend that holds no connections."""

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        return None
