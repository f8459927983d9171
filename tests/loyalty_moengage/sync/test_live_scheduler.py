"""The live lane under the real Airflow scheduler: live runs every minute while the platform
writes (a steady rate, a burst in one transaction, a transaction held open across live runs),
overlapping the scheduled night and the README's backfill of three nights. Every row the
platform committed reaches MoEngage exactly once, no two live runs overlap, and every touched
member's balance in MoEngage ends as the loyalty database's (``live.attributes``: sent beside the
events; the scheduled night's refresh, as of midnight, lands after some of them and is mended by
the owed updates)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from loyalty_moengage_devtools.airflow_stack import airflow_stack
from loyalty_moengage_devtools.drills import concurrent_backfill, program_env, scheduled_run, today_in
from loyalty_moengage_devtools.live_writer import (LiveWriter, Plan, live_attribute_counts, received_points,
                                                   stale_balances)
from tests.loyalty_moengage.sync.test_assets import StatsdListener

pytestmark = pytest.mark.scheduler

PROGRAM = "livesched"
TZ = "Asia/Kolkata"


#: A rude MoEngage (sandbox/rude.py): 1 bulk request in 8 applied and then answered 502 or dropped,
#: bulk attribute writes visible 0-4 s late, each its own delay (the connection says 4 s).
RUDE = {"applied_error_rate": 0.125, "applied_error_statuses": (502, "drop"), "bulk_visibility_delay": [0.0, 4.0],
        "endpoints": ("transition",), "seed": 13}


@pytest.mark.parametrize("moengage", ["polite", "rude"])
def test_live_runs_beside_the_night_and_a_backfill_send_each_row_once(loyalty_db, pg_server, tmp_path, moengage):
    started = time.monotonic()
    today = today_in(TZ)
    settings = {"live": {"enabled": True, "lookback_minutes": 2, "alert_lag_minutes": 30, "attributes": True}}
    with program_env(loyalty_db, tmp_path, program_id=PROGRAM, time_zone=TZ, members=400, days=4, seed=11,
                     settings=settings, history_end=today - timedelta(days=1),
                     **({"visibility": 4.0} if moengage == "rude" else {})) as env:
        live_dag = f"moengage_live_{PROGRAM}"
        statsd = StatsdListener()
        metrics_env = {"AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                       "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port), "AIRFLOW__METRICS__STATSD_PREFIX": "airflow"}
        with airflow_stack(pg_server, root=tmp_path / "airflow", keep_root=True, dag_ids=[env.dag_id, live_dag],
                           env=metrics_env) as stack:
            if moengage == "rude":
                env.sandbox.set_faults(**RUDE)
            writer = LiveWriter(env.dsn, PROGRAM, Plan(rate=5, seconds=150, bursts={45: 500}, holds=[(20, 80)])).start()
            stack.unpause(live_dag)
            scheduled_run(stack, env)
            observed = concurrent_backfill(stack, env)
            writer.join(300)
            env.sandbox.set_faults()      # the answers lost so far are settled by receipt from here

            def caught_up() -> bool:
                got = received_points(env.events())
                return all(p in got for p in writer.committed)
            stack.wait_for(caught_up, timeout=480, what="every committed row received by MoEngage", interval=5)
            stack.wait_for(lambda: not _stale_balances(env), timeout=240, interval=5,
                           what="every touched member's balance in MoEngage equal to the loyalty database's")
            stack.pause(live_dag)         # no live run after the figures below are read
            stack.wait_runs(live_dag, timeout=180)
            received_at = {p: t for p, t in _receive_times(env).items()}
            result = env.audit()
            live = [t for t in stack.task_instances(live_dag) if t["task_id"] == "send_live"]
            live_sums = _live_sums(env)
    statsd.close()
    got = received_points(env.events())
    latency = sorted(received_at[p] - writer.committed[p] for p in writer.committed if p in received_at)
    story = json.dumps({"moengage": moengage, "seconds": round(time.monotonic() - started, 1), "written": writer.written,
                        "writer_errors": writer.errors, "live_tries": len(live),
                        "live_states": sorted({str(t["state"]) for t in live}),
                        "latency_p50": latency[len(latency) // 2] if latency else None,
                        "latency_max": latency[-1] if latency else None,
                        "backfill_runs": len(observed["runs"]), "audit": result.as_dict(),
                        "live_attributes": _live_attribute_counts(env)}, default=str, indent=1)
    print(story)
    assert not writer.errors and writer.written == writer.planned == 150 * 5 + 500 + 3, story
    assert [p for p in writer.committed if got.get(p, 0) != 1] == [], f"rows lost or sent twice: {story}"
    assert result.duplicated == 0 and result.lost == 0 and result.unexpected == 0, story
    assert len(live) >= 3 and {str(t["state"]) for t in live} <= {"success", "TaskInstanceState.SUCCESS"}, story
    spans = sorted((t["start_date"], t["end_date"]) for t in live)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), f"live runs overlapped: {spans}"
    # Each live run's figures as Airflow metrics (docs/platform.md), as a StatsD server receives them.
    metrics = statsd.values(f"airflow.loyalty_moengage.{PROGRAM}.")
    counted = {name: sum(int(v.split("|")[0]) for v in metrics.get(name, [])) for name in
               ("events_sent_live", "live_attributes_paid")}
    assert counted == {"events_sent_live": live_sums["events_sent"], "live_attributes_paid": live_sums["paid"]}, metrics
    assert live_sums["paid"] > 0 and len(metrics["live_lag_seconds"]) >= len(metrics["live_attributes_owed"]) >= 3
    assert all(v.endswith("|g") for v in metrics["live_lag_seconds"] + metrics["live_attributes_owed"]), metrics


def _receive_times(env) -> dict[int, float]:
    """When the sandbox received each writer row: its request's arrival time."""
    at = {r["request_id"]: r["time"] for r in env.sandbox.state.requests() if r.get("request_id") and "time" in r}
    out: dict[int, float] = {}
    for e in env.events():
        points = (e.get("attributes") or {}).get("points")
        if isinstance(points, int) and e.get("request_id") in at:
            out.setdefault(points, at[e["request_id"]])
    return out


def _stale_balances(env) -> list[str]:
    from loyalty_moengage_devtools.drills import WORKSPACE

    return stale_balances(env.dsn, PROGRAM, env.sandbox.state.users(WORKSPACE))


def _live_sums(env) -> dict[str, int]:
    """What the live runs recorded they sent, and paid of owed attribute updates."""
    import psycopg

    with psycopg.connect(env.dsn) as conn:
        sent, paid = conn.execute(
            "SELECT coalesce(sum((stats->>'events_sent')::int), 0), coalesce(sum((stats->>'owed_attributes_enqueued')"
            "::int), 0) FROM moengage_sync.task_stats WHERE program_id = %s AND stage = 'live'", (PROGRAM,)).fetchone()
    return {"events_sent": sent, "paid": paid}


def _live_attribute_counts(env) -> dict[str, int]:
    return live_attribute_counts(env.dsn, PROGRAM)
