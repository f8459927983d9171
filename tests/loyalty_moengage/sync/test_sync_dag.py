"""End to end over real parts: Postgres, the sandbox over HTTP and Airflow's dag.test()."""

from __future__ import annotations

import base64
from collections import Counter
from datetime import date
from pathlib import Path

import orjson
import psycopg
import pytest

from tests.loyalty_moengage.sync.sync_env import API_KEY, WORKSPACE, reports, run, sync_env
from tests.loyalty_moengage.sync.test_transform import EXPECTED_EVENTS, FIXTURE

NIGHT = date(2026, 11, 21)


@pytest.fixture
def tiny(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
    return loyalty_db


def _received(sandbox) -> list[dict]:
    out = []
    for e in sandbox.state.events(WORKSPACE):
        out.append({"type": "event", "customer_id": e["customer_id"],
                    "actions": [{"action": e["action"], "attributes": e["attributes"],
                                 "current_time": e["current_time"], "user_timezone_offset": e["user_timezone_offset"]}]})
    return out


def _key(e):
    return orjson.dumps(e, option=orjson.OPT_SORT_KEYS)


def test_night_end_to_end_sends_exactly_the_expected_events(tiny, tmp_path, capfd):
    with sync_env(tmp_path, tiny) as sandbox:
        dag_run = run("tiny", NIGHT)
        assert str(dag_run.state) == "success"
        labels = {(ti.task_id, ti.rendered_map_index) for ti in dag_run.get_task_instances() if ti.map_index >= 0}
        assert labels == {("transform", "members 1-3"), ("load", "load slot 0")}
        got = _received(sandbox)
        # current_time may come back normalised by the sandbox; compare the payload as sent
        assert sorted(map(_key, got)) == sorted(map(_key, EXPECTED_EVENTS))
        assert sandbox.state.workspace_counters(WORKSPACE).get("users_created_by_events", 0) == 0
    (report,) = reports(tiny, "tiny")
    assert report["outcome"] == "success"
    assert report["events_sent"] == len(EXPECTED_EVENTS)
    assert report["batches_by_state"] == {"sent": 1}
    assert report["attributes_skipped"] is True  # 2026-11-21 is not the newest night any more
    assert report["quarantined_by_reason"] == {"customer_id is a value MoEngage refuses": 3}
    # secrets: the key and the derived Basic header appear nowhere in the task logs
    logs = capfd.readouterr()
    token = base64.b64encode(f"{WORKSPACE}:{API_KEY}".encode()).decode()
    for text in (logs.out, logs.err, orjson.dumps(report, default=str).decode()):
        assert API_KEY not in text and token not in text


def test_same_night_twice_sends_no_event_twice(tiny, tmp_path):
    with sync_env(tmp_path, tiny) as sandbox:
        assert str(run("tiny", NIGHT).state) == "success"
        assert str(run("tiny", NIGHT).state) == "success"
        per_event = Counter((e["customer_id"], e["action"], orjson.dumps(e["attributes"], option=orjson.OPT_SORT_KEYS),
                             e["current_time"]) for e in sandbox.state.events(WORKSPACE))
        assert sum(per_event.values()) == len(EXPECTED_EVENTS)
        assert max(per_event.values()) == 1
    first, second = reports(tiny, "tiny")
    assert second["events_enqueued"] == 0 and second["events_already_sent"] == len(EXPECTED_EVENTS)


def test_unknown_customer_is_quarantined_not_created(tiny, tmp_path):
    with sync_env(tmp_path, tiny, customers=("REL-0001",)) as sandbox:
        assert str(run("tiny", NIGHT).state) == "success"
        assert {e["customer_id"] for e in sandbox.state.events(WORKSPACE)} == {"REL-0001"}
        assert "REL-0002" not in sandbox.state.users(WORKSPACE)
    (report,) = reports(tiny, "tiny")
    assert report["quarantined_by_reason"]["customer_id not found in MoEngage (the event would create a profile)"] == 9


def test_anomaly_guard_holds_the_night_before_sending(tiny, tmp_path):
    with sync_env(tmp_path, tiny, extra_program="    min_members: 100\n") as sandbox:
        dag_run = run("tiny", NIGHT)
        assert str(dag_run.state) == "failed"
        assert sandbox.state.events(WORKSPACE) == []
    (report,) = reports(tiny, "tiny")
    assert report["outcome"] == "held"
    assert any("min_members" in n for n in report["notes"])
    with psycopg.connect(tiny) as conn:
        assert conn.execute("SELECT count(*) FROM moengage_sync.batches").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM moengage_sync.event_keys").fetchone()[0] == 0


def test_wrong_data_centre_fails_loudly_before_sending(tiny, tmp_path):
    import os

    with sync_env(tmp_path, tiny) as sandbox:
        os.environ["AIRFLOW_CONN_MOENGAGE_DEFAULT"] = sandbox.connection_json(WORKSPACE, API_KEY, dc="01")
        dag_run = run("tiny", NIGHT)
        assert str(dag_run.state) == "failed"
        assert sandbox.state.events(WORKSPACE) == []


def test_an_in_process_night_sends_each_load_slot_at_the_whole_budget(tiny, tmp_path):
    """dag.test runs mapped tasks one after another: a slot at 1/N of the budget would take N
    times the floor. Under a scheduler the slots send side by side, each at 1/N."""
    from types import SimpleNamespace

    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.sync.tasks import load_share

    with sync_env(tmp_path, tiny, extra_program="    load_parallelism: 4\n") as sandbox:
        program = get_program("tiny")
        assert load_share(program, {"dag_run": SimpleNamespace(conf={})}) == 0.25
        assert load_share(program, {"dag_run": SimpleNamespace(conf={"in_process": True})}) == 1.0
        dag_run = run("tiny", date(2026, 11, 22))
        assert str(dag_run.state) == "success" and dag_run.conf.get("in_process") is True
        assert sandbox.state.workspace_counters(WORKSPACE)["requests"] > 0
