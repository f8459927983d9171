"""Failure alerts reach a Slack incoming webhook (Airflow's Slack provider notifier) over HTTP."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

from loyalty_moengage.config.programs import Program
from loyalty_moengage.sync.ops.notify import failure_callbacks


def test_a_failed_run_posts_to_the_programs_slack_webhook(monkeypatch):
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append({"path": self.path, "body": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_ALERTS", json.dumps({
            "conn_type": "slackwebhook", "host": f"http://127.0.0.1:{server.server_port}",
            "password": "services/T000/B000/secret-token"}))
        program = Program(id="demo", name="Demo Loyalty", time_zone="Asia/Kolkata", alert_slack_conn_id="alerts")
        log_cb, slack = failure_callbacks(program)
        dag_run = SimpleNamespace(dag_id="moengage_sync_demo", run_id="scheduled__2026-11-22")
        slack({"dag_run": dag_run, "ti": None, "params": {}})
    finally:
        server.shutdown()
    assert received[0]["path"] == "/services/T000/B000/secret-token"
    assert received[0]["body"]["text"].startswith(
        "MoEngage sync failed for Demo Loyalty: moengage_sync_demo run scheduled__2026-11-22.")
