"""Smoke run of the benchmark: a few hundred members, every figure present in latest.json."""

from __future__ import annotations

import json

from loyalty_moengage_devtools.bench import REQUIRED_KEYS, main


def test_bench_smoke_writes_every_key(loyalty_db, tmp_path):
    out = tmp_path / "results"
    assert main(["--members", "300", "--days", "3", "--naive-records", "20", "--dsn", loyalty_db,
                 "--out", str(out)]) == 0
    result = json.loads((out / "latest.json").read_text())
    missing = [k for k in REQUIRED_KEYS if k not in result]
    assert not missing, missing
    assert result["members"] > 0 and result["events"] > 0
    assert result["records_per_s"] > 0 and result["floor_ratio"] > 0
    assert result["sandbox_counters"]["users_counted"] == result["members"]
    assert result["sandbox_counters"]["events_counted"] >= result["events"]
    assert set(result["stage_seconds"]) >= {"plan", "extract", "transform", "outbox", "load", "report"}
    assert result["naive_extrapolated"] is True
    assert (out / "latest.md").read_text().startswith("# Nightly sync benchmark")


def test_bench_paced_smoke_writes_the_paced_keys(loyalty_db, tmp_path):
    """--paced: the one-program and the two-programs-on-one-workspace runs report their keys (tiny,
    at a high budget: this checks the wiring, the bench measures the figures)."""
    out = tmp_path / "results"
    assert main(["--members", "300", "--days", "3", "--naive-records", "10", "--dsn", loyalty_db, "--out", str(out),
                 "--paced", "--paced-members", "300", "--two-programs-members", "150",
                 "--paced-users-per-minute", "120000", "--gate-lookups-per-minute", "60000"]) == 0
    result = json.loads((out / "latest.json").read_text())
    for key in ("paced_overshoot_pct", "paced_429s", "two_programs_overshoot_pct", "two_programs_429s",
                "floor_ratio_parallel", "copy_floor_parallel_s", "json_floor_parallel_s", "delivery_floor_parallel_s",
                "gate_cold_overshoot_pct", "gate_warm_overshoot_pct", "lookup_floor_s", "send_floor_s",
                "inprocess_paced_overshoot_pct"):
        assert key in result, key
    cold, warm = result["gate_cold"], result["gate_warm"]
    assert cold["users_looked_up"] > 0 and cold["events"] > 0 and warm["members"] == cold["members"]
    assert warm["users_looked_up"] < cold["users_looked_up"]      # the cache the cold night filled
    assert result["inprocess_paced"]["state"] == "success" and result["inprocess_paced"]["members"] == 300
    two = result["two_programs"]
    assert set(two["per_program"]) == {"bench_a", "bench_b"} and two["pool"] == result["paced"]["pool"]
    assert two["sandbox_users"] == two["members"] > 0
    assert "requests.post per record" in result["naive_pattern"]
    # --paced-only keeps the rest of the report and says which run it came from
    assert main(["--days", "3", "--dsn", loyalty_db, "--out", str(out), "--paced-only", "--paced-members", "300",
                 "--two-programs-members", "150", "--paced-users-per-minute", "120000",
                 "--gate-lookups-per-minute", "60000"]) == 0
    again = json.loads((out / "latest.json").read_text())
    assert again["earlier_run"]["commit"] == result["commit"] and again["records_per_s"] == result["records_per_s"]
