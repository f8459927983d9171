"""The Content API benchmark runs end to end on a small generated program (not a timed test)."""

from __future__ import annotations

import json


def test_bench_api_smoke(loyalty_db, tmp_path, monkeypatch):
    from loyalty_moengage_devtools.bench_api import main

    # A limit below the burst: past it the server answers a fast 503, never a request left unanswered.
    monkeypatch.setenv("LOYALTY_API_MAX_IN_FLIGHT", "20")
    rc = main(["--dsn", loyalty_db, "--members", "300", "--days", "5", "--phones", "200",
               "--start-rate", "50", "--max-rate", "80", "--step-seconds", "1", "--out", str(tmp_path),
               "--bursts", "10,300", "--burst-rounds", "1", "--burst-workers", "1"])
    result = json.loads((tmp_path / "api-latest.json").read_text())
    assert rc == 0, result
    for key in ("rate_at_p99_50ms", "http_floor_rate", "db_floor_rate", "ratio_to_http_floor", "commit",
                "burst_10_p99_ms", "burst_300_p99_ms", "burst_300_failed"):
        assert key in result, key
    small, big = result["bursts"]["10"], result["bursts"]["300"]
    assert small["shed_503"] == 0 and small["failed"] == 0
    assert big["failed"] == 0 and big["shed_503"] > 0 and big["requests"] == 300
    assert result["members"] == 300
    points = result["steps"]["points"]
    assert points and all(s["errors"] == 0 for s in points), points
    seen = {k for s in points for k in s["statuses"]}
    assert {"200", "404"} <= seen, seen
    assert result["rate_at_p99_50ms"] >= 50 and result["http_floor_rate"] >= 50 and result["db_floor_rate"] >= 50
    assert result["ratio_to_http_floor"] == round(result["rate_at_p99_50ms"] / result["http_floor_rate"], 3)
    assert "points / HTTP floor" in (tmp_path / "api-latest.md").read_text()


def test_open_loop_counts_latency_from_the_due_time():
    """A server slower than the rate shows its queue: latency grows although each call is 20 ms."""
    import asyncio

    from loyalty_moengage_devtools.bench_api import open_loop

    lock = asyncio.Lock()

    async def slow(i: int):
        async with lock:           # one at a time: capacity 50/s
            await asyncio.sleep(0.02)
        return "200", None

    step = asyncio.run(open_loop(slow, 100, 1.0))  # 100/s asked of a 50/s server
    assert step.requests == 100 and step.errors == 0
    assert step.p99_ms > 500, step   # the last requests waited for ~1 s of backlog
