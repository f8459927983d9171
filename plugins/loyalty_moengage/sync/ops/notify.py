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
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        callbacks.append(SlackWebhookNotifier(
            slack_webhook_conn_id=program.alert_slack_conn_id,
            text=f"MoEngage sync failed for {program.name}: {{{{ dag_run.dag_id }}}} run {{{{ dag_run.run_id }}}}. "
                 "See the report task log and moengage_sync.run_reports.",
        ))
    return callbacks
