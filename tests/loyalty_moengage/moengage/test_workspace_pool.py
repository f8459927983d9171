"""One Airflow Pool per MoEngage workspace: the DAG puts the load tasks in it, and each load task
paces at the workspace budget / the Pool's slots, so programs sharing a workspace share its budget
(the scheduler admits at most that many load tasks, on any executor)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loyalty_moengage.config.programs import Program

ROOT = Path(__file__).resolve().parents[3]


def program(**kw) -> Program:
    return Program.model_validate({"id": "p1", "time_zone": "Asia/Kolkata", **kw})


def test_pool_is_derived_from_the_connection():
    p = program(moengage_conn_id="moengage_brand.a")
    assert p.pool == "moengage_moengage_brand.a"
    assert p.pool_slots == 2 and p.load_share == 0.5
    # two programs on one connection land in one pool
    assert program(id="p2", moengage_conn_id="moengage_brand.a").pool == p.pool


def test_pool_slots_set_the_share_not_the_program_s_load_parallelism():
    p = program(workspace_pool="moengage_ws1", workspace_pool_slots=4, load_parallelism=2)
    assert p.pool == "moengage_ws1" and p.load_share == 0.25


def test_default_pool_opts_out():
    p = program(workspace_pool="default_pool", workspace_pool_slots=8, load_parallelism=3)
    assert p.pool_slots == 3 and p.load_share == pytest.approx(1 / 3)


@pytest.mark.parametrize("bad", [{"workspace_pool": "has space"}, {"workspace_pool_slots": 0}])
def test_bad_pool_settings_are_refused(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        program(**bad)


def test_dag_puts_only_the_sending_tasks_in_the_workspace_pool():
    from airflow.dag_processing.dagbag import DagBag
    from loyalty_moengage.config.programs import load_programs

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    for p in load_programs():
        if not p.enabled:
            continue
        dag = bag.dags[p.dag_id]
        pools = {t.task_id: t.pool for t in dag.tasks}
        assert pools["load"] == pools["settle"] == p.pool   # settle resends what its receipts prove missing
        assert {v for k, v in pools.items() if k not in ("load", "settle")} == {"default_pool"}
