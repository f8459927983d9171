"""A night that reaches MoEngage is an Airflow Asset event a downstream DAG schedules on, its
figures are Airflow metrics a StatsD server receives, and its tasks' datasets are OpenLineage
events (the provider's file transport), under the real scheduler."""

from __future__ import annotations

import json
import shutil
import socket
import textwrap
import threading
from pathlib import Path

import pytest

from loyalty_moengage_devtools.airflow_stack import airflow_stack
from loyalty_moengage_devtools.drills import API_KEY, WORKSPACE, program_env, scheduled_run

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
    lineage_dir = tmp_path / "openlineage"
    lineage_dir.mkdir()
    lineage_env = {"AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
        {"type": "file", "log_file_path": str(lineage_dir / "event"), "append": False}),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "loyalty_test"}
    metrics_env = {"AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                   "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port), "AIRFLOW__METRICS__STATSD_PREFIX": "airflow"}
    with program_env(loyalty_db, tmp_path, program_id=PROGRAM, time_zone=TZ, members=300, days=3) as env, \
            airflow_stack(pg_server, root=tmp_path / "airflow", keep_root=True,
                          env={"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "LM_CONSUMER_OUT": str(out), **metrics_env, **lineage_env},
                          dag_ids=[env.dag_id, "loyalty_campaign_refresh"]) as stack:
        stack.unpause("loyalty_campaign_refresh")
        night_run = scheduled_run(stack, env)
        [consumed] = stack.wait_runs("loyalty_campaign_refresh", count=1, timeout=180)
        reports = env.reports()
        loyalty_db_name = _conninfo_db(env)
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

    _assert_lineage(lineage_dir, dag_id=env.dag_id, loyalty_db=loyalty_db_name)


def _conninfo_db(env) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(env.dsn)["dbname"]


def _assert_lineage(folder: Path, *, dag_id: str, loyalty_db: str) -> None:
    """Each transform chunk read the loyalty tables and wrote the outbox; each load slot read the
    outbox and wrote MoEngage's users and events; the report's output is the night's Asset."""
    texts = [f.read_text() for f in sorted(folder.iterdir())]
    assert texts, "no OpenLineage event written"
    assert not any(API_KEY in t for t in texts), "the Data API key reached an OpenLineage event"
    done: dict[str, list[dict]] = {}
    for text in texts:
        event = json.loads(text)
        if event.get("eventType") == "COMPLETE" and event["job"]["name"].startswith(dag_id + "."):
            done.setdefault(event["job"]["name"][len(dag_id) + 1:], []).append(event)

    def datasets(event: dict, side: str) -> set[tuple[str, str]]:
        return {(d["namespace"], d["name"]) for d in event.get(side) or []}

    assert done.get("transform") and done.get("load"), sorted(done)
    loyalty_ns = {ns for e in done["transform"] for ns, _ in datasets(e, "inputs")}
    [pg] = loyalty_ns
    assert pg.startswith("postgres://"), loyalty_ns
    expected_inputs = {(pg, f"{loyalty_db}.loyalty.{t}") for t in (
        "members", "points_ledger", "transactions", "redemptions", "member_tier_changes", "tiers",
        "member_status_changes", "segments", "segment_memberships")}
    for event in done["transform"]:
        assert datasets(event, "inputs") == expected_inputs, datasets(event, "inputs")
        outputs = datasets(event, "outputs")
        assert {name.split(".", 1)[1] for _, name in outputs} >= {"moengage_sync.batches", "moengage_sync.event_keys"}
    for event in done["load"]:
        assert {name.split(".", 1)[1] for _, name in datasets(event, "inputs")} == {"moengage_sync.batches"}
        assert datasets(event, "outputs") == {(f"moengage://{WORKSPACE}", "users"), (f"moengage://{WORKSPACE}", "events")}
    [report] = done["report"]
    assert (f"moengage://moengage_default", PROGRAM) in datasets(report, "outputs"), report.get("outputs")
