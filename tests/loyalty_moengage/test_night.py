"""The night: its window in UTC from the program's zone, the newest complete night, and
refusing a night that has not ended; daylight saving included."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from loyalty_moengage.night import NightNotOverError, Window, ensure_over, from_context, latest_complete_night

NIGHT = date(2026, 11, 21)


def test_latest_complete_night_is_yesterday_in_the_program_zone():
    now = datetime(2026, 11, 22, 20, 0, tzinfo=timezone.utc)  # 01:30 on the 23rd in Kolkata
    assert latest_complete_night("Asia/Kolkata", now) == date(2026, 11, 22)
    assert latest_complete_night("America/New_York", now) == date(2026, 11, 21)


def test_a_night_not_over_is_refused_with_its_local_end():
    w = Window.of_night(date(2026, 11, 22), "Asia/Kolkata")
    assert w.end == datetime(2026, 11, 22, 18, 30, tzinfo=timezone.utc)
    ensure_over(w, w.end)
    with pytest.raises(NightNotOverError, match="2026-11-23 00:00 Asia/Kolkata"):
        ensure_over(w, w.end - timedelta(minutes=1))


def test_nights_across_daylight_saving_last_23_and_25_hours():
    spring = Window.of_night(date(2026, 3, 8), "America/New_York")
    autumn = Window.of_night(date(2026, 11, 1), "America/New_York")
    assert spring.end - spring.start == timedelta(hours=23)
    assert autumn.end - autumn.start == timedelta(hours=25)
    assert spring.start == datetime(2026, 3, 8, 5, 0, tzinfo=timezone.utc)
    assert spring.logical_start == "2026-03-08T00:00:00-05:00"
    assert Window.of_night(date(2026, 3, 9), "America/New_York").logical_start == "2026-03-09T00:00:00-04:00"


def test_a_run_syncs_its_data_interval_or_the_night_before_it_was_created():
    w = Window.of_night(NIGHT, "Asia/Kolkata")
    assert from_context("Asia/Kolkata", {"data_interval_start": w.start, "data_interval_end": w.end}) == w
    # a manual run (no interval): the newest night complete at run_after, the same for every retry
    run_after = w.end + timedelta(hours=3)
    manual = {"data_interval_start": run_after, "data_interval_end": run_after,
              "dag_run": SimpleNamespace(run_after=run_after)}
    assert from_context("Asia/Kolkata", manual) == w
    assert from_context("Asia/Kolkata", {"logical_date": w.end}) == w
