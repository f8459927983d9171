"""The live benchmark's pieces that decide what it measures: the zone whose midnight falls inside
the writing (so the night of the writer's rows runs under the scheduler), and its percentiles."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from loyalty_moengage_devtools.bench.live import percentile, zone_with_midnight


def test_the_zone_picked_has_its_midnight_inside_the_writing():
    lo = datetime(2026, 12, 7, 4, 40, tzinfo=timezone.utc)
    zone, midnight = zone_with_midnight(lo, lo + timedelta(minutes=20))
    assert lo <= midnight <= lo + timedelta(minutes=20)
    local = midnight.astimezone(ZoneInfo(zone))
    assert (local.hour, local.minute, local.second) == (0, 0, 0)


def test_no_zone_when_no_midnight_falls_inside():
    lo = datetime(2026, 12, 7, 4, 1, tzinfo=timezone.utc)
    assert zone_with_midnight(lo, lo + timedelta(seconds=30)) is None


def test_percentiles():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95), percentile(values, 1.0)) == (51.0, 95.0, 100.0)
    assert percentile([], 0.5) is None


def test_the_report_says_what_the_live_lane_sent_of_members_attributes():
    from loyalty_moengage_devtools.bench.live import render

    figures = {"started": "t", "command": "c", "written": 10, "zone": "UTC", "local_midnight_utc": None,
               "plan": {"rate": 1, "seconds": 60, "bursts": {20: 5}, "holds": []},
               "latency_seconds": {"p50": 1, "p95": 2, "max": 3}, "lost": 0, "sent_twice": 0, "live_runs": 1,
               "live_states": ["success"], "live_run_seconds": {"p50": 1, "max": 1},
               "lag_seconds": {"p50": 1, "p95": 1, "max": 1}, "cpu": {},
               "audit": {"expected": 10, "received": 10, "duplicated": 0, "lost": 0},
               "verdict": {"target": "x", "held": False}, "night": {},
               "attributes": {"attributes_beside": 1234, "owed_attributes_sent": 56, "owed_left": 0, "stale": 2,
                              "seconds_until_none_stale": None}}
    text = render(figures)
    assert "| live.attributes: beside events / owed updates sent / owed left / members left stale | 1,234 / 56 / 0 / 2" in text
    assert "NOT held" in text
    assert "live.attributes" not in render({**figures, "attributes": None})
