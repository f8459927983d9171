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
