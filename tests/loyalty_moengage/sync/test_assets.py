"""A night that reaches MoEngage is an Airflow Asset event a downstream DAG schedules on, and
its figures are Airflow metrics a StatsD server receives, under the real scheduler."""

from __future__ import annotations

import json
import shutil
import socket
import textwrap
import threading
from pathlib import Path

import pytest

from loyalty_moengage_devtools.airflow_stack import airflow_stack
from loyalty_moengage_devtools.drills import program_env, scheduled_run

PROGRAM = "assets"
TZ = "Asia/Kolkata"
ROOT = Path(__file__).resolve().parents[3]

CONSUMER = textwrap.dedent('''
    """A team's DAG that starts when a night of the loyalty sync has reached MoEngage."""
    import json, os
    from pathlib import Path

    import pendulum
    from airflow.sdk import Asset, dag, task

    NIGHTS = Asset(name="moengage_sync_{program}", uri="moengage://moengage_default/{program}", group="moengage")


    @dag(dag_id="loyalty_campaign_refresh", schedule=[NIGHTS], start_date=pendulum.datetime(2026, 1, 1),
         catchup=False, tags=["test"], doc_md=__doc__)
    def consumer():
        @task(retries=1)
        def read(**context):
            extras = [dict(e.extra) for e in context["triggering_asset_events"][NIGHTS]]
            Path(os.environ["LM_CONSUMER_OUT"]).write_text(json.dumps(extras))

        read()


    consumer()
''')


class StatsdListener:
    """A UDP socket that keeps every StatsD line it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except OSError:
                continue
            self.lines += data.decode(errors="replace").splitlines()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def values(self, prefix: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for line in self.lines:
            if line.startswith(prefix):
                name, _, value = line.partition(":")
                out.setdefault(name[len(prefix):], []).append(value)
        return out


@pytest.mark.scheduler
def test_a_consumer_dag_runs_after_the_night_and_reads_its_counts(loyalty_db, pg_server, tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    for f in (ROOT / "dags").glob("*.py"):
        shutil.copy2(f, dags / f.name)
    (dags / "consumer.py").write_text(CONSUMER.format(program=PROGRAM))
    out = tmp_path / "consumer.json"
    statsd = StatsdListener()
    metrics_env = {"AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                   "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port), "AIRFLOW__METRICS__STATSD_PREFIX": "airflow"}
    with program_env(loyalty_db, tmp_path, program_id=PROGRAM, time_zone=TZ, members=300, days=3) as env, \
            airflow_stack(pg_server, root=tmp_path / "airflow", keep_root=True,
                          env={"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "LM_CONSUMER_OUT": str(out), **metrics_env},
                          dag_ids=[env.dag_id, "loyalty_campaign_refresh"]) as stack:
        stack.unpause("loyalty_campaign_refresh")
        night_run = scheduled_run(stack, env)
        [consumed] = stack.wait_runs("loyalty_campaign_refresh", count=1, timeout=180)
        reports = env.reports()
    statsd.close()
    assert night_run["state"] == "success" and consumed["state"] == "success", (night_run, consumed)
    extras = json.loads(out.read_text())
    [extra] = extras if len(extras) == 1 else pytest.fail(f"one event expected: {extras}")
    [report] = reports
    assert extra["program_id"] == PROGRAM and extra["outcome"] == "success"
    assert extra["night"] == str(report["night"]) and extra["run_id"] == night_run["run_id"]
    assert extra["events_sent"] == report["events_sent"] > 0 and extra["members_updated"] > 0
    # The night's figures as metrics: counters (|c) and gauges (|g) under loyalty_moengage.<program>.
    metrics = statsd.values(f"airflow.loyalty_moengage.{PROGRAM}.")
    assert metrics.get("events_sent") == [f"{report['events_sent']}|c"], metrics
    assert metrics.get("members_updated") == [f"{extra['members_updated']}|c"], metrics
    assert [v.endswith("|g") for v in metrics["night_seconds"]] == [True] and metrics["night_floor_seconds"]
    assert metrics.get("uncertain_batches") == ["0|g"] and metrics.get("customer_lookups"), metrics
