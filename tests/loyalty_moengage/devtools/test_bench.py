"""Smoke run of the benchmark: a few hundred members, every figure present in latest.json."""

from __future__ import annotations

import json

from loyalty_moengage.devtools.bench import REQUIRED_KEYS, main


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
