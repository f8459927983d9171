"""Airflow hooks of the loyalty-moengage provider."""
