"""Failure alerts through Airflow's own notifier mechanism, configured per program."""

from __future__ import annotations

import logging
from typing import Any

from loyalty_moengage.config.programs import Program

log = logging.getLogger(__name__)


def _summary(context: dict[str, Any]) -> str:
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    return (f"MoEngage sync failed: dag {getattr(dag_run, 'dag_id', '?')}, run {getattr(dag_run, 'run_id', '?')}, "
            f"task {getattr(ti, 'task_id', '?')}. See the task log and moengage_sync.run_reports.")


class WebhookNotifier:
    """Posts a one-line alert to a Slack-compatible incoming webhook kept in an Airflow Connection.

    The webhook URL is the connection's host (or password); it never appears in logs.
    """

    def __init__(self, *, conn_id: str) -> None:
        self.conn_id = conn_id

    def __call__(self, context: dict[str, Any]) -> None:
        try:
            import requests
            from airflow.sdk import BaseHook

            conn = BaseHook.get_connection(self.conn_id)
        except Exception:  # no such connection: alerting by webhook is simply not configured
            log.info("no connection %r: webhook alert not sent", self.conn_id)
            return
        url = conn.password if (conn.password or "").startswith("http") else conn.host
        try:
            requests.post(url, json={"text": _summary(context)}, timeout=10)
        except Exception as exc:  # an alert must never fail the callback chain
            log.warning("webhook alert failed: %s", type(exc).__name__)


def log_failure(context: dict[str, Any]) -> None:
    log.error(_summary(context))


def failure_callbacks(program: Program) -> list[Any]:
    callbacks: list[Any] = [log_failure]
    if program.alert_email:
        try:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            callbacks.append(SmtpNotifier(
                to=program.alert_email,
                subject=f"MoEngage sync failed for {program.name}",
                html_content="{{ dag_run.dag_id }} run {{ dag_run.run_id }} failed; see moengage_sync.run_reports.",
            ))
        except ImportError:  # pragma: no cover - the smtp provider ships with Airflow
            log.warning("smtp provider missing: no email alerts")
    if program.alert_slack_conn_id:
        callbacks.append(WebhookNotifier(conn_id=program.alert_slack_conn_id))
    return callbacks
