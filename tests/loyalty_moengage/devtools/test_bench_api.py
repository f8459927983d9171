"""The benchmark command runs end to end on a small generated program (not a timed test)."""

from __future__ import annotations

import json


def test_bench_smoke(loyalty_db, tmp_path, capsys):
    from loyalty_moengage.devtools.bench_api import main

    out = tmp_path / "bench.json"
    rc = main(["--dsn", loyalty_db, "--members", "300", "--days", "5", "--requests", "400",
               "--concurrency", "20", "--json", str(out)])
    result = json.loads(out.read_text())
    assert rc == 0, result
    assert result["members"] == 300 and result["errors"] == 0
    assert result["statuses"].get("200", 0) > 0 and result["statuses"].get("404", 0) > 0
    assert result["throughput_rps"] > 0 and result["p99_ms"] >= result["p50_ms"] > 0
